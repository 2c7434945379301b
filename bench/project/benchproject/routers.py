"""Sends the driver's queries to the database under test; task.enqueue() has no `using`."""

from __future__ import annotations

from typing import Any


class ActiveDatabase:
    alias = "default"

    def db_for_read(self, model: Any, **hints: Any) -> str:
        return ActiveDatabase.alias

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return ActiveDatabase.alias

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool:
        return True

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return True
