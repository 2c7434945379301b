"""`log_format = "json"`: one JSON object per line, for log pipelines in clusters."""

from __future__ import annotations

import datetime
import json
import logging
import sys

# Attributes passed with extra= that log pipelines filter on. ``status`` is a task row's;
# ``exit_code`` and ``signal`` say how a child ended, ``processes`` a pool's size after a change.
_FIELDS = (
    "event",
    "pool",
    "slot",
    "pid",
    "worker_id",
    "task_id",
    "node",
    "reason",
    "status",
    "attempt",
    "exit_code",
    "signal",
    "direction",
    "processes",
    "killed_for",
    "owner",
    "verb",
    "actor",
    "rows",
    "kind",
    "workflow_id",  # workflows: which one, which step ("1.0.2"), its state, how many steps
    "step",
    "state",
    "steps",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            if hasattr(record, name):
                data[name] = getattr(record, name)
        if "pid" not in data:
            data["process"] = record.process
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def handler(stream: object, log_format: str) -> logging.Handler:
    """A stream handler in the configured format."""
    result = logging.StreamHandler(stream)  # type: ignore[arg-type]
    if log_format == "json":
        result.setFormatter(JsonFormatter())
    else:
        result.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [task-supervisor] %(message)s"))
    return result


def setup_logging(log_format: str = "text", level: int = logging.INFO) -> None:
    """Our own handler on stderr; called after django.setup(), whose LOGGING may disable loggers."""
    root = logging.getLogger("task_supervisor")
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("task_supervisor") and isinstance(logger, logging.Logger):
            logger.disabled = False
    root.disabled = False
    root.handlers[:] = []
    root.addHandler(handler(sys.stderr, log_format))
    root.setLevel(level)
    root.propagate = False
