"""What runs inside a worker child: the backend's real db_worker command, reporting to us.

A forked child arrives here straight from the supervisor's ``fork()`` with Django set up; an
exec'd child arrives through ``python -m task_supervisor.worker`` and sets Django up first.
Either way the child hooks the framework's ``task_started`` / ``task_finished`` signals, so the
supervisor knows at every moment which task each child runs, then hands over to db_worker.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import signal
import sys
import time
import traceback
from typing import Any, NoReturn

from task_supervisor.exceptions import one_line
from task_supervisor.wire import protocol
from task_supervisor.wire.spec import (
    CHILD_EXIT_BOOT_FAILED,
    CHILD_EXIT_CRASHED,
    CHILD_EXIT_OK,
    CHILD_EXIT_ORPHANED,
    SCHEDULER,
    ChildSpec,
    WorkerId,
)
from task_supervisor.worker.control import ControlChannel, CurrentTask

_PR_SET_PDEATHSIG = 1
HEALTH_CHECK_EVERY = 1.0  # seconds: a kept connection used more recently is not checked again
_RESET_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD)


def prepare_after_fork(parent_pid: int) -> None:
    """First thing in a new child, before exec or before running the worker in place."""
    # Own process group: a terminal's Ctrl-C reaches the supervisor alone, which then drains us.
    os.setpgid(0, 0)
    signal.set_wakeup_fd(-1)
    for signum in _RESET_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    _die_with_parent(parent_pid)


def _die_with_parent(parent_pid: int) -> None:
    """When the supervisor dies, db_worker gets one SIGTERM: it finishes its task and exits.

    The kernel sends the parent-death signal once per exiting thread of the parent, not once:
    a child is handed to the next live thread of the dying supervisor (its time-box watchdog),
    and signalled again when that one exits. A second SIGTERM makes db_worker abandon the
    running task (``sys.exit(1)`` inside it, written as FAILED). So the death signal is SIGHUP,
    turned into a single SIGTERM by ``_on_parent_death``; until that handler is in place,
    SIGHUP's default action ends the child as SIGTERM's would have.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGHUP, 0, 0, 0)
    signal.signal(signal.SIGHUP, _on_parent_death)
    if os.getppid() != parent_pid:
        os._exit(CHILD_EXIT_ORPHANED)


