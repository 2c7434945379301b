import sys

from task_supervisor.cli import main

sys.exit(main())
