"""PgBouncer in transaction pooling: what ``check`` and ``run`` say about the settings.

Under transaction pooling a client's session lasts one transaction: LISTEN hears nothing (the
server connection it ran on goes back to the pool), server-side cursors and prepared statements
break. Children and the supervisor's chores are fine through it (every statement they send is
its own transaction or inside one); the LISTEN connection must be direct, which
``[supervisor] listen_database`` names (a second alias in DATABASES, to the same database).

A pooled alias is recognised by PgBouncer's usual port (6432) or by ``listen_database`` being set
(the operator says so). Whatever these checks miss, the listener's probe finds at run time: notices
that do not come back keep children polling at their interval (chores/listen.py).
"""

from __future__ import annotations

from typing import Any

from task_supervisor import compat
from task_supervisor.config import Config

PGBOUNCER_PORT = "6432"


def advice(config: Config, backends: dict[str, compat.TaskBackend]) -> tuple[list[str], list[str]]:
    """(problems, warnings) about the LISTEN alias and the pooled aliases' settings."""
    from django.db import connections

    problems: list[str] = []
    warnings: list[str] = []
    listen = config.supervisor.listen_database
    aliases = sorted({b.db_alias for b in backends.values() if connections[b.db_alias].vendor == "postgresql"})
    if listen:
        problems += _listen_problems(listen, aliases)
    for alias in aliases:
        settings = connections[alias].settings_dict
        pooled = bool(listen) or str(settings.get("PORT") or "") == PGBOUNCER_PORT
        if not pooled:
            continue
        if not listen:
            warnings.append(
                f"DATABASES['{alias}'] looks like PgBouncer (port {PGBOUNCER_PORT}), where LISTEN hears nothing "
                "under transaction pooling: children poll at their interval. Add a direct connection to the same "
                "database as a second alias and name it in [supervisor] listen_database."
            )
        warnings += _pooled_settings(alias, settings)
    return problems, warnings


def _listen_problems(listen: str, aliases: list[str]) -> list[str]:
    from django.db import connections

    fix = "name a direct connection's alias in DATABASES, or remove the key."
    if listen not in connections.settings:
        return [f"supervisor.listen_database is '{listen}', which is not in DATABASES: {fix}"]
    direct = connections[listen]
    if direct.vendor != "postgresql":
        return [f"supervisor.listen_database is '{listen}', a {direct.vendor} database: LISTEN is PostgreSQL's; {fix}"]
    names = {connections[a].settings_dict.get("NAME") for a in aliases}
    if aliases and direct.settings_dict.get("NAME") not in names:
        return [
            f"supervisor.listen_database is '{listen}', whose NAME is not the tasks' database "
            f"({', '.join(sorted(map(str, names)))}): it must reach the same database directly."
        ]
    return []


def _pooled_settings(alias: str, settings: dict[str, Any]) -> list[str]:
    warnings = []
    if not settings.get("DISABLE_SERVER_SIDE_CURSORS"):
        warnings.append(
            f"DATABASES['{alias}'] goes through a pooler: set DISABLE_SERVER_SIDE_CURSORS = True, "
            "server-side cursors (QuerySet.iterator()) break under transaction pooling."
        )
    if (settings.get("OPTIONS") or {}).get("server_side_binding"):
        warnings.append(
            f"DATABASES['{alias}'] goes through a pooler: remove OPTIONS server_side_binding, its prepared "
            "statements break under transaction pooling before PgBouncer 1.21."
        )
    return warnings