def _on_parent_death(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the next threads' signals
    # Not when db_worker already drains (the supervisor's own SIGTERM came first): a second
    # SIGTERM would abandon the task.
    worker = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    if getattr(worker, "running", True):
        os.kill(os.getpid(), signal.SIGTERM)


def exec_child(spec: ChildSpec, report_fd: int, control_fd: int) -> NoReturn:
    """Replace this forked process by a fresh interpreter running the same child."""
    os.set_inheritable(report_fd, True)
    os.set_inheritable(control_fd, True)
    argv = [sys.executable, "-m", "task_supervisor.worker", spec.to_json(), str(report_fd), str(control_fd)]
    try:
        os.execv(sys.executable, argv)
    finally:
        os._exit(CHILD_EXIT_BOOT_FAILED)


def run_child(spec: ChildSpec, report_fd: int, control_fd: int) -> NoReturn:
    """Run db_worker in this process until it exits, then leave without running atexit hooks."""
    reporter = protocol.Reporter(report_fd)
    code = CHILD_EXIT_CRASHED
    try:
        if spec.role == SCHEDULER:
            code = _serve_scheduler(spec, reporter, control_fd)
        else:
            code = _serve(spec, reporter, control_fd)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _serve(spec: ChildSpec, reporter: protocol.Reporter, control_fd: int) -> int:
    from task_supervisor import compat
    from task_supervisor.worker import failures, fastpath, fence, flow, proctitle, rowguard, steps

    try:
        backend = compat.resolve(spec.backend)
        if spec.persistent_connections:
            _keep_connections(backend.db_alias)
        _check_database(backend)
    except Exception as exc:  # a boot failure of any kind is reported in one line
        reporter.send(protocol.BOOT_FAILED, reason=_boot_reason(exc))
        return CHILD_EXIT_BOOT_FAILED
    if spec.log_format == "json":
        _json_task_logs(backend)
    channel = ControlChannel(control_fd, CurrentTask(), reporter, leased=spec.leased)
    limits = flow.install(backend, spec.limits, reporter)
    # The pick claims in one statement where nothing else has to share its transaction.
    fast = fastpath.install(backend, claim_as=None if limits else spec.worker_id)
    first = fast.pick.first if fast else None
    rowguard.install(
        backend.model,
        channel.lease_valid,
        pick=limits.pick if limits else None,
        first=first,
        on_empty=lambda: reporter.send(protocol.EMPTY),
    )
    fence.install(
        backend,
        spec.worker_id,
        reporter,
        spec.pool,
        spec.slot,
        lease_valid=channel.lease_valid,
        updates=fast.updates if fast else None,
    )
    _hook_signals(backend, reporter, spec, channel)
    failures.hook(backend, spec)  # Sentry, when the project initialised it
    steps.hook(backend)  # workflows: hand over to the next step right after a step succeeded
    worker_module = importlib.import_module(backend.worker_command)
    channel.install(worker_module)
    if fast is not None and fast.pick.claim_as is not None:
        worker_module.exclusive_transaction = fastpath.no_transaction  # the claim is one statement
    proctitle.set_title(f"task-supervisor: {spec.pool}[{spec.slot}] idle")
    reporter.send(protocol.READY, pid=os.getpid())
    command = worker_module.Command()
    command.run_from_argv(["task-supervisor", "db_worker", *spec.db_worker_argv()])
    return CHILD_EXIT_OK


def _serve_scheduler(spec: ChildSpec, reporter: protocol.Reporter, control_fd: int) -> int:
    from task_supervisor.jsonlog import setup_logging
    from task_supervisor.scheduler import runner

    setup_logging(spec.log_format)  # an exec'd child has no handler yet; a forked one gets the same
    worker_id = WorkerId.parse(spec.worker_id)
    assert worker_id is not None, spec.worker_id
    # Its waits read the control pipe, so the supervisor's pings of an idle child are answered.
    channel = ControlChannel(control_fd, CurrentTask(), reporter)
    return runner.serve(worker_id.node, reporter, channel.sleep)


def _json_task_logs(backend: Any) -> None:
    """db_worker's own lines ("Task id=... state=...") as JSON too, one object per line."""
    import logging

    from task_supervisor import jsonlog

    for name in (backend.framework, backend.package, "django_tasks", "django_tasks_db"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [jsonlog.handler(sys.stderr, "json")]
        logger.propagate = False
        logger.setLevel(logging.INFO)


def _keep_connections(alias: str) -> None:
    """A child is long-lived: keep its connection across tasks, checked before reuse.

    db_worker closes and reopens the connection around every task under Django's default
    CONN_MAX_AGE = 0; on PostgreSQL that costs more than a short task itself.
    """
    from django.db import connections

    connection = connections[alias]
    connection.settings_dict.update(CONN_MAX_AGE=None, CONN_HEALTH_CHECKS=True)
    _health_check_at_most_every(connection, HEALTH_CHECK_EVERY)


def _health_check_at_most_every(connection: Any, seconds: float) -> None:
    """Django checks a kept connection (``SELECT 1``, a round trip) before the first query of each
    "request": for db_worker, every task. A child that finishes a task and claims the next within
    ``seconds`` has just used the connection; the check is skipped then, and made on the first
    query after ``seconds`` (so always after an idle poll interval of that length or longer). A
    connection lost inside that window fails the claim's query instead, which rolls back with
    nothing claimed, and the child is restarted, as when a connection drops during a query.
    """
    check = connection.close_if_health_check_failed
    checked_at = [float("-inf")]

    def close_if_health_check_failed() -> None:
        now = time.monotonic()
        if now - checked_at[0] < seconds and connection.connection is not None:
            connection.health_check_done = True
            return
        check()
        checked_at[0] = now

    connection.close_if_health_check_failed = close_if_health_check_failed


def _check_database(backend: Any) -> None:
    from django.db import connections

    connections[backend.db_alias].ensure_connection()


def _boot_reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(exc)}"[:500]


def _hook_signals(backend: Any, reporter: protocol.Reporter, spec: ChildSpec, channel: ControlChannel) -> None:
    from task_supervisor.worker import proctitle

    current = channel.current

    def started(sender: Any, task_result: Any, **kwargs: Any) -> None:
        path = _task_path(task_result)
        current.task_id, current.path = str(task_result.id), path
        reporter.send(protocol.TASK_STARTED, task_id=str(task_result.id), path=path)
        channel.task_started()
        proctitle.set_title(f"task-supervisor: {spec.pool}[{spec.slot}] {path} {task_result.id}")

    def finished(sender: Any, task_result: Any, **kwargs: Any) -> None:
        status = getattr(task_result.status, "value", task_result.status)
        current.task_id = None
        channel.task_finished()
        reporter.send(
            protocol.TASK_FINISHED,
            task_id=str(task_result.id),
            status=str(status),
            exception=_exception_path(task_result),
        )
        proctitle.set_title(f"task-supervisor: {spec.pool}[{spec.slot}] idle")

    # weak=False: the receivers are closures that nothing else keeps alive.
    backend.signals.task_started.connect(started, weak=False, dispatch_uid="task_supervisor_started")
    backend.signals.task_finished.connect(finished, weak=False, dispatch_uid="task_supervisor_finished")


def _exception_path(task_result: Any) -> str:
    errors = getattr(task_result, "errors", None) or []
    return str(getattr(errors[-1], "exception_class_path", "")) if errors else ""


def _task_path(task_result: Any) -> str:
    task = getattr(task_result, "task", None)
    return str(getattr(task, "module_path", "") or getattr(task, "name", ""))


def main(argv: list[str]) -> NoReturn:
    """Entry point of an exec'd child: ``python -m task_supervisor.worker SPEC REPORT_FD``."""
    spec, report_fd, control_fd = ChildSpec.from_json(argv[0]), int(argv[1]), int(argv[2])
    reporter = protocol.Reporter(report_fd)
    _die_with_parent(spec.parent_pid)
    try:
        sys.path[:0] = list(spec.pythonpath)
        os.environ["DJANGO_SETTINGS_MODULE"] = spec.settings
        import django

        django.setup()
    except Exception as exc:
        reporter.send(protocol.BOOT_FAILED, reason=_boot_reason(exc))
        os._exit(CHILD_EXIT_BOOT_FAILED)
    run_child(spec, report_fd, control_fd)
