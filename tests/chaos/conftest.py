"""The chaos tier: real supervisors under faults. Their figures close the terminal report: see
``pytest_terminal_summary`` in tests/conftest.py, which also gathers them from xdist workers."""
