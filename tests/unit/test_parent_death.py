"""The supervisor's death reaches db_worker as one SIGTERM, however many of its threads die.

The kernel sends the parent-death signal once per exiting thread of the parent (the child is
handed to the next live thread first), and a second SIGTERM makes db_worker abandon its task.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from task_supervisor.worker.run import _die_with_parent

    class Worker:  # db_worker's Command, as far as the handler looks
        running = {running}
        def shutdown(self, signum, frame):
            self.terms += 1
        terms = 0

    worker = Worker()
    _die_with_parent(os.getppid())
    signal.signal(signal.SIGTERM, worker.shutdown)
    for _ in range(3):  # three supervisor threads exiting one after another
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.01)
    print(worker.terms)
    """
)


def forwarded(running: bool) -> int:
    done = subprocess.run(
        [sys.executable, "-c", CHILD.format(running=running)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_three_parent_death_signals_make_one_sigterm():
    assert forwarded(running=True) == 1


def test_none_when_db_worker_already_drains():
    # The supervisor's own SIGTERM came first: a second would abandon the running task.
    assert forwarded(running=False) == 0


def test_a_child_whose_parent_is_already_gone_leaves_at_once():
    code = "import os; from task_supervisor.worker.run import _die_with_parent; _die_with_parent(os.getppid() + 1)"
    done = subprocess.run([sys.executable, "-c", code], timeout=60)
    from task_supervisor.wire.spec import CHILD_EXIT_ORPHANED

    assert done.returncode == CHILD_EXIT_ORPHANED
