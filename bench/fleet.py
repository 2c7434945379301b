"""A fleet on one PostgreSQL: many supervisors, through PgBouncer and direct, idle and busy.

    make bench-fleet        (or .venv/bin/python bench/fleet.py [--nodes 20] [--children 8])

Starts a PostgreSQL cluster of its own on a loopback port (initdb; max_connections 400 so that the
direct fleet's connections fit, autovacuum off so that its transactions are not counted as the
fleet's, other settings the server's defaults; the shared server is left alone) and a PgBouncer
in transaction pooling in front of it. Then, for each mode (PgBouncer, direct), it starts
``--nodes`` supervisors with ``--children`` children each (one pool, interval 1 s, the defaults
otherwise; through PgBouncer the supervisor's LISTEN goes direct, ``listen_database``), waits
until every child is idle, every node hears its notices and knows the fleet, and measures:

- idle transactions a second of the whole fleet (pg_stat_database) and per child, over
  ``--idle-seconds``, and the server connections the fleet holds;
- pickup latency p50 / p99 of ``--probe`` noop tasks enqueued one at a time into the idle fleet,
  and the claim attempts per task (tasks started plus claims that found nothing, over tasks);
- the same under load: 10 ms tasks enqueued at ``--busy-rate`` a second for ``--busy-seconds``;
- throughput: ``--backlog`` noop tasks enqueued in one transaction, drained by the fleet.

Bare db_worker is the yardstick for the idle figures: as many as the fleet has children, direct
(each polls every second; it cannot go through PgBouncer any better). Everything is stopped and
the cluster removed at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from benchkit import harness
from benchkit.database import PROJECT, BenchError
from benchkit.signals import interrupt_on_term

DBNAME = "ts_fleet"
READY_TIMEOUT = 180.0  # seconds for the whole fleet to come up and know itself
PROBE_GAP = 0.1  # seconds between the idle probe's tasks: the fleet is idle again for each

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def as_postgres() -> list[str]:
    """initdb and postgres refuse to run as root: run them as the postgres user then."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@contextlib.contextmanager
