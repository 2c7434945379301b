"""The loop in-process: one ``turn()`` at a time with a fake clock, a fake spawner and fake process
calls. No process is forked and nothing sleeps: each test runs in milliseconds."""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from task_supervisor import events, exitcodes
from task_supervisor.chores.recovery import TASK_TIMEOUT, WORKER_LOST, LostTask
from task_supervisor.config import Config, load_config
from task_supervisor.loop.arbiter import FORCE_STOP_GRACE, Supervisor
from task_supervisor.loop.child import ChildState
from task_supervisor.loop.phase import Phase
from task_supervisor.loop.pool import BACKOFF_BASE
from task_supervisor.loop.proc import ProcessCalls
from task_supervisor.loop.spawn import Spawner
from task_supervisor.wire import protocol
from task_supervisor.wire.spec import ChildSpec

EXIT_1 = 1 << 8  # wait status of "exited with code 1"
EXIT_0 = 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeChild:
    """The test's end of a spawned child: it speaks on the report pipe and reads the control pipe."""

    spec: ChildSpec
    pid: int
    report_w: int
    control_r: int
    calls: FakeCalls
    signals: list[int] = field(default_factory=list)

    def say(self, event: str, **fields: Any) -> None:
        protocol.Reporter(self.report_w).send(event, **fields)

    def ready(self) -> FakeChild:
        self.say(protocol.READY, pid=self.pid)
        return self

    def start_task(self, task_id: str = "t1", path: str = "app.tasks.work") -> None:
        self.say(protocol.TASK_STARTED, task_id=task_id, path=path)

    def finish_task(self, task_id: str = "t1", status: str = "SUCCESSFUL") -> None:
        self.say(protocol.TASK_FINISHED, task_id=task_id, status=status, exception="")

    def exit(self, wait_status: int) -> None:
        """Die: the report pipe closes and the wait status waits to be reaped."""
        if self.report_w < 0:
            return
        os.close(self.report_w)
        self.report_w = -1
        self.calls.exited.append((self.pid, wait_status))

    def control_lines(self) -> list[str]:
        os.set_blocking(self.control_r, False)
        try:
            return os.read(self.control_r, 65536).decode().splitlines()
        except BlockingIOError:
            return []


class FakeCalls(ProcessCalls):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.exited: list[tuple[int, int]] = []
        self.children: dict[int, FakeChild] = {}
        self.rss: dict[int, int] = {}
        self.states: dict[int, str] = {}

    def reap(self) -> tuple[int, int] | None:
        return self.exited.pop(0) if self.exited else None

    def signal(self, pid: int, signum: int) -> None:
        child = self.children[pid]
        child.signals.append(signum)
        if signum == signal.SIGKILL:
            child.exit(signal.SIGKILL)  # a SIGKILLed process dies at once

    def usage(self, pid: int) -> tuple[int | None, float | None]:
        return self.rss.get(pid, 50 << 20), 0.0

    def state(self, pid: int) -> str | None:
        return self.states.get(pid, "sleeping")

    def sleep(self, seconds: float) -> None:
        self.clock.advance(seconds)


class FakeSpawner(Spawner):
    def __init__(self, calls: FakeCalls) -> None:
        super().__init__(wall=lambda: 0.0)  # generations 1, 2, ... instead of from the clock
        self.calls = calls
        self.next_pid = 5000
        self.started: list[FakeChild] = []

    def spawn(self, spec: ChildSpec, start: str) -> tuple[int, int, int]:
        report_r, report_w = os.pipe()
        control_r, control_w = os.pipe()
        os.set_blocking(report_r, False)
        os.set_blocking(control_w, False)
        self.next_pid += 1
        child = FakeChild(spec, self.next_pid, report_w, control_r, self.calls)
        self.calls.children[child.pid] = child
        self.started.append(child)
        return child.pid, report_r, control_w


class FakeJanitor:
    """Records what the loop hands to the database chores."""

    def __init__(self) -> None:
        self.lost_tasks: list[tuple[str, LostTask]] = []
        self.failed_tasks: list[Any] = []
        self.db_ok, self.db_error, self.heartbeats, self.last_beat = True, None, False, None
        self.retries_scheduled: dict[str, Any] = {}
        self.lease_sent_at: float | None = None

    def lost(self, pool: str, lost: LostTask) -> None:
        self.lost_tasks.append((pool, lost))

    def task_failed(self, pool: str, failed: Any) -> None:
        self.failed_tasks.append((pool, failed))

    def tick(self, now: float, live: set[str], pools: list[str]) -> None:
        pass

    def first_tick(self, now: float, live: set[str], pools: list[str]) -> None:
        pass

    def next_due(self) -> float | None:
        return None

    def flush(self, deadline: float) -> None:
        pass


