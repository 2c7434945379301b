"""Readable process titles (``ps`` shows pool, slot and the task running)."""

from __future__ import annotations

try:
    from setproctitle import setproctitle as _setproctitle
except ImportError:  # optional: titles are a convenience, never a reason to fail
    _setproctitle = None


def set_title(title: str) -> None:
    if _setproctitle is not None:
        _setproctitle(title[:200])
