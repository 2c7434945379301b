"""The ``task-supervisor`` command: run, check, status, schedules, --version, and the operator's
commands (cancel, pause, resume, queues, retry, prune, actions; schedules run/disable/enable)."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from task_supervisor import __version__, bootstrap, events, exitcodes, jsonlog, pooling
from task_supervisor.config import Config, ConfigError, load_config

log = logging.getLogger("task_supervisor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="task-supervisor",
        description="Supervise pools of Django db_worker processes and the periodic task scheduler.",
    )
    parser.add_argument("--version", action="version", version=f"task-supervisor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("run", "run every pool (and the scheduler) in the foreground"),
        ("check", "validate config.toml, Django settings, backends and the database; start nothing"),
        ("status", "show the running supervisor's pools, children and current tasks"),
        ("schedules", "list settings.PERIODIC_TASKS: each cron in words and its next fire times"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("-c", "--config", required=True, metavar="FILE", help="path of config.toml")
        if name in ("status", "schedules"):
            sub.add_argument("--json", action="store_true", help="print JSON, for scripts")
        if name == "schedules":
            sub.add_argument(
                "--at", metavar="ISO-DATETIME", type=_datetime, help="list fire times after this moment (default: now)"
            )
            sub.add_argument("--count", metavar="N", type=_count, default=5, help="fire times per schedule (default 5)")
            sub.add_argument(
                "action",
                nargs="?",
                choices=("run", "disable", "enable"),
                help="run a schedule now, or switch it off or on",
            )
            sub.add_argument("name", nargs="?", metavar="NAME", help="the schedule to run, disable or enable")
    from task_supervisor import opscli

    opscli.add_parsers(commands)
    return parser


def _datetime(text: str) -> Any:
    import datetime as dt

    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date and time, e.g. 2026-03-29T00:00+01:00"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number from 1 to 1000")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from task_supervisor import opscli

    handlers = {"run": cmd_run, "check": cmd_check, "status": cmd_status, "schedules": cmd_schedules}
    handler = handlers.get(args.command) or opscli.HANDLERS[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return exitcodes.EX_FORCED
    except Exception:
        # A bug of ours, not a problem of the user's input: say so, with the traceback to report.
        traceback.print_exc()
        print("task-supervisor: internal error (a bug; please report it with the traceback above)", file=sys.stderr)
        return exitcodes.EX_SOFTWARE


def _fail(code: int, message: str) -> int:
    for line in message.splitlines():
        print(f"task-supervisor: {line}", file=sys.stderr)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(exitcodes.EX_CONFIG, str(exc))
    try:
        bootstrap.setup_django(config)
        jsonlog.setup_logging(config.supervisor.log_format)
        backends = bootstrap.resolve_backends(config)
        bootstrap.check_retries(config, backends)
        bootstrap.check_limits(config, backends)
        bootstrap.check_database(backends)
        schedules = bootstrap.load_schedules(config)
        warnings = bootstrap.run_system_checks()
        warnings += [line for lines in bootstrap.database_advice(backends) for line in lines]
        problems, pooled = pooling.advice(config, backends)
        if problems:
            raise bootstrap.StartupError(exitcodes.EX_CONFIG, "\n".join(problems))
        warnings += pooled
        bootstrap.warm_up(backends)
    except bootstrap.StartupError as exc:
        return _fail(exc.code, str(exc))
    for warning in warnings:
        log.warning("System check: %s", warning, extra={"event": events.SYSTEM_CHECK})
    from task_supervisor.loop.arbiter import Supervisor

    # Every schedule counts, enabled or not: an operator may switch one on at run time.
    return Supervisor(config, backends, schedules=len(schedules)).run()


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from task_supervisor.observe import endpoints, statustext

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(exitcodes.EX_CONFIG, str(exc))
    path = config.supervisor.control_socket or endpoints.default_socket_path(config.supervisor.node)
    try:
        snapshot = json.loads(endpoints.query(path))
    except endpoints.SupervisorNotRunning as exc:
        return _fail(exitcodes.EX_CHECK_FAILED, str(exc))
    except (OSError, ValueError) as exc:
        return _fail(exitcodes.EX_CHECK_FAILED, f"The supervisor on {path} did not answer: {exc}.")
    if args.json:
        print(json.dumps(snapshot, indent=2))
    else:
        print(statustext.render(snapshot), end="")
    return exitcodes.EX_OK


def cmd_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(exitcodes.EX_CHECK_FAILED, str(exc))
    problems, warnings = check_problems(config)
    for warning in warnings:
        print(f"task-supervisor: warning: {warning}", file=sys.stderr)
    if problems:
        return _fail(exitcodes.EX_CHECK_FAILED, "\n".join(problems))
    pools = ", ".join(f"{p.name} ({p.processes} x {', '.join(p.queues)})" for p in config.pools.values())
    print(f"{config.path}: OK. Pools: {pools}.")
    _print_limits(config)
    return exitcodes.EX_OK


def _print_limits(config: Config) -> None:
    """The limits declared, and what each key holds back right now (when the database answers)."""
    from task_supervisor import compat, flowinfo

    try:
        backend = compat.resolve(next(iter(config.pools.values())).backend)
        lines = flowinfo.report_lines(backend, config.limits)
    except Exception as exc:  # the tables may not be migrated yet: the declarations were checked
        lines = [f"Limit {p}: {limit.describe()} (held back: unknown, {exc})." for p, limit in config.limits.items()]
    for line in lines:
        print(line)


def check_problems(config: Config) -> tuple[list[str], list[str]]:
    """Every problem found short of starting a child, and the warnings."""
    try:
        bootstrap.setup_django(config)
    except bootstrap.StartupError as exc:
        return [str(exc)], []
    problems: list[str] = []
    warnings: list[str] = []
    backends = {}
    try:
        backends = bootstrap.resolve_backends(config)
        bootstrap.check_database(backends)
        problems, warnings = bootstrap.database_advice(backends)
        pooled_problems, pooled_warnings = pooling.advice(config, backends)
        problems += pooled_problems
        warnings += pooled_warnings
    except bootstrap.StartupError as exc:
        problems += str(exc).splitlines()
    for check in (bootstrap.check_retries, bootstrap.check_limits):
        try:
            check(config, backends)
        except bootstrap.StartupError as exc:
            problems += str(exc).splitlines()
    try:
        bootstrap.load_schedules(config)
    except bootstrap.StartupError as exc:
        problems += str(exc).splitlines()
    try:
        bootstrap.run_system_checks()
    except bootstrap.StartupError as exc:
        problems += str(exc).splitlines()
    return problems, warnings


def cmd_schedules(args: argparse.Namespace) -> int:
    import datetime as dt
    import json

    from django.conf import settings

    from task_supervisor import opscli
    from task_supervisor.scheduler import spec

    try:
        config = load_config(args.config)
        bootstrap.setup_django(config)
    except ConfigError as exc:
        return _fail(exitcodes.EX_CONFIG, str(exc))
    except bootstrap.StartupError as exc:
        return _fail(exc.code, str(exc))
    if args.action is not None:
        return opscli.cmd_schedule_action(args)
    schedules, problems = spec.load(settings)
    if problems:
        return _fail(exitcodes.EX_CHECK_FAILED, "\n".join(map(str, problems)))
    overrides = opscli.read_overrides()
    at = args.at or dt.datetime.now(dt.UTC)
    listing = [
        {
            "name": s.name,
            "task": s.task_path,
            "when": s.when,
            "description": s.describe(),
            "timezone": s.zone.key,
            "enabled": overrides[s.name].enabled if s.name in overrides else s.enabled,
            "override": (
                {"enabled": o.enabled, "by": o.changed_by, "at": o.changed_at.isoformat()}
                if (o := overrides.get(s.name))
                else None
            ),
            "next": [slot.astimezone(s.zone).isoformat() for slot in s.next_slots(at, args.count)],
        }
        for s in schedules
    ]
    if args.json:
        print(json.dumps(listing, indent=2))
        return exitcodes.EX_OK
    if not listing:
        print(f"No periodic tasks: settings.{spec.SETTING} is empty or not set.")
    for entry in listing:
        off = "" if entry["enabled"] else "  (disabled)"
        if entry["override"]:
            state = "enabled" if entry["enabled"] else "disabled"
            off = f"  ({state} at run time by {entry['override']['by']})"
        print(f"{entry['name']}: {entry['task']}{off}")
        print(f"  {entry['when']} in {entry['timezone']}: {entry['description']}")
        for moment in entry["next"] or ["never fires again"]:
            print(f"    {moment}")
    return exitcodes.EX_OK


if __name__ == "__main__":
    sys.exit(main())
