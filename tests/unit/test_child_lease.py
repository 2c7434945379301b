"""The child's end of the lease (worker/control.py), in a forked process of its own: SIGALRM and
the hard stop must not touch the test runner."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from task_supervisor.exceptions import LeaseExpired
from task_supervisor.wire import control, protocol
from task_supervisor.worker.control import ControlChannel, CurrentTask

ALARM = 0.3  # seconds the lease covers tasks in these scenarios


def in_child(scenario: Callable[[ControlChannel, int], int]) -> tuple[int, list[dict]]:
    """Run ``scenario(channel, control_write_fd)`` in a fork; its wait status and its reports."""
    control_r, control_w = os.pipe()
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            os.close(report_r)
            channel = ControlChannel(control_r, CurrentTask(), protocol.Reporter(report_w), leased=True)
            code = scenario(channel, control_w)
        finally:
            os._exit(code)
    os.close(report_w)
    _, status = os.waitpid(pid, 0)
    data = b""
    while chunk := os.read(report_r, 65536):
        data += chunk
    for fd in (report_r, control_r, control_w):
        os.close(fd)
    return status, protocol.Reader(-1).feed(data)


def lease_for(seconds: float) -> float:
    return time.monotonic() + control.LEASE_MARGIN + seconds


def test_no_claim_without_a_lease_and_claims_while_it_holds():
    def scenario(channel: ControlChannel, w: int) -> int:
        before = channel.lease_valid()
        control.send_lease(w, lease_for(5))
        during = channel.lease_valid()
        control.send_lease(w, lease_for(-0.1))
        after = channel.lease_valid()
        return 0 if (before, during, after) == (False, True, False) else 1

    status, _ = in_child(scenario)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_task_past_its_lease_gets_lease_expired_then_the_process_ends():
    def scenario(channel: ControlChannel, w: int) -> int:
        control.send_lease(w, lease_for(ALARM))
        channel.lease_valid()
        channel.current.task_id, channel.current.path = "t1", "app.tasks.stubborn"
        channel.task_started()
        try:
            time.sleep(5)
        except LeaseExpired:
            pass
        else:
            return 1
        while True:  # a task that ignores the notice: the alarm's default action ends us
            time.sleep(0.05)

    started = time.monotonic()
    status, reports = in_child(scenario)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGALRM
    assert time.monotonic() - started >= ALARM + control.LEASE_GRACE - 0.1
    assert [r["event"] for r in reports] == [protocol.LEASE_EXPIRED] and reports[0]["task_id"] == "t1"


def test_a_renewal_that_arrives_during_the_task_keeps_it_running():
    def scenario(channel: ControlChannel, w: int) -> int:
        control.send_lease(w, lease_for(ALARM))
        channel.lease_valid()
        channel.current.task_id = "t2"
        channel.task_started()
        control.send_lease(w, lease_for(10))  # the next heartbeat, read when the alarm fires
        time.sleep(ALARM + control.LEASE_GRACE + 0.3)
        channel.current.task_id = None
        channel.task_finished()
        return 0

    status, reports = in_child(scenario)
    assert os.waitstatus_to_exitcode(status) == 0 and reports == []


def test_a_task_that_stops_when_told_leaves_the_child_alive_and_claiming_nothing():
    def scenario(channel: ControlChannel, w: int) -> int:
        control.send_lease(w, lease_for(ALARM))
        channel.lease_valid()
        channel.current.task_id = "t3"
        channel.task_started()
        try:
            time.sleep(5)
        except LeaseExpired:
            channel.current.task_id = None
            channel.task_finished()  # the hard stop is called off
        time.sleep(control.LEASE_GRACE + 0.3)
        return 0 if not channel.lease_valid() else 1

    status, _ = in_child(scenario)
    assert os.waitstatus_to_exitcode(status) == 0


def test_lease_lost_from_the_supervisor_and_pings():
    def scenario(channel: ControlChannel, w: int) -> int:
        control.send_lease(w, lease_for(60))
        control.send_ping(w, 7)
        channel.lease_valid()  # answers the ping
        channel.current.task_id = "t4"
        channel.task_started()
        control.send_lease_lost(w)
        try:
            channel.on_timeout_signal(control.TIMEOUT_SIGNAL, None)
        except LeaseExpired:
            channel.current.task_id = None
            channel.task_finished()
            return 0
        return 1

    status, reports = in_child(scenario)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [r["event"] for r in reports] == [protocol.PONG, protocol.LEASE_EXPIRED] and reports[0]["seq"] == 7


def test_a_verdict_refused_for_want_of_the_lease_ends_the_child_before_it_reports_the_task_finished():
    from task_supervisor.loop.child import describe_status
    from task_supervisor.wire.spec import CHILD_EXIT_LEASE_LOST

    def scenario(channel: ControlChannel, w: int) -> int:
        control.send_lease(w, lease_for(ALARM))
        channel.lease_valid()
        channel.current.task_id = "t5"
        channel.task_started()
        try:
            time.sleep(5)
        except LeaseExpired:
            pass
        if channel.lease_valid():  # the fence asks before writing the verdict: refused
            return 1
        channel.current.task_id = None
        channel.task_finished()  # does not return: the row is left to recovery
        return 2

    status, reports = in_child(scenario)
    assert os.waitstatus_to_exitcode(status) == CHILD_EXIT_LEASE_LOST
    assert "lease ran out" in describe_status(status)
    assert [r["event"] for r in reports] == [protocol.LEASE_EXPIRED]
