"""PostgreSQL (and MariaDB) behind a proxy the test breaks: connections dropped, refused, stalled, blackholed.

Everything the supervisor and its children say to the database goes through ``FaultProxy``
(``TS_DB_PORT`` points the test project's settings at it); the test itself talks to the database
directly, so it keeps enqueueing and checking rows while the supervisor's side is cut off.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from task_supervisor import events
from tests.chaos.harness import (
    LIVEZ_WITHIN,
    Feeder,
    Figures,
    Observed,
    Probe,
    http_get,
    observed_config,
    probing,
    rows,
    unique_node,
    wait_all_finished,
)
from tests.chaos.proxy import FaultProxy
from tests.chaos.test_mariadb_locks import longest_silence
from tests.support import (
    MARIADB_ENGINES,
    MY_HOST,
    MY_PORT,
    PG_HOST,
    PG_PORT,
    Database,
    SupervisorProcess,
    wait_until,
)

pytestmark = pytest.mark.timeout(240)

CHILDREN = 4
TASKS = 600
POOL = f"""
[pools.default]
processes = {CHILDREN}
interval = "100ms"
on_worker_lost = "requeue"
max_attempts = 50
"""
OUTAGE_SECONDS = 6.0
STALL_SECONDS = 8.0
READY_AGAIN_WITHIN = 30.0  # seconds after the database is back: backoff is capped at 15 s


@dataclass
class Rig:
    sup: SupervisorProcess
    cfg: Observed
    proxy: FaultProxy
    probe: Probe
    feeder: Feeder


@contextmanager
def rig(supervisor, db: Database, tmp_path: Path) -> Iterator[Rig]:
    """A supervisor whose every database connection goes through a proxy; probed throughout."""
    upstream = (MY_HOST, MY_PORT) if db.engine in MARIADB_ENGINES else (PG_HOST, PG_PORT)
    with FaultProxy(*upstream) as proxy:
        cfg = observed_config(POOL, tmp_path, unique_node())
        sup = supervisor(cfg.text, TS_DB_PORT=str(proxy.port))
        sup.wait_children(CHILDREN)
        wait_until(lambda: http_get(cfg.port, "/readyz")[0] == 200, 30, message=lambda: f"ready; log:\n{sup.tail()}")
        with probing(cfg.port) as probe:
            yield Rig(sup, cfg, proxy, probe, Feeder(TASKS, seconds=8.0))


def feed_for(r: Rig, seconds: float, since: float) -> None:
    """Keep enqueueing (straight into PostgreSQL) for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        r.feeder.top_up(time.monotonic() - since)
        time.sleep(0.05)  # pacing the feed, not waiting for a state


def check_every_task_succeeded(r: Rig) -> int:
    """All SUCCESSFUL with the right results, none RUNNING; returns how many ran more than once."""
    r.feeder.top_up(r.feeder.seconds)
    wait_all_finished(TASKS, r.sup, timeout=90)
    done = list(rows().values("id", "status", "worker_ids", "return_value"))
    assert {d["status"] for d in done} == {"SUCCESSFUL"}, [d for d in done if d["status"] != "SUCCESSFUL"][:5]
    for d in done:
        if str(d["id"]) in r.feeder.expected:
            assert d["return_value"] == r.feeder.expected[str(d["id"])], d
    assert r.sup.proc is not None and r.sup.proc.poll() is None, f"the supervisor died:\n{r.sup.tail()}"
    return sum(1 for d in done if len(d["worker_ids"]) > 1)


@pytest.mark.parametrize("db", ["postgres"], indirect=True)
def test_database_restart_and_outage(supervisor, db: Database, tmp_path):
    """Connections reset, then refused for a while: 503 meanwhile, children back off, then all resumes."""
    with rig(supervisor, db, tmp_path) as r:
        began = time.monotonic()
        feed_for(r, 2.0, began)
        dropped = r.proxy.drop()
        feed_for(r, 2.0, began)

        down = time.monotonic()
        dropped += r.proxy.refuse()
        feed_for(r, OUTAGE_SECONDS, began)
        up = time.monotonic()
        r.proxy.restore()
        wait_until(lambda: r.probe.first(up, 200) is not None, READY_AGAIN_WITHIN, message=lambda: r.sup.tail())
        duplicates = check_every_task_succeeded(r)

        to_503 = r.probe.first(down, 503)
        assert to_503 is not None and to_503 < OUTAGE_SECONDS, "/readyz said 503 while the database was down"
        outage = r.probe.between(down + to_503, up)
        assert outage and all(s.readyz == 503 for s in outage), [s for s in outage if s.readyz != 503][:3]
        assert any("database unreachable" in s.reasons for s in outage)
        slowest = r.probe.slowest_livez(began, time.monotonic())
        assert slowest.livez == 200 and slowest.livez_seconds < LIVEZ_WITHIN, slowest
        to_200 = r.probe.first(up, 200)
        assert to_200 is not None
        assert r.sup.has_event(events.CHILD_BOOT_FAILED) and r.sup.has_event(events.DB_ERROR)

        Figures(
            test="database restart + outage",
            database=db.engine,
            tasks=TASKS,
            faults=["reset every connection", f"refuse connections for {OUTAGE_SECONDS:g}s"],
            duplicates=duplicates,
            recovery_seconds={"readyz_503_after_outage": to_503, "readyz_200_after_restore": to_200},
            seconds=time.monotonic() - began,
            notes={
                "connections_reset": dropped,
                "children_failed_to_boot": len(r.sup.events(events.CHILD_BOOT_FAILED)),
                "slowest_livez_s": round(slowest.livez_seconds, 3),
            },
        ).report()


@pytest.mark.parametrize(
    ("db", "fault"), [("postgres", "stall"), ("postgres", "blackhole"), ("mariadb", "stall")], indirect=["db"]
)
def test_database_that_stops_answering(supervisor, db: Database, tmp_path, fault: str):
    """A partition (bytes stop moving) or a blackhole: 503 meanwhile, the loop keeps turning, then all resumes."""
    with rig(supervisor, db, tmp_path) as r:
        began = time.monotonic()
        feed_for(r, 2.0, began)
        down = time.monotonic()
        getattr(r.proxy, fault)()
        feed_for(r, STALL_SECONDS, began)
        up = time.monotonic()
        r.proxy.restore()
        wait_until(lambda: r.probe.first(up, 200) is not None, READY_AGAIN_WITHIN, message=lambda: r.sup.tail())
        duplicates = check_every_task_succeeded(r)

        to_503 = r.probe.first(down, 503)
        to_200 = r.probe.first(up, 200)
        slowest = r.probe.slowest_livez(began, time.monotonic())
        Figures(
            test=f"database {fault}",
            database=db.engine,
            tasks=TASKS,
            faults=[f"{fault} every connection for {STALL_SECONDS:g}s"],
            duplicates=duplicates,
            recovery_seconds={"readyz_503_after_fault": to_503 or -1, "readyz_200_after_restore": to_200 or -1},
            seconds=time.monotonic() - began,
            notes={
                "slowest_livez_s": round(slowest.livez_seconds, 3),
                "slowest_livez_status": slowest.livez,
                "longest_without_livez_s": round(longest_silence(r.probe, down, up), 3),
            },
        ).report()
        assert slowest.livez == 200 and slowest.livez_seconds < LIVEZ_WITHIN, slowest
        assert to_503 is not None and to_503 < STALL_SECONDS - 1, "/readyz said 503 while the database hung"
