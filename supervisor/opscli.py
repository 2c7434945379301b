"""The operator's subcommands of ``task-supervisor``: cancel, pause, resume, queues, retry, prune,
actions, and ``schedules run|disable|enable NAME``. Each reads config.toml (-c) for the Django
settings, the queues the pools serve and [retention], then calls ``task_supervisor.ops``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from task_supervisor import bootstrap, exitcodes
from task_supervisor.config import Config, ConfigError, load_config

COMMANDS = {
    "cancel": "cancel tasks: READY ones now, RUNNING ones on whatever node runs them",
    "pause": "pause queues on every node: nothing new is claimed from them",
    "resume": "resume paused queues",
    "queues": "list queues: READY depth, age of the oldest READY task, paused or not",
    "retry": "retry FAILED tasks on their same row, or --as-new",
    "prune": "delete the finished rows [retention] says may go",
    "actions": "list the audit log of operator actions",
    "why": "say why READY tasks are not being taken: [limits], a paused queue, their run_after",
}


def add_parsers(commands: Any) -> None:
    for name, text in COMMANDS.items():
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("-c", "--config", required=True, metavar="FILE", help="path of config.toml")
        if name in ("cancel", "queues", "retry", "prune", "actions"):
            sub.add_argument("--json", action="store_true", help="print JSON, for scripts")
        if name in ("cancel", "retry"):
            sub.add_argument("ids", nargs="*", metavar="ID", help="task ids")
            sub.add_argument("--queue", metavar="Q", help="only tasks of this queue")
            sub.add_argument("--task", metavar="PATH", help="only tasks of this dotted task path")
        if name == "cancel":
            sub.add_argument("--status", choices=("READY", "RUNNING"), help="only READY or only RUNNING tasks")
        if name == "retry":
            sub.add_argument("--as-new", action="store_true", help="enqueue fresh tasks with the same arguments")
        if name in ("cancel", "retry", "prune"):
            sub.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")
        if name in ("pause", "resume"):
            sub.add_argument("queues", nargs="+", metavar="QUEUE", help="queue names")
        if name == "why":
            sub.add_argument("ids", nargs="+", metavar="ID", help="task ids")
        if name == "actions":
            sub.add_argument("--limit", type=int, default=50, metavar="N", help="the latest N actions (default 50)")
    from task_supervisor.workflows import cli as workflows_cli

    workflows_cli.add_parser(commands)


def _fail(code: int, message: str) -> int:
    for line in message.splitlines():
        print(f"task-supervisor: {line}", file=sys.stderr)
    return code


def _setup(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    bootstrap.setup_django(config)
    return config


def known_queues(config: Config) -> set[str] | None:
    """The queues the pools serve; None when a pool serves every queue ("*")."""
    queues = {q for pool in config.pools.values() for q in pool.queues}
    return None if "*" in queues else queues


def backend_for(config: Config, queue: str | None = None) -> str:
    """The task backend of the pool serving ``queue`` (of the first pool without one)."""
    for pool in config.pools.values():
        if queue is None or queue in pool.queues or "*" in pool.queues:
            return pool.backend
    return "default"


def _run(args: argparse.Namespace, action: Callable[[Config], Any]) -> int:
    from django.db import DatabaseError

    from task_supervisor import ops
    from task_supervisor.exceptions import one_line

    try:
        config = _setup(args)
        outcome = action(config)
    except ConfigError as exc:
        return _fail(exitcodes.EX_CONFIG, str(exc))
    except bootstrap.StartupError as exc:
        return _fail(exc.code, str(exc))
    except ops.OperationError as exc:
        return _fail(exitcodes.EX_REFUSED, str(exc))
    except DatabaseError as exc:
        return _fail(
            exitcodes.EX_DATABASE,
            f"The database failed the command: {one_line(exc)}. Each command is safe to run again; "
            "`task-supervisor actions` lists what was recorded.",
        )
    _print(args, outcome)
    return exitcodes.EX_OK


def _print(args: argparse.Namespace, outcome: Any) -> None:
    if getattr(args, "json", False):
        print(json.dumps({"message": outcome.message, "count": outcome.count, "rows": outcome.rows}, indent=2))
        return
    for row in outcome.rows:
        print("  ".join(f"{k}={_text(v)}" for k, v in row.items()))
    print(outcome.message)


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def cmd_cancel(args: argparse.Namespace) -> int:
    from task_supervisor import ops

    return _run(
        args,
        lambda config: ops.cancel(
            args.ids,
            queue=args.queue,
            task=args.task,
            status=args.status,
            dry_run=args.dry_run,
            backend=backend_for(config, args.queue),
            known_queues=known_queues(config),
        ),
    )


def cmd_retry(args: argparse.Namespace) -> int:
    from task_supervisor import ops

    return _run(
        args,
        lambda config: ops.retry(
            args.ids,
            queue=args.queue,
            task=args.task,
            as_new=args.as_new,
            dry_run=args.dry_run,
            backend=backend_for(config, args.queue),
            known_queues=known_queues(config),
        ),
    )


def cmd_pause(args: argparse.Namespace) -> int:
    from task_supervisor import ops

    return _run(
        args, lambda config: ops.pause(args.queues, backend=backend_for(config), known_queues=known_queues(config))
    )


def cmd_resume(args: argparse.Namespace) -> int:
    from task_supervisor import ops

    return _run(
        args, lambda config: ops.resume(args.queues, backend=backend_for(config), known_queues=known_queues(config))
    )


def cmd_queues(args: argparse.Namespace) -> int:
    from task_supervisor import ops

    return _run(args, lambda config: ops.queues(backend=backend_for(config), known_queues=known_queues(config)))


def cmd_prune(args: argparse.Namespace) -> int:
    from task_supervisor import ops

    return _run(args, lambda config: ops.prune(config.retention, dry_run=args.dry_run, backend=backend_for(config)))


def cmd_actions(args: argparse.Namespace) -> int:
    from task_supervisor import ops

    return _run(args, lambda config: ops.actions(args.limit, backend=backend_for(config)))


def cmd_schedule_action(args: argparse.Namespace) -> int:
    """``schedules run|disable|enable NAME`` (Django is set up already)."""
    from task_supervisor import ops

    if not args.name:
        return _fail(exitcodes.EX_USAGE, f"schedules {args.action} needs the schedule's name.")
    if args.action == "run":
        return _run(args, lambda config: ops.run_schedule(args.name))
    return _run(args, lambda config: ops.set_schedule_enabled(args.name, args.action == "enable"))


def read_overrides() -> dict[str, Any]:
    """Schedule overrides, or none when the database cannot say (``schedules`` lists anyway)."""
    from task_supervisor import ops

    try:
        return ops.schedule_overrides()
    except Exception:
        return {}


def cmd_why(args: argparse.Namespace) -> int:
    from task_supervisor import compat, flowinfo

    try:
        config = _setup(args)
        backend = compat.resolve(backend_for(config))
        for task_id in args.ids:
            print(flowinfo.explain(backend, config.limits, task_id))
    except ConfigError as exc:
        return _fail(exitcodes.EX_CONFIG, str(exc))
    except bootstrap.StartupError as exc:
        return _fail(exc.code, str(exc))
    return exitcodes.EX_OK


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "cancel": cmd_cancel,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "queues": cmd_queues,
    "retry": cmd_retry,
    "prune": cmd_prune,
    "actions": cmd_actions,
    "why": cmd_why,
    "workflows": lambda args: _workflows(args),
}


def _workflows(args: argparse.Namespace) -> int:
    from task_supervisor.workflows import cli as workflows_cli

    return workflows_cli.cmd_workflows(args)