class Loop:
    """A supervisor driven turn by turn."""

    def __init__(self, config: Config) -> None:
        self.clock = FakeClock()
        self.calls = FakeCalls(self.clock)
        self.spawner = FakeSpawner(self.calls)
        self.sup = Supervisor(config, clock=self.clock, wall=lambda: 1.7e9, spawner=self.spawner, calls=self.calls)
        self.janitor = FakeJanitor()
        self.sup.janitor = self.janitor  # type: ignore[assignment]

    def turn(self, advance: float = 0.0) -> None:
        self.clock.advance(advance)
        self.sup.turn(timeout=0)

    def live(self) -> list[FakeChild]:
        return [c for c in self.spawner.started if c.pid in self.sup.children]

    def signal(self, signum: int) -> None:
        self.sup.signals.pending.append(signum)
        self.turn()

    def close(self) -> None:
        self.sup.halt()
        for child in self.spawner.started:
            child.exit(signal.SIGKILL)
            os.close(child.control_r)


@pytest.fixture
def make_loop(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG, logger="task_supervisor")
    logging.getLogger("task_supervisor").propagate = True  # to caplog, whatever setup_logging did
    loops: list[Loop] = []

    def make(pools: str, supervisor: str = "") -> Loop:
        path = tmp_path / "config.toml"
        path.write_text(
            '[django]\nsettings = "tsproject.settings"\n'
            f'[supervisor]\nhttp = ""\nnode = "n1"\ngraceful_timeout = "30s"\n{supervisor}\n'
            f"[scheduler]\nenabled = false\n{pools}"
        )
        loop = Loop(load_config(path))
        loops.append(loop)
        return loop

    yield make
    for loop in loops:
        loop.close()


