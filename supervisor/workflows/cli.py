"""``task-supervisor workflows``: list workflows, ``show ID`` with its steps, ``cancel ID``."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "list workflows; `workflows show ID` lists its steps; `workflows cancel ID` cancels it"


def add_parser(commands: Any) -> None:
    sub = commands.add_parser("workflows", help=HELP, description=HELP)
    sub.add_argument("-c", "--config", required=True, metavar="FILE", help="path of config.toml")
    sub.add_argument("--json", action="store_true", help="print JSON, for scripts")
    sub.add_argument("action", nargs="?", choices=("show", "cancel"), help="show or cancel one workflow")
    sub.add_argument("id", nargs="?", metavar="ID", help="the workflow's id")
    sub.add_argument(
        "--state", choices=("RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"), help="only workflows in this state"
    )
    sub.add_argument("--limit", type=int, default=50, metavar="N", help="the latest N workflows (default 50)")


def cmd_workflows(args: argparse.Namespace) -> int:
    from task_supervisor import exitcodes, opscli
    from task_supervisor.workflows import ops

    if args.action and not args.id:
        return opscli._fail(exitcodes.EX_USAGE, f"workflows {args.action} needs the workflow's id.")
    if args.action == "show":
        return opscli._run(args, lambda config: ops.show(args.id, alias=_alias(config)))
    if args.action == "cancel":
        return opscli._run(args, lambda config: ops.cancel(args.id, backend=opscli.backend_for(config)))
    return opscli._run(
        args, lambda config: ops.list_workflows(state=args.state, limit=args.limit, alias=_alias(config))
    )


def _alias(config: Any) -> str:
    from task_supervisor import ops, opscli

    return ops._backend(opscli.backend_for(config)).db_alias  # OperationError for a bad backend
