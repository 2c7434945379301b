"""The backoff function and exception matching, with a fake random source."""

from __future__ import annotations

import random

from task_supervisor.chores.retry import matches, problems, retry_delay
from task_supervisor.config import RetryPolicy


class Top(random.Random):
    """Jitter always draws the top of its range."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_exponential_backoff_doubles_up_to_max_delay():
    policy = RetryPolicy(max_attempts=10, backoff="exponential", delay=10, max_delay=60, jitter=False)
    assert [retry_delay(policy, n, random.Random()) for n in range(1, 6)] == [10, 20, 40, 60, 60]


def test_fixed_backoff():
    policy = RetryPolicy(backoff="fixed", delay=5, jitter=False)
    assert {retry_delay(policy, n, random.Random()) for n in range(1, 6)} == {5}


def test_jitter_stays_in_the_upper_half():
    policy = RetryPolicy(backoff="exponential", delay=8, max_delay=1000, jitter=True)
    rng = random.Random(7)
    for attempt in range(1, 6):
        full = 8 * 2 ** (attempt - 1)
        delays = [retry_delay(policy, attempt, rng) for _ in range(100)]
        assert all(full / 2 <= d <= full for d in delays)
    assert retry_delay(policy, 3, Top()) == 32


def test_matching_by_path_builtin_name_and_subclass():
    assert matches(RetryPolicy(on=()), "anything.AtAll")
    policy = RetryPolicy(on=("smtplib.SMTPException", "ConnectionError"))
    assert matches(policy, "smtplib.SMTPException")
    assert matches(policy, "smtplib.SMTPServerDisconnected")  # a subclass
    assert matches(policy, "builtins.ConnectionRefusedError")  # a subclass of a builtin
    assert not matches(policy, "builtins.ValueError")
    assert matches(RetryPolicy(on=("task_supervisor.WorkerLost",)), "task_supervisor.WorkerLost")
    assert not matches(RetryPolicy(on=("task_supervisor.WorkerLost",)), "task_supervisor.TaskTimeout")


def test_problems_name_bad_paths_and_non_exceptions():
    found = problems(
        {
            "no.such.task": RetryPolicy(),
            "json.dumps": RetryPolicy(on=("os.path", "NoSuchError", "ValueError")),
        },
        task_class=type("Task", (), {}),
    )
    assert found[0].startswith('retries."no.such.task": the task does not import')
    assert found[1] == 'retries."json.dumps" is not a task (decorate it with @task).'
    assert "entry 'os.path' is not an exception class" in found[2]
    assert "entry 'NoSuchError' is not an exception class" in found[3]
    assert len(found) == 4
