"""``python -m task_supervisor.worker SPEC REPORT_FD CONTROL_FD``: an exec'd child."""

import sys

from task_supervisor.worker.run import main

main(sys.argv[1:])
