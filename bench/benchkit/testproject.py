"""The tests' Django project and throw-away databases, for the figures that run it (bench/flow.py,
bench/dashboard.py): each runs in its own process, started by bench/run.py or by hand."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support import PROJECT, DatabaseFactory  # noqa: E402


@contextlib.contextmanager
def databases(prefix: str) -> Iterator[tuple[DatabaseFactory, Path]]:
    """Django set up with the tests' settings; a factory of databases and a scratch folder, both
    removed at the end."""
    sys.path.insert(0, str(PROJECT))
    os.environ["DJANGO_SETTINGS_MODULE"] = "tsproject.settings"  # not the driver's, which bench/run.py set
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        os.environ.setdefault("TS_DB_NAME", str(Path(tmp) / "unused.sqlite3"))
        import django

        django.setup()
        factory = DatabaseFactory(Path(tmp))
        try:
            yield factory, Path(tmp)
        finally:
            factory.cleanup()
