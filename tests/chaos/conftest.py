"""The chaos tier: real supervisors under faults. Their figures close the terminal report."""

from __future__ import annotations

import json
from typing import Any

from tests.chaos.harness import FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("chaos figures")
    for figures in FIGURES:
        terminalreporter.write_line(json.dumps(figures))
