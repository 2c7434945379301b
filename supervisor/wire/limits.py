"""Flow control declarations, ``[limits."dotted.path"]``: shared by config, supervisor and child.

A limit names a task path and caps how many of its tasks run at once (``concurrency``), how many
start per window (``rate``), or both, per value of one of the task's arguments (``key``). The
child checks them in its claim transaction (``worker/flow.py``); the supervisor only wakes
children and reports. Pure: no Django, no database.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

RATE_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hour": 3600.0,
    "d": 86400.0, "day": 86400.0,
}  # fmt: skip
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")
MAX_RATE_COUNT = 10_000  # starts remembered per key: the window's log lives in one row
MAX_RATE_WINDOW = 86_400.0  # seconds: the longest window a rate may have
RATE_STEP = 1e-6  # seconds: the databases' resolution, the least gap past a full window
KEY_MAX_LENGTH = 200  # characters of a key value stored as is; longer ones are hashed


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``count`` starts in any window of ``per`` seconds."""

    count: int
    per: float  # seconds

    def __str__(self) -> str:
        return f"{self.count}/{self.per:g}s"


def parse_rate(value: object) -> Rate:
    """``"10/s"``, ``"100/m"``, ``"1000/hour"``, ``"5/10s"`` -> Rate."""
    if not isinstance(value, str):
        raise TypeError("")
    match = _RATE.match(value.lower())
    if not match or match.group(3) not in RATE_UNITS:
        raise ValueError('write starts per second, minute or hour, such as "10/s", "100/m" or "1000/h"')
    count = int(match.group(1))
    per = float(match.group(2) or 1) * RATE_UNITS[match.group(3)]
    if count < 1 or per <= 0:
        raise ValueError("a rate needs at least 1 start in a window longer than 0")
    if count > MAX_RATE_COUNT:
        raise ValueError(f"at most {MAX_RATE_COUNT} starts per window are supported")
    if per > MAX_RATE_WINDOW:
        raise ValueError("a rate's window may be a day at most")
    return Rate(count, per)


@dataclass(frozen=True, slots=True)
class FlowLimit:
    """``[limits."path"]``: None for a bound not declared."""

    path: str
    concurrency: int | None = None
    rate: Rate | None = None
    key: str | None = None  # an argument's name, or its position as "0", "1", ...

    def describe(self) -> str:
        parts = []
        if self.concurrency is not None:
            parts.append(f"concurrency {self.concurrency}")
        if self.rate is not None:
            parts.append(f"rate {self.rate}")
        per = f" per {self.key}" if self.key is not None else ""
        return f"{' and '.join(parts)}{per}"


def declaration(limit: FlowLimit) -> str:
    """The limit as JSON, kept on its key rows so that the admin (which reads no config.toml) knows it."""
    rate = None if limit.rate is None else [limit.rate.count, limit.rate.per]
    return json.dumps({"concurrency": limit.concurrency, "rate": rate, "key": limit.key}, separators=(",", ":"))


def from_declaration(path: str, text: str) -> FlowLimit | None:
    """The limit ``declaration`` wrote, or None for text it did not write."""
    try:
        data = json.loads(text)
        rate = data.get("rate")
        return FlowLimit(
            path, data.get("concurrency"), Rate(int(rate[0]), float(rate[1])) if rate else None, data.get("key")
        )
    except (ValueError, TypeError, AttributeError, IndexError, KeyError):
        return None


def key_text(value: Any) -> str:
    """The stored form of a key value: its JSON, hashed past KEY_MAX_LENGTH."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    if len(text) > KEY_MAX_LENGTH:
        return "sha1:" + hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
    return text


def rate_verdict(starts: list[float], now: float, rate: Rate) -> tuple[list[float], float | None]:
    """The starts still inside the window ending at ``now``, and when the next start is allowed
    (None: now). Never more than ``rate.count`` starts in any window of ``rate.per`` seconds, even
    a closed one: a new start at ``now`` needs the count-th latest start more than a full window
    back (times in seconds, to the microsecond the databases keep)."""
    kept = sorted(s for s in starts if s >= now - rate.per)
    if len(kept) < rate.count:
        return kept, None
    return kept, kept[-rate.count] + rate.per + RATE_STEP


@dataclass(frozen=True, slots=True)
class KeyArgument:
    """Where a limit's key argument sits in a call: by name, and by position when it has one."""

    name: str
    position: int | None  # among the arguments a caller passes (a context parameter not counted)
    default: Any = None

    @classmethod
    def of(cls, func: Any, key: str, takes_context: bool = False) -> KeyArgument:
        """The argument ``key`` names in ``func``'s signature; ValueError naming the choices if none."""
        import inspect

        params = list(inspect.signature(func).parameters.values())[1 if takes_context else 0 :]
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if key.isdigit():
            if int(key) >= len(positional):
                raise ValueError(f"the task takes {len(positional)} positional arguments, so it has no position {key}")
            param = positional[int(key)]
        else:
            found = [p for p in params if p.name == key and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            if not found:
                names = ", ".join(p.name for p in params) or "none"
                raise ValueError(f"the task has no argument {key!r} (its arguments: {names})")
            param = found[0]
        position = positional.index(param) if param in positional else None
        default = None if param.default is param.empty else param.default
        return cls(param.name, position, default)

    def value(self, args_kwargs: Any) -> Any:
        """The key's value in a stored call ``{"args": [...], "kwargs": {...}}``."""
        args = args_kwargs.get("args") or [] if isinstance(args_kwargs, dict) else []
        kwargs = args_kwargs.get("kwargs") or {} if isinstance(args_kwargs, dict) else {}
        if isinstance(kwargs, dict) and self.name in kwargs:
            return kwargs[self.name]
        if self.position is not None and isinstance(args, list) and len(args) > self.position:
            return args[self.position]
        return self.default
