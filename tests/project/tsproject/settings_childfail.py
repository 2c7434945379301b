"""Settings that import in the supervisor but break in exec'd children (a boot-failure test)."""

import sys

from tsproject.settings import *  # noqa: F403

if sys.argv and sys.argv[0].endswith("worker/__main__.py"):  # python -m task_supervisor.worker
    raise RuntimeError("these settings are broken in children")