def events_of(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


ONE = '[pools.default]\nprocesses = 1\ntimeout = "10s"\nkill_after = "5s"\n'
TWO = "[pools.default]\nprocesses = 2\n"


def test_first_turn_fills_every_slot(make_loop):
    loop = make_loop(TWO)
    loop.turn()
    assert [c.spec.worker_id for c in loop.live()] == ["n1:default:0:1", "n1:default:1:1"]
    for child in loop.live():
        child.ready()
    loop.turn()
    assert all(c.state is ChildState.IDLE for c in loop.sup.children.values())


def test_a_crash_is_restarted_after_its_backoff(make_loop, caplog):
    caplog.set_level(logging.INFO)
    loop = make_loop(ONE)
    loop.turn()
    first = loop.live()[0].ready()
    loop.turn(0.5)
    first.exit(EXIT_1)  # a fast failure: it lived less than MIN_UPTIME
    loop.turn()
    assert events_of(caplog, events.CHILD_CRASHED)
    assert loop.live() == []  # backing off, not restarted in the same instant
    assert loop.sup.snapshot()["pools"][0]["backing_off"]
    loop.turn(BACKOFF_BASE)  # the first backoff is at most BACKOFF_BASE
    (second,) = loop.live()
    assert second.spec.worker_id == "n1:default:0:2"
    # Its unstarted claim, if any, goes back to READY whatever on_worker_lost says.
    ((pool, lost),) = loop.janitor.lost_tasks
    assert (pool, lost.worker_id, lost.on_worker_lost, lost.task_id) == ("default", "n1:default:0:1", "requeue", None)


def test_repeated_fast_crashes_back_off_longer_each_time(make_loop):
    loop = make_loop(ONE)
    loop.turn()
    waits = []
    for _ in range(5):
        (child,) = loop.live()
        child.ready()
        loop.turn()
        child.exit(EXIT_1)
        started = loop.clock.now
        loop.turn()
        while not loop.live():
            loop.turn(0.05)
        waits.append(loop.clock.now - started)
    assert waits[-1] > waits[0]


def test_soft_then_hard_timeout(make_loop, caplog):
    loop = make_loop(ONE)
    loop.turn()
    child = loop.live()[0].ready()
    child.start_task("t1", "app.tasks.slow")
    loop.turn()
    loop.turn(9.9)
    assert signal.SIGUSR1 not in child.signals
    loop.turn(0.1)  # 10 s: TaskTimeout raised inside the task
    assert child.control_lines() == ["timeout t1 10"]
    assert child.signals == [signal.SIGUSR1]
    assert events_of(caplog, events.TASK_TIMEOUT)
    loop.turn(4.9)
    assert signal.SIGKILL not in child.signals
    loop.turn(0.1)  # kill_after 5 s later: SIGKILL, reaped the next turn
    assert child.signals[-1] == signal.SIGKILL
    loop.turn()
    ((_, lost),) = loop.janitor.lost_tasks
    assert lost.exception_path == TASK_TIMEOUT and lost.task_id == "t1"
    assert "ran past its timeout of 10s" in lost.message
    (exit_record,) = events_of(caplog, events.CHILD_CRASHED)
    assert "by the supervisor" in exit_record.getMessage() and "out of memory" not in exit_record.getMessage()
    assert loop.sup.stats.timeouts[("default", "soft")] == loop.sup.stats.timeouts[("default", "hard")] == 1
    loop.turn()
    assert len(loop.live()) == 1  # a killed-for-timeout child is replaced at once, no backoff


def test_a_task_that_finishes_after_its_notice_is_not_killed(make_loop):
    loop = make_loop(ONE)
    loop.turn()
    child = loop.live()[0].ready()
    child.start_task()
    loop.turn()
    loop.turn(10)
    child.finish_task(status="FAILED")
    loop.turn(10)
    assert signal.SIGKILL not in child.signals


def test_drain_waits_for_running_tasks_then_kills_at_the_deadline(make_loop, caplog):
    loop = make_loop(TWO)
    loop.turn()
    busy, idle = (c.ready() for c in loop.live())
    busy.start_task("t9")
    loop.turn()
    loop.signal(signal.SIGTERM)
    assert loop.sup.phase is Phase.DRAINING and events_of(caplog, events.DRAIN_STARTED)
    assert busy.signals == idle.signals == [signal.SIGTERM]
    idle.exit(EXIT_0)
    loop.turn(29)
    assert not loop.sup.finished() and signal.SIGKILL not in busy.signals
    assert loop.live() == [busy]  # nothing replaces a child while draining
    loop.turn(1)  # graceful_timeout 30 s
    assert busy.signals[-1] == signal.SIGKILL
    loop.turn()
    assert loop.sup.finished() and loop.sup.exit_code == exitcodes.EX_OK
    lost = [lost for _, lost in loop.janitor.lost_tasks if lost.worker_id == busy.spec.worker_id]
    assert "graceful_timeout (30s) while the supervisor drained" in lost[0].message


def test_a_second_signal_stops_at_once(make_loop, caplog):
    loop = make_loop(TWO)
    loop.turn()
    children = [c.ready() for c in loop.live()]
    loop.signal(signal.SIGTERM)
    loop.signal(signal.SIGINT)
    assert loop.sup.phase is Phase.STOPPING and loop.sup.exit_code == exitcodes.EX_FORCED
    assert events_of(caplog, events.FORCED_STOP)
    assert all(c.signals[-1] == signal.SIGKILL for c in children)
    loop.turn()
    assert loop.sup.finished()


def test_quit_stops_at_once_even_while_running(make_loop):
    loop = make_loop(ONE)
    loop.turn()
    loop.live()[0].ready()
    loop.signal(signal.SIGQUIT)
    assert loop.sup.phase is Phase.STOPPING


def test_halt_does_not_sleep_in_real_time(make_loop):
    import time

    loop = make_loop(ONE)
    loop.turn()
    child = loop.live()[0]
    loop.calls.signal = lambda pid, signum: child.signals.append(signum)  # a child that never dies
    started, real = loop.clock.now, time.monotonic()
    loop.sup.halt()
    assert loop.clock.now - started >= FORCE_STOP_GRACE
    assert time.monotonic() - real < 1.0


def test_hup_rolls_a_changed_pool_new_children_first(make_loop, tmp_path, caplog):
    loop = make_loop(TWO)
    loop.turn()
    old = [c.ready() for c in loop.live()]
    loop.turn()
    text = (tmp_path / "config.toml").read_text().replace("processes = 2", 'processes = 2\ntimeout = "1m"')
    (tmp_path / "config.toml").write_text(text)
    loop.signal(signal.SIGHUP)
    assert events_of(caplog, events.POOL_ROLLED)
    new = [c for c in loop.live() if c not in old]
    assert len(new) == 2 and all(signal.SIGTERM not in c.signals for c in old)
    for child in new:
        child.ready()
    loop.turn()
    assert all(c.signals == [signal.SIGTERM] for c in old)  # new ones up: the old ones drain
    for child in old:
        child.exit(EXIT_0)
    loop.turn()
    assert sorted(loop.sup.live_worker_ids()) == sorted(c.spec.worker_id for c in new)


def test_hup_resizes_in_place_and_keeps_a_bad_config_out(make_loop, tmp_path, caplog):
    loop = make_loop(TWO)
    loop.turn()
    children = [c.ready() for c in loop.live()]
    path = tmp_path / "config.toml"
    path.write_text(path.read_text().replace("processes = 2", "processes = 1"))
    loop.signal(signal.SIGHUP)
    assert events_of(caplog, events.POOL_RESIZED)
    assert children[1].signals == [signal.SIGTERM] and children[0].signals == []
    path.write_text(path.read_text().replace("processes = 1", "processes = 0"))
    loop.signal(signal.SIGHUP)
    assert events_of(caplog, events.RELOAD_FAILED)
    assert loop.sup.config.pools["default"].processes == 1


def test_autoscaling_grows_on_depth_and_shrinks_idle_children(make_loop, caplog):
    loop = make_loop('[pools.default]\nprocesses = { min = 1, max = 3 }\nscale_cooldown = "30s"\n')
    loop.turn()
    loop.live()[0].ready()
    loop.sup.stats.queue_depth = {"default": 5, "other": 50}
    loop.turn()
    assert len(loop.sup.pools["default"].slots) == 3
    assert len(loop.live()) == 3
    for child in loop.live()[1:]:
        child.ready()
    loop.sup.stats.queue_depth = {}
    loop.turn(10)
    assert len(loop.sup.pools["default"].slots) == 3  # within the cooldown
    loop.turn(20)
    assert len(loop.sup.pools["default"].slots) == 2
    stopped = [c for c in loop.live() if signal.SIGTERM in c.signals]
    assert len(stopped) == 1
    assert [r.direction for r in events_of(caplog, events.POOL_SCALED)] == ["up", "down"]


def test_memory_recycles_idle_now_and_busy_after_its_task(make_loop, caplog):
    loop = make_loop('[pools.default]\nprocesses = 2\nmax_memory = "100MiB"\n')
    loop.turn()
    busy, idle = (c.ready() for c in loop.live())
    busy.start_task()
    loop.turn()
    loop.calls.rss = {busy.pid: 200 << 20, idle.pid: 200 << 20}
    loop.turn(1)
    assert idle.signals == [signal.SIGTERM] and busy.signals == []
    assert len(events_of(caplog, events.CHILD_OVER_MEMORY)) == 2
    busy.finish_task()
    loop.turn()
    assert busy.signals == [signal.SIGTERM] and events_of(caplog, events.CHILD_RECYCLE_MEMORY)
    idle.exit(EXIT_0)
    loop.turn()
    assert len(loop.live()) == 2  # a stopped child's slot is refilled at once


def test_a_child_that_ignores_its_stop_is_killed_after_the_grace_period(make_loop, caplog):
    loop = make_loop(ONE)
    loop.turn()
    child = loop.live()[0].ready()
    loop.sup.stop_children([loop.sup.children[child.pid]], loop.clock.now)
    loop.turn(30)
    assert child.signals == [signal.SIGTERM, signal.SIGKILL] and events_of(caplog, events.CHILD_KILLED)


def test_a_child_reported_failure_goes_to_the_janitor(make_loop):
    loop = make_loop(ONE)
    loop.turn()
    child = loop.live()[0].ready()
    child.start_task("t5", "app.tasks.flaky")
    loop.turn()
    child.finish_task("t5", "FAILED")
    loop.turn()
    ((pool, failed),) = loop.janitor.failed_tasks
    assert (pool, failed.task_id, failed.path, failed.worker_id) == (
        "default",
        "t5",
        "app.tasks.flaky",
        "n1:default:0:1",
    )


def test_a_child_killed_mid_task_by_someone_else_is_lost_with_the_oom_hint(make_loop):
    loop = make_loop('[pools.default]\nprocesses = 1\non_worker_lost = "requeue"\n')
    loop.turn()
    child = loop.live()[0].ready()
    child.start_task("t7")
    loop.turn()
    child.exit(signal.SIGKILL)
    loop.turn()
    ((_, lost),) = loop.janitor.lost_tasks
    assert lost.exception_path == WORKER_LOST and lost.on_worker_lost == "requeue"
    assert "out of memory" in lost.message


def test_every_pool_failing_to_boot_gives_up(make_loop, caplog):
    loop = make_loop(ONE)
    loop.turn()
    for _ in range(200):
        for child in loop.live():
            child.say(protocol.BOOT_FAILED, reason="OperationalError: no database")
            child.exit(78 << 8)
        loop.turn(1)
        if loop.sup.phase is not Phase.RUNNING:
            break
    assert loop.sup.exit_code == exitcodes.EX_NO_WORKERS
    assert "no database" in loop.sup.exit_reason and events_of(caplog, events.SUPERVISOR_GAVE_UP)


# -- the pure pieces the loop delegates to ---------------------------------------------------

from task_supervisor.config import PoolConfig  # noqa: E402
from task_supervisor.loop.child import RunningTask  # noqa: E402
from task_supervisor.loop.lostpolicy import DeadChild, lost_task  # noqa: E402
from task_supervisor.loop.reload import Action, plan  # noqa: E402

TASK = RunningTask("t1", "app.tasks.work", 0.0, 10.0)
KILLED = "killed by SIGKILL (perhaps out of memory?)"
KILLED_BY_US = "killed by SIGKILL (by the supervisor: ...)"


@pytest.mark.parametrize(
    ("task", "timed_out", "killed", "how", "phase", "policy", "want"),
    [
        # nothing started: back to READY whatever the pool says
        (
            None,
            None,
            False,
            "exited with code 0",
            Phase.RUNNING,
            "fail",
            ("requeue", None, WORKER_LOST, "before starting it"),
        ),
        # a hard timeout: FAILED with TaskTimeout, by task id
        (
            TASK,
            TASK,
            True,
            KILLED_BY_US,
            Phase.RUNNING,
            "requeue",
            ("fail", "t1", TASK_TIMEOUT, "ran past its timeout of 10s"),
        ),
        # killed by someone else mid-task: the pool's policy, with the memory hint
        (TASK, None, False, KILLED, Phase.RUNNING, "requeue", ("requeue", None, WORKER_LOST, "out of memory")),
        (TASK, None, False, "killed by SIGSEGV", Phase.RUNNING, "fail", ("fail", None, WORKER_LOST, "SIGSEGV.")),
        # killed by us at the end of a drain, or on a forced stop
        (TASK, None, True, KILLED_BY_US, Phase.DRAINING, "fail", ("fail", None, WORKER_LOST, "graceful_timeout (30s)")),
        (TASK, None, True, KILLED_BY_US, Phase.STOPPING, "requeue", ("requeue", None, WORKER_LOST, "stop at once")),
    ],
)
def test_lost_task_policy(task, timed_out, killed, how, phase, policy, want):
    pool = PoolConfig(name="default", queues=("default",), on_worker_lost=policy, kill_after=5.0)
    lost = lost_task(DeadChild("n1:default:0:1", 42, how, task, timed_out, killed), pool, phase, 30.0)
    on_worker_lost, task_id, exception_path, text = want
    assert (lost.on_worker_lost, lost.task_id, lost.exception_path) == (on_worker_lost, task_id, exception_path)
    assert text in lost.message and "n1:default:0:1, pid 42" in lost.message
    assert ("out of memory" in lost.message) == (how == KILLED)


def test_reload_plan():
    a = PoolConfig(name="a", queues=("a",), processes=2)
    b = PoolConfig(name="b", queues=("b",))
    c = PoolConfig(name="c", queues=("c",))
    new = {
        "a": PoolConfig(name="a", queues=("a",), processes=4),
        "b": PoolConfig(name="b", queues=("b", "x")),
        "d": PoolConfig(name="d", queues=("d",)),
    }
    actions = {change.name: change.action for change in plan({"a": a, "b": b, "c": c}, new)}
    assert actions == {"a": Action.RESIZE, "b": Action.ROLL, "c": Action.REMOVE, "d": Action.ADD}
    assert [change.action for change in plan({"a": a}, {"a": a})] == [Action.KEEP]


# -- leases and liveness ---------------------------------------------------------------------

from task_supervisor.loop.lease import Lease  # noqa: E402
from task_supervisor.loop.liveness import PING_INTERVAL  # noqa: E402
from task_supervisor.observe.exposition import readiness  # noqa: E402
from task_supervisor.wire.control import LEASE_GRACE, LEASE_MARGIN  # noqa: E402


def leased_loop(make_loop, pools: str = ONE) -> Loop:
    loop = make_loop(pools)
    loop.sup.lease = Lease(20.0, enabled=True)
    loop.janitor.lease_sent_at = loop.clock.now
    return loop


def test_the_lease_is_handed_to_children_and_stops_their_tasks_when_not_renewed(make_loop, caplog):
    loop = leased_loop(make_loop)
    loop.turn()
    child = loop.live()[0].ready()
    assert child.spec.leased
    until = loop.clock.now + 20.0
    assert child.control_lines() == [f"lease {until!r}"]
    child.start_task("t1")
    loop.turn(10)
    assert readiness(loop.sup.snapshot()) == []
    loop.turn(20 - 10 - LEASE_MARGIN)  # the lease stops covering tasks: notice first
    assert child.control_lines() == ["lease-lost"] and child.signals == [signal.SIGUSR1]
    assert events_of(caplog, events.LEASE_LOST)
    assert any("lease" in reason for reason in readiness(loop.sup.snapshot()))
    loop.turn(LEASE_GRACE)  # then the child, still running it, is killed
    assert child.signals[-1] == signal.SIGKILL
    assert loop.clock.now < until  # before anyone else may recover the row
    loop.turn()
    ((_, lost),) = loop.janitor.lost_tasks
    assert "lease ran out" in lost.message and "out of memory" not in lost.message


def test_a_renewed_lease_reaches_every_child_and_idle_children_are_left_alone(make_loop, caplog):
    loop = leased_loop(make_loop, TWO)
    loop.turn()
    children = [c.ready() for c in loop.live()]
    for child in children:
        child.control_lines()
    loop.turn(20)  # lease lost while idle: no task to stop, no child killed
    assert all(c.signals == [] for c in children) and events_of(caplog, events.LEASE_LOST)
    loop.janitor.lease_sent_at = loop.clock.now  # a heartbeat went through again
    loop.turn()
    assert all(c.control_lines() == [f"lease {loop.clock.now + 20.0!r}"] for c in children)
    assert events_of(caplog, events.LEASE_RENEWED) and loop.sup.snapshot()["lease"]["held"]


def test_an_idle_child_that_does_not_answer_pings_is_replaced(make_loop, caplog):
    loop = make_loop(ONE, supervisor='hung_after = "10s"')
    loop.turn()
    child = loop.live()[0].ready()
    loop.turn(PING_INTERVAL)
    loop.turn(PING_INTERVAL)
    (ping,) = child.control_lines()
    child.say(protocol.PONG, seq=int(ping.split()[1]))  # answered: fine
    loop.turn()
    loop.turn(PING_INTERVAL)
    (ping,) = child.control_lines()  # the next ping, never answered
    loop.turn(9.9)
    assert child.signals == []
    loop.turn(1.0)  # checks are a second apart
    assert child.signals == [signal.SIGKILL] and events_of(caplog, events.CHILD_HUNG)
    assert loop.sup.stats.hung["default"] == 1
    loop.turn()
    assert len(loop.live()) == 1 and loop.live()[0] is not child


def test_a_stopped_child_is_replaced_busy_or_idle(make_loop, caplog):
    loop = make_loop(TWO)
    loop.turn()
    busy, idle = (c.ready() for c in loop.live())
    busy.start_task()
    loop.turn()
    loop.calls.states = {busy.pid: "stopped", idle.pid: "stopped"}
    loop.turn(1)
    assert any(c["hung"] is None for p in loop.sup.snapshot()["pools"] for c in p["children"])
    loop.turn(1)  # stopped at two checks in a row
    assert busy.signals == idle.signals == [signal.SIGKILL]
    assert len(events_of(caplog, events.CHILD_HUNG)) == 2


def test_worker_ids_never_repeat_across_restarts_of_the_supervisor(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[django]\nsettings = "x.settings"\n[supervisor]\nnode = "n1"\n[pools.default]\n')
    config = load_config(path)
    pool = config.pools["default"]
    rng = __import__("random").Random(1)
    first = Spawner(wall=lambda: 1_700_000_000.0)
    ids = [first.spec(config, pool, 0, "worker", rng).worker_id for _ in range(3)]
    assert ids == [f"n1:default:0:{17_000_000_000 + n}" for n in range(3)]
    restarted = Spawner(wall=lambda: 1_700_000_001.0)  # the next incarnation, booted a second later
    assert restarted.spec(config, pool, 0, "worker", rng).worker_id == "n1:default:0:17000000010"
    assert len(ids[0]) <= 64
