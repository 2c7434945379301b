"""Exit codes of ``task-supervisor``; the README lists them."""

from __future__ import annotations

EX_OK = 0  # stopped cleanly, or check found nothing wrong
EX_CHECK_FAILED = 1  # check found problems; every one is printed
EX_USAGE = 2  # bad command line (argparse's own code)
EX_CONFIG = 3  # config.toml is missing, not TOML, or has bad keys or values
EX_SETTINGS = 4  # Django settings missing or broken, or no database task backend configured
EX_DATABASE = 5  # the database is unreachable or not migrated at startup, or failed an operator command
EX_NO_WORKERS = 6  # no pool could keep a single child up (every child failed to boot)
EX_FORCED = 7  # stopped at once by a second TERM/INT or by QUIT; running tasks were killed
EX_REFUSED = 8  # an operator command refused its input (unknown id, queue or schedule; empty filter): nothing changed
EX_SOFTWARE = 70  # a bug in task-supervisor: the traceback is printed