def cluster(folder: Path) -> Iterator[int]:
    """A PostgreSQL cluster of its own on a loopback port; its port."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not versions:
        raise BenchError("No PostgreSQL server binaries under /usr/lib/postgresql (Debian package postgresql).")
    bindir = versions[-1].parent
    data = folder / "pgdata"
    data.mkdir(parents=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(data, "postgres")
    run = [*as_postgres(), str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"]
    subprocess.run(run, check=True, capture_output=True)
    port = free_port()
    # autovacuum off: its own transactions would be counted as the fleet's (the driver vacuums
    # and analyzes between phases instead)
    options = (
        f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={data} -c max_connections=400 "
        "-c autovacuum=off"
    )
    pg_ctl = [*as_postgres(), str(bindir / "pg_ctl"), "-D", str(data), "-w"]
    subprocess.run([*pg_ctl, "-o", options, "-l", str(data / "log"), "start"], check=True, capture_output=True)
    try:
        yield port
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "stop"], capture_output=True)


@contextlib.contextmanager
def pgbouncer(folder: Path, server_port: int) -> Iterator[int]:
    """PgBouncer in transaction pooling in front of the cluster; its port."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(binary):
        raise BenchError("PgBouncer is not installed (Debian package pgbouncer; tests/system-packages.sh).")
    port = free_port()
    folder.mkdir(parents=True)
    (folder / "users.txt").write_text('"postgres" ""\n')
    ini = folder / "pgbouncer.ini"
    ini.write_text(
        f"[databases]\n* = host=127.0.0.1 port={server_port}\n[pgbouncer]\nlisten_addr = 127.0.0.1\n"
        f"listen_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        "pool_mode = transaction\nmax_client_conn = 4000\ndefault_pool_size = 20\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
        + ("user = postgres\n" if os.geteuid() == 0 else "")
    )
    for path in (folder, folder / "users.txt", ini):
        path.chmod(0o755 if path.is_dir() else 0o644)
    with (folder / "pgbouncer.log").open("wb") as log:
        proc = subprocess.Popen([binary, str(ini)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"PgBouncer did not start: {harness.tail(folder / 'pgbouncer.log')}")
            time.sleep(0.05)
        yield port
    finally:
        harness.stop(proc)


class Driver:
    """The benchmark's own Django (direct to the cluster): enqueues tasks and reads figures."""

    def __init__(self, direct_port: int) -> None:
        os.environ.update(
            DJANGO_SETTINGS_MODULE="benchproject.settings",
            BENCH_DB_ENGINE="postgres",
            BENCH_DB_NAME=DBNAME,
            BENCH_PG_PORT=str(direct_port),
        )
        sys.path.insert(0, str(PROJECT))
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        self.clear()

    def scalar(self, sql: str) -> Any:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(sql, [DBNAME])
            return cursor.fetchone()[0]

    def transactions(self) -> int:
        return int(self.scalar("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s"))

    def connections(self) -> int:
        return int(self.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"))

    def enqueue(self, path: str, count: int = 1, atomic: bool = False) -> list[str]:
        from django.db import transaction
        from django.utils.module_loading import import_string

        task = import_string(path)
        with transaction.atomic() if atomic else contextlib.nullcontext():
            return [str(task.enqueue().id) for _ in range(count)]

    def finished(self, ids: list[str], timeout: float) -> list[tuple[float, float, float]]:
        """(enqueued, started, finished) epoch seconds of each task, once all are finished."""
        from django_tasks_db.models import DBTaskResult

        deadline = time.monotonic() + timeout
        while True:
            rows = list(
                DBTaskResult.objects.filter(id__in=ids, status="SUCCESSFUL").values_list(
                    "enqueued_at", "started_at", "finished_at"
                )
            )
            if len(rows) == len(ids):
                return [(e.timestamp(), s.timestamp(), f.timestamp()) for e, s, f in rows]
            if time.monotonic() > deadline:
                raise BenchError(f"{len(ids) - len(rows)} of {len(ids)} tasks did not finish within {timeout:g}s")
            time.sleep(0.1)

    def clear(self) -> None:
        from django.db import connection
        from django_tasks_db.models import DBTaskResult

        DBTaskResult.objects.all().delete()
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")


class Fleet:
    """``nodes`` supervisors of ``children`` children each."""

    def __init__(self, workspace: Path, nodes: int, children: int, db_port: int, direct_port: int | None) -> None:
        self.workspace = workspace
        self.nodes = [f"fleet-{n:02d}" for n in range(nodes)]
        self.children = children
        self.env = {
            "DJANGO_SETTINGS_MODULE": "benchproject.settings",
            "BENCH_DB_ENGINE": "postgres",
            "BENCH_DB_NAME": DBNAME,
            "BENCH_PG_PORT": str(db_port),
            **({"BENCH_PG_DIRECT_PORT": str(direct_port)} if direct_port else {}),
        }
        self.listen = 'listen_database = "direct"' if direct_port else ""
        self.procs: list[subprocess.Popen[bytes]] = []

    def socket(self, node: str) -> Path:
        return self.workspace / f"{node}.sock"

    def __enter__(self) -> Fleet:
        for node in self.nodes:
            config = self.workspace / f"{node}.toml"
            config.write_text(
                harness.CONFIG.format(  # the benchmark's supervisor, with its LISTEN direct if asked
                    project=json.dumps(str(PROJECT)),
                    node=node,
                    socket=json.dumps(str(self.socket(node))),
                    processes=self.children,
                    start="fork",
                    extra=self.listen,
                )
            )
            log = self.workspace / f"{node}.log"
            script = harness.console_script()
            self.procs.append(harness.spawn([script, "run", "-c", str(config)], self.env, log))
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in self.procs:
            harness.stop(proc)

    def statuses(self) -> list[dict[str, Any]]:
        from task_supervisor.observe import endpoints

        found = []
        for node, proc in zip(self.nodes, self.procs, strict=True):
            if proc.poll() is not None:
                raise BenchError(f"{node} exited: {harness.tail(self.workspace / f'{node}.log')}")
            try:
                found.append(json.loads(endpoints.query(str(self.socket(node)))))
            except (OSError, ValueError, endpoints.SupervisorNotRunning):
                found.append({})
        return found

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            statuses = self.statuses()
            if all(ready(s, self.children, len(self.nodes)) for s in statuses):
                return
            if time.monotonic() > deadline:
                fleet_size = len(self.nodes)
                late = [n for n, s in zip(self.nodes, statuses, strict=True) if not ready(s, self.children, fleet_size)]
                raise BenchError(f"not ready within {READY_TIMEOUT:g}s: {', '.join(late)}")
            time.sleep(1.0)

    def empty_claims(self) -> int:
        return sum(int(s.get("pickup", {}).get("empty_claims", 0)) for s in self.statuses())

    def wakes(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for s in self.statuses():
            for how, n in s.get("pickup", {}).get("wakes", {}).items():
                total[how] = total.get(how, 0) + int(n)
        return total


def ready(status: dict[str, Any], children: int, nodes: int) -> bool:
    pools = status.get("pools") or []
    kids = [c for p in pools for c in p["children"]]
    pickup = status.get("pickup") or {}
    return (
        len(kids) == children
        and all(c["state"] == "idle" for c in kids)
        and bool(pickup.get("instant"))
        and pickup.get("fleet") == nodes
    )


def ms_quantiles(values: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


def measure_fleet(driver: Driver, fleet: Fleet, args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    time.sleep(3.0)  # settle: the last children's first polls, the first probes
    first = driver.transactions()
    time.sleep(args.idle_seconds)
    figures["idle_tx"] = max(0, driver.transactions() - first - 2) / args.idle_seconds
    figures["connections"] = driver.connections() - 1  # less the driver's own

    before = fleet.empty_claims()
    ids = []
    for _ in range(args.probe):
        ids += driver.enqueue("benchapp.tasks.noop")
        time.sleep(PROBE_GAP)
    rows = driver.finished(ids, 60)
    time.sleep(1.0)  # the last empty claims reported
    figures["idle_pickup"] = ms_quantiles([s - e for e, s, _ in rows])
    figures["idle_attempts"] = (len(ids) + fleet.empty_claims() - before) / len(ids)

    before = fleet.empty_claims()
    ids = []
    began = time.monotonic()
    total = int(args.busy_rate * args.busy_seconds)
    for n in range(total):
        ids += driver.enqueue("benchapp.tasks.work_10ms")
        pause = began + (n + 1) / args.busy_rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    rows = driver.finished(ids, 120)
    time.sleep(1.0)
    figures["busy_pickup"] = ms_quantiles([s - e for e, s, _ in rows])
    figures["busy_attempts"] = (len(ids) + fleet.empty_claims() - before) / len(ids)

    committed = time.time()
    ids = driver.enqueue("benchapp.tasks.noop", args.backlog, atomic=True)
    rows = driver.finished(ids, 300)
    figures["throughput"] = len(ids) / (max(f for _, _, f in rows) - committed)
    figures["wakes"] = fleet.wakes()
    driver.clear()
    return figures


def measure_bare(driver: Driver, workspace: Path, count: int, direct_port: int, seconds: float) -> dict[str, Any]:
    env = {
        "DJANGO_SETTINGS_MODULE": "benchproject.settings",
        "BENCH_DB_ENGINE": "postgres",
        "BENCH_DB_NAME": DBNAME,
        "BENCH_PG_PORT": str(direct_port),
    }
    procs = [
        harness.spawn(harness.bare_argv(f"bare-{n}"), env, workspace / f"bare-{n}.log") for n in range(count)
    ]
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        for n, proc in enumerate(procs):
            while harness.BARE_READY_LINE not in harness.read_log(workspace / f"bare-{n}.log"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"bare-{n} did not start: {harness.tail(workspace / f'bare-{n}.log')}")
                time.sleep(0.1)
        time.sleep(3.0)
        first = driver.transactions()
        time.sleep(seconds)
        return {
            "idle_tx": max(0, driver.transactions() - first - 2) / seconds,
            "connections": driver.connections() - 1,
        }
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in procs:
            harness.stop(proc)


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    kids = args.nodes * args.children
    modes = list(results)
    print(f"\nA fleet of {args.nodes} supervisors x {args.children} children ({kids} children) on one PostgreSQL")
    print(f"{'':<42}" + "".join(f"{m:>18}" for m in modes))

    def line(label: str, render: Any) -> None:
        print(f"{label:<42}" + "".join(f"{render(results[m]):>18}" for m in modes))

    def get(key: str, fmt: str) -> Any:
        return lambda r: format(r[key], fmt) if key in r else "-"

    def pair(key: str) -> Any:
        return lambda r: f"{r[key][0]:.1f} / {r[key][1]:.1f}" if key in r else "-"

    line("PostgreSQL server connections", get("connections", "d"))
    line("idle transactions/s, whole fleet", get("idle_tx", ".1f"))
    line("idle transactions/s per child", lambda r: f"{r['idle_tx'] / kids:.3f}")
    line("pickup p50 / p99, idle fleet (ms)", pair("idle_pickup"))
    line("claim attempts per task, idle fleet", get("idle_attempts", ".2f"))
    line(f"pickup p50 / p99, {args.busy_rate:g} tasks/s of 10 ms (ms)", pair("busy_pickup"))
    line("claim attempts per task, busy fleet", get("busy_attempts", ".2f"))
    line(f"throughput, {args.backlog} noop backlog (tasks/s)", get("throughput", ".0f"))
    for mode in modes:
        if "wakes" in results[mode]:
            print(f"wakes ({mode}): {json.dumps(results[mode]['wakes'], sort_keys=True)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--children", type=int, default=8)
    parser.add_argument("--modes", nargs="+", default=["pgbouncer", "direct"], choices=["pgbouncer", "direct"])
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--probe", type=int, default=100)
    parser.add_argument("--busy-rate", type=float, default=100.0)
    parser.add_argument("--busy-seconds", type=float, default=10.0)
    parser.add_argument("--backlog", type=int, default=3000)
    parser.add_argument("--no-bare", action="store_true", help="skip the bare db_worker yardstick")
    args = parser.parse_args(argv)
    interrupt_on_term()
    folder = Path(tempfile.mkdtemp(prefix="ts_fleet_"))
    folder.chmod(0o755)  # the cluster and PgBouncer run as the postgres user when started by root
    results: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    try:
        with cluster(folder / "pg") as direct, pgbouncer(folder / "bouncer", direct) as bounced:
            subprocess.run(
                ["psql", "-h", "127.0.0.1", "-p", str(direct), "-U", "postgres", "-c", f"CREATE DATABASE {DBNAME}"],
                check=True,
                capture_output=True,
            )
            driver = Driver(direct)
            workspace = folder / "work"
            workspace.mkdir()
            for mode in args.modes:
                print(f"{mode}: starting {args.nodes} supervisors...", file=sys.stderr, flush=True)
                port, listen = (bounced, direct) if mode == "pgbouncer" else (direct, None)
                with Fleet(workspace, args.nodes, args.children, port, listen) as fleet:
                    fleet.wait_ready()
                    print(f"{mode}: measuring...", file=sys.stderr, flush=True)
                    results[mode] = measure_fleet(driver, fleet, args)
            if not args.no_bare:
                kids = args.nodes * args.children
                print(f"bare: starting {kids} db_workers...", file=sys.stderr, flush=True)
                results["bare db_worker"] = measure_bare(driver, workspace, kids, direct, args.idle_seconds)
            from django.db import connections

            connections.close_all()
    except BenchError as exc:
        print(f"fleet benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        left = [p for p in psutil.process_iter(["cmdline"]) if f"{folder}" in " ".join(p.info["cmdline"] or [])]
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
    report(args, results)
    print(f"\n({time.monotonic() - started:.0f} s; bench/fleet.py {' '.join(argv or sys.argv[1:])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
