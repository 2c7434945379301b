"""Pool decisions with a fake clock: restarts, backoff, recycling, giving up."""

from __future__ import annotations

import os
import random
import signal

import pytest

from task_supervisor.config import PoolConfig
from task_supervisor.loop.child import Child, ChildState, ExitReason, describe_status
from task_supervisor.loop.pool import (
    BACKOFF_CAP,
    GIVE_UP_AFTER,
    MIN_UPTIME,
    Pool,
    recycle_after,
    restart_delay,
)
from task_supervisor.wire.spec import CHILD_EXIT_BOOT_FAILED, ChildSpec


def spec(slot: int = 0) -> ChildSpec:
    return ChildSpec("default", slot, 1, f"n:default:{slot}:1", ("default",), "default", 1.0, None, 1, "s", ())


def child(now: float, slot: int = 0) -> Child:
    return Child(spec(slot), pid=1000 + slot, report_fd=-1, now=now)


def exit_status(code: int) -> int:
    return code << 8


def test_restart_delay_grows_exponentially_with_jitter_and_a_cap():
    rng = random.Random(1)
    assert restart_delay(0, rng) == 0
    for failures in range(1, 12):
        full = min(BACKOFF_CAP, 0.1 * 2 ** (failures - 1))
        delays = {restart_delay(failures, rng) for _ in range(50)}
        assert all(full / 2 <= d <= full for d in delays)
        assert len(delays) > 1  # jittered


def test_recycle_jitter_stays_within_ten_percent():
    rng = random.Random(2)
    values = {recycle_after(100, rng) for _ in range(200)}
    assert min(values) >= 90 and max(values) == 100 and len(values) > 5
    assert recycle_after(None, rng) is None
    assert recycle_after(1, rng) == 1


def test_a_fast_crash_backs_off_and_a_long_lived_one_restarts_at_once():
    rng = random.Random(3)
    pool = Pool(PoolConfig(name="default", queues=("default",), processes=1))
    slot = pool.slots[0]
    assert pool.due(0.0) == [slot]
    for n in range(1, 4):
        c = child(now=100.0 * n)
        slot.child = c
        c.handle_message({"event": "ready"}, 100.0 * n)
        pool.ever_up = True
        pool.child_exited(slot, c, c.exited(exit_status(1)), now=100.0 * n + 0.5, rng=rng)
        assert slot.failures == n
        assert pool.due(100.0 * n + 0.5) == []
        assert pool.backing_off(100.0 * n + 0.5)
    c = child(now=500.0)
    slot.child = c
    c.handle_message({"event": "ready"}, 500.0)
    pool.child_exited(slot, c, c.exited(exit_status(1)), now=500.0 + MIN_UPTIME + 10, rng=rng)
    assert slot.failures == 0 and pool.due(500.0 + MIN_UPTIME + 10) == [slot]


def test_a_pool_whose_children_never_boot_is_hopeless():
    rng = random.Random(4)
    pool = Pool(PoolConfig(name="default", queues=("default",), processes=2))
    now = 0.0
    for _ in range(GIVE_UP_AFTER):
        for slot in pool.slots.values():
            c = child(now, slot.index)
            slot.child = c
            c.handle_message({"event": "boot_failed", "reason": "OperationalError: no db"}, now)
            pool.child_exited(slot, c, c.exited(exit_status(CHILD_EXIT_BOOT_FAILED)), now, rng)
        now += 1
    assert pool.hopeless()
    assert pool.last_error() == "OperationalError: no db"
    pool.ever_up = True
    assert not pool.hopeless()


def test_exit_reasons():
    c = child(0)
    assert c.exited(exit_status(CHILD_EXIT_BOOT_FAILED)) is ExitReason.BOOT_FAILED
    c = child(0)
    c.handle_message({"event": "ready"}, 0)
    assert c.exited(exit_status(0)) is ExitReason.RECYCLED
    c = child(0)
    c.handle_message({"event": "ready"}, 0)
    assert c.exited(signal.SIGSEGV) is ExitReason.CRASHED
    c = child(0)
    c.state = ChildState.IDLE
    c.stop_requested_at = 1.0
    c.state = ChildState.STOPPING
    assert c.exited(signal.SIGKILL) is ExitReason.STOPPED


def test_child_states_follow_the_reports():
    c = child(0)
    assert c.state is ChildState.STARTING
    c.handle_message({"event": "ready"}, 1)
    assert c.state is ChildState.IDLE
    c.handle_message({"event": "task_started", "task_id": "t1", "path": "a.b"}, 2)
    assert c.state is ChildState.BUSY and c.task is not None and c.task.task_id == "t1"
    c.handle_message({"event": "task_finished", "task_id": "t1", "status": "SUCCESSFUL"}, 3)
    assert c.state is ChildState.IDLE and c.task is None and c.tasks_done == 1
    with pytest.raises(RuntimeError):
        c.change_state(ChildState.STARTING)


def test_resize_returns_the_children_of_removed_slots():
    pool = Pool(PoolConfig(name="default", queues=("default",), processes=3))
    for slot in pool.slots.values():
        slot.child = child(0, slot.index)
    removed = pool.resize(1)
    assert [c.spec.slot for c in removed] == [1, 2] and list(pool.slots) == [0]
    pool.resize(2)
    assert list(pool.slots) == [0, 1] and pool.slots[1].child is None


def test_exit_descriptions():
    assert describe_status(exit_status(3)) == "exited with code 3"
    assert describe_status(signal.SIGKILL) == "killed by SIGKILL (perhaps out of memory?)"
    assert describe_status(signal.SIGSEGV) == "killed by SIGSEGV (segmentation fault)"
    assert describe_status(signal.SIGKILL, "hard timeout") == "killed by SIGKILL (by the supervisor: hard timeout)"
    assert os.WIFSIGNALED(signal.SIGTERM)
