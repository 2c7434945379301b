"""Cancelling a running task, loop side and child side, without processes or a database: the
control line and signal, the kill kill_after later, the lost-task record, no retry, and the
child raising TaskCancelled only for the task it runs."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from task_supervisor import TaskCancelled
from task_supervisor.chores.janitor import Janitor
from task_supervisor.chores.recovery import FailedTask
from task_supervisor.chores.workflowsweep import WorkflowSweep
from task_supervisor.config import config_from_dict
from task_supervisor.loop.child import Child, ChildState
from task_supervisor.loop.limits import CANCEL_PATIENCE, Limits
from task_supervisor.loop.lostpolicy import DeadChild, lost_task
from task_supervisor.loop.phase import Phase
from task_supervisor.loop.proc import ProcessCalls
from task_supervisor.observe.stats import Stats
from task_supervisor.wire.spec import ChildSpec
from task_supervisor.worker.control import ControlChannel, CurrentTask

TASK = "0f8fad5b-d9cb-469f-a165-70867728950e"
WORKER = "n:default:0:1"


class Calls(ProcessCalls):
    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []

    def signal(self, pid: int, signum: int) -> None:
        self.sent.append((pid, signum))


def config(**pool: object):
    return config_from_dict(
        {"django": {"settings": "s"}, "supervisor": {"node": "n"}, "pools": {"default": {"kill_after": 2, **pool}}},
        Path("config.toml"),
    )


def busy_child(calls: Calls) -> tuple[Child, int]:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    spec = ChildSpec("default", 0, 1, WORKER, ("default",), "default", 1.0, None, 1, "s", ())
    child = Child(spec, 4242, -1, 0.0, write_end, calls)
    child.change_state(ChildState.IDLE)
    child.handle_message({"event": "task_started", "task_id": TASK, "path": "app.tasks.long"}, 1.0)
    return child, read_end


def test_a_cancel_is_told_once_then_the_child_is_killed_kill_after_later():
    calls, stats = Calls(), Stats()
    limits, cfg = Limits(stats, calls), config()
    child, pipe = busy_child(calls)
    limits.cancel(10.0, [child], [(TASK, WORKER)], cfg)
    assert os.read(pipe, 100) == f"cancel {TASK}\n".encode()
    assert calls.sent == [(4242, signal.SIGUSR1)]
    assert stats.cancels["default"] == 1
    limits.cancel(10.5, [child], [(TASK, WORKER)], cfg)  # found again: told once
    assert calls.sent == [(4242, signal.SIGUSR1)]
    assert limits.next_due([child], cfg) == 12.0
    limits.enforce(11.9, [child], cfg)
    assert not child.killed
    limits.enforce(12.0, [child], cfg)
    assert calls.sent[-1] == (4242, signal.SIGKILL) and child.killed
    record = lost_task(
        DeadChild(WORKER, 4242, "killed by SIGKILL", child.task, None, True, limits.cancel_killed.pop(4242)),
        cfg.pools["default"],
        Phase.RUNNING,
        10.0,
    )
    assert record.exception_path == "task_supervisor.TaskCancelled" and record.task_id == TASK
    assert "cancelled and did not stop within kill_after 2s" in record.message


def test_a_task_that_stops_is_not_killed_and_a_late_cancel_waits_for_its_start():
    calls = Calls()
    limits, cfg = Limits(Stats(), calls), config()
    child, _ = busy_child(calls)
    limits.cancel(10.0, [child], [(TASK.replace("-", ""), WORKER)], cfg)  # ids compare without dashes
    child.handle_message({"event": "task_finished", "task_id": TASK, "status": "FAILED"}, 10.2)
    limits.enforce(20.0, [child], cfg)
    assert not child.killed and not limits.cancelled
    # A request for a task the child has not reported yet waits, then is dropped.
    other = "1f8fad5b-d9cb-469f-a165-70867728950e"
    limits.cancel(30.0, [child], [(other, WORKER)], cfg)
    assert limits.cancel_requests
    child.handle_message({"event": "task_started", "task_id": other, "path": "app.tasks.long"}, 30.5)
    limits.enforce(30.6, [child], cfg)
    assert len(calls.sent) == 2 and other in limits.cancelled[4242].task.task_id
    limits.cancel(40.0, [child], [("2f8fad5b-d9cb-469f-a165-70867728950e", WORKER)], cfg)
    limits.enforce(40.0 + CANCEL_PATIENCE, [child], cfg)
    assert not limits.cancel_requests


def test_a_cancelled_task_is_never_retried():
    cfg = config_from_dict(
        {
            "django": {"settings": "s"},
            "supervisor": {"node": "n"},
            "pools": {"default": {"retries": {"max_attempts": 5}}},
        },
        Path("config.toml"),
    )
    janitor = Janitor.__new__(Janitor)
    janitor.config, janitor.backends = cfg, {"default": object()}
    import collections

    janitor.pending = collections.deque()
    janitor.workflows = WorkflowSweep(cfg, lambda: 0.0, Stats())  # a failure brings its sweep forward
    janitor.task_failed("default", FailedTask(WORKER, TASK, "app.tasks.long", "task_supervisor.TaskCancelled"))
    assert not janitor.pending
    janitor.task_failed("default", FailedTask(WORKER, TASK, "app.tasks.long", "builtins.ValueError"))
    assert len(janitor.pending) == 1


def test_the_child_raises_task_cancelled_only_in_the_task_it_names():
    read_end, write_end = os.pipe()
    current = CurrentTask()
    channel = ControlChannel(read_end, current)
    current.task_id, current.path = TASK, "app.tasks.long"
    os.write(write_end, b"cancel 1f8fad5b-d9cb-469f-a165-70867728950e\n")
    channel.on_timeout_signal(signal.SIGUSR1, None)  # another task: ignored
    os.write(write_end, f"cancel {TASK}\n".encode())
    with pytest.raises(TaskCancelled, match="cancelled by an operator"):
        channel.on_timeout_signal(signal.SIGUSR1, None)
    assert TaskCancelled.__module__ == "task_supervisor"
