"""The supervisor's own tables: node heartbeats, the scheduler's run log, and the operators'
rows (queue pauses, cancel requests, schedule overrides, leases, the audit log)."""

from __future__ import annotations

from django.db import models


class NodeHeartbeat(models.Model):
    """One row per running supervisor, refreshed while it lives.

    Other supervisors treat the RUNNING tasks of a node whose ``last_seen`` is too old as lost.
    """

    node = models.CharField(max_length=64, primary_key=True)
    pid = models.IntegerField()
    pools = models.JSONField(default=list)
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField(db_index=True)
    queues = models.JSONField(default=list, help_text='The queues its pools serve ("*": every queue).')

    class Meta:
        verbose_name = "node heartbeat"

    def __str__(self) -> str:
        return self.node


class ScheduleRun(models.Model):
    """One row per (schedule, slot) enqueued; the unique key makes each slot fire once."""

    schedule = models.CharField(max_length=200)
    slot = models.DateTimeField(help_text="The slot's time, in UTC.")
    task_result_id = models.CharField(max_length=64, blank=True)
    enqueued_at = models.DateTimeField(auto_now_add=True)
    node = models.CharField(max_length=64, blank=True)
    manual = models.BooleanField(default=False, help_text="Run now by an operator, not a slot of the schedule.")

    class Meta:
        verbose_name = "schedule run"
        ordering = ["-slot"]
        constraints = [
            models.UniqueConstraint(fields=["schedule", "slot"], name="task_supervisor_slot_once"),
        ]
        indexes = [models.Index(fields=["schedule", "-slot"], name="task_supervisor_sched_idx")]

    def __str__(self) -> str:
        return f"{self.schedule} @ {self.slot.isoformat()}"


def _task_result_model() -> type[models.Model] | None:
    """The installed database backend's task result model, whichever package provides it."""
    from django.apps import apps

    if apps.is_installed("django_tasks_db"):
        from django_tasks_db.models import DBTaskResult

        return DBTaskResult
    if apps.is_installed("django_tasks.backends.database"):
        from django_tasks.backends.database.models import DBTaskResult

        return DBTaskResult
    return None


_TaskResult = _task_result_model()

if _TaskResult is not None:

    class TaskAttempts(_TaskResult):  # type: ignore[valid-type,misc]
        """The backend's task rows, seen for attempts: how many, and when the next one runs."""

        class Meta:
            proxy = True
            verbose_name = "task attempts"
            verbose_name_plural = "task attempts"


# -- operating a cluster: rows every supervisor reads (see task_supervisor.ops) ------------------


class QueuePause(models.Model):
    """A paused queue: no child of any node claims from it until the row is deleted."""

    queue = models.CharField(max_length=32, unique=True)
    paused_by = models.CharField(max_length=200)
    since = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "queue pause"
        ordering = ["queue"]

    def __str__(self) -> str:
        return self.queue


class CancelRequest(models.Model):
    """A RUNNING task to stop: the supervisor whose child ``worker_id`` is tells it to."""

    task_id = models.CharField(max_length=64, unique=True)
    worker_id = models.CharField(max_length=64, help_text="The row's last worker id when cancelled.")
    requested_by = models.CharField(max_length=200)
    requested_at = models.DateTimeField(auto_now_add=True)
    handled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "cancel request"
        ordering = ["-requested_at"]
        indexes = [models.Index(fields=["worker_id", "handled_at"], name="task_supervisor_cancel_idx")]

    def __str__(self) -> str:
        return self.task_id


class ScheduleOverride(models.Model):
    """A schedule switched on or off at run time; wins over ``enabled`` in settings until deleted."""

    schedule = models.CharField(max_length=200, unique=True)
    enabled = models.BooleanField()
    changed_by = models.CharField(max_length=200)
    changed_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "schedule override"
        ordering = ["schedule"]

    def __str__(self) -> str:
        return f"{self.schedule}: {'enabled' if self.enabled else 'disabled'}"


class Lease(models.Model):
    """A named lease: one holder at a time, until ``until`` by the database's clock."""

    name = models.CharField(max_length=64, unique=True)
    holder = models.CharField(max_length=200)
    until = models.DateTimeField()

    class Meta:
        verbose_name = "lease"

    def __str__(self) -> str:
        return f"{self.name}: {self.holder}"


class Action(models.Model):
    """The audit log: one row per operator action, from the CLI, the admin or Python."""

    actor = models.CharField(max_length=200)
    verb = models.CharField(max_length=32)
    detail = models.JSONField(default=dict)
    rows = models.IntegerField(default=0)
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = "operator action"
        ordering = ["-at"]
        permissions = [
            ("cancel_task", "Can cancel tasks"),
            ("retry_task", "Can retry tasks"),
            ("pause_queue", "Can pause and resume queues"),
            ("run_schedule", "Can run, disable and enable schedules"),
        ]

    def __str__(self) -> str:
        return f"{self.verb} by {self.actor}"


# -- the dashboard: what each node publishes, and the per-minute figures of its charts -----------


class NodeSnapshot(models.Model):
    """What a supervisor published with its last heartbeat (pools, children, tasks, RSS), bounded.

    Written in the heartbeat's transaction; kept after the node stops (its heartbeat row goes once
    its tasks are recovered), so the dashboard shows stopped nodes with when they were last seen,
    until the retention of figures prunes it.
    """

    node = models.CharField(max_length=64, primary_key=True)
    snapshot = models.JSONField(default=dict)
    last_seen = models.DateTimeField(db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True, help_text="Set by the node at a clean exit.")

    class Meta:
        verbose_name = "node snapshot"
        ordering = ["node"]

    def __str__(self) -> str:
        return self.node


class MinuteFigures(models.Model):
    """One minute of one queue, cluster-wide, recorded by the node holding the ``figures`` lease."""

    minute = models.DateTimeField(help_text="The minute's start, in UTC.")
    queue = models.CharField(max_length=32)
    succeeded = models.IntegerField(default=0)
    failed = models.IntegerField(default=0)
    started = models.IntegerField(default=0, help_text="Tasks started in the minute, whose latency is summed.")
    latency_ms_total = models.BigIntegerField(default=0, help_text="Enqueue to start, summed over started.")
    latency_ms_max = models.IntegerField(default=0)
    ready = models.IntegerField(default=0, help_text="READY tasks at the minute's end.")
    running = models.IntegerField(default=0, help_text="RUNNING tasks at the minute's end.")
    node = models.CharField(max_length=64, help_text="The node that recorded it.")

    class Meta:
        verbose_name = "minute figures"
        verbose_name_plural = "minute figures"
        ordering = ["-minute", "queue"]
        constraints = [models.UniqueConstraint(fields=["minute", "queue"], name="task_supervisor_minute_once")]

    def __str__(self) -> str:
        return f"{self.queue} @ {self.minute.isoformat()}"


class Dashboard(NodeSnapshot):
    """The admin's live dashboard page (no table of its own: its view permission guards the page)."""

    class Meta:
        proxy = True
        verbose_name = "dashboard"
        verbose_name_plural = "dashboard"


# -- flow control: limits per key and unique tasks (worker/flow.py, task_supervisor.unique) ----


class FlowKey(models.Model):
    """One key of a ``[limits."path"]`` declaration: the row its claims lock, in their transaction.

    ``holders`` counts against the concurrency only while their task rows are RUNNING (each claim
    drops the others), so a slot is freed exactly when its row is finished or recovered.
    """

    limit = models.CharField(max_length=200, help_text="The limited task path.")
    key = models.CharField(max_length=250, blank=True, help_text="The key argument's value, as JSON.")
    declared = models.CharField(max_length=200, blank=True, help_text="The limit as last declared, as JSON.")
    holders = models.JSONField(default=list, help_text="Task ids claimed under this key.")
    starts = models.JSONField(default=list, help_text="Claims inside the rate window, in epoch seconds.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "flow limit key"
        ordering = ["limit", "key"]
        constraints = [models.UniqueConstraint(fields=["limit", "key"], name="task_supervisor_flow_key_once")]

    def __str__(self) -> str:
        return f"{self.limit} [{self.key}]" if self.key else self.limit


class UniqueTask(models.Model):
    """The task an ``enqueue_unique`` key stands for, written in the task row's transaction."""

    key = models.CharField(max_length=200, unique=True)
    task_result_id = models.CharField(max_length=64)
    task_path = models.CharField(max_length=200)
    scope = models.CharField(max_length=16, help_text='"ready", "active" or "for".')
    until = models.DateTimeField(null=True, blank=True, help_text='The end of a "for" scope.')
    created_at = models.DateTimeField()

    class Meta:
        verbose_name = "unique task"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.key


# -- workflows: chains, groups and chords of tasks (task_supervisor.workflows) ------------------


class Workflow(models.Model):
    """One enqueued workflow: its steps are ``WorkflowStep`` rows; this row is the lock every
    hand-over of the workflow takes first (select_for_update), so its decisions are serialized."""

    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    STATES = [(s, s.lower()) for s in (RUNNING, SUCCEEDED, FAILED, CANCELLED)]

    id = models.UUIDField(primary_key=True)
    name = models.CharField(max_length=200, blank=True)
    state = models.CharField(max_length=16, choices=STATES, default=RUNNING)
    shape = models.JSONField(default=dict, help_text="The workflow as written, for display.")
    output = models.JSONField(null=True, blank=True, help_text="Which steps' results make the workflow's result.")
    created_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    failed_step = models.CharField(max_length=100, blank=True)
    cancelled_by = models.CharField(max_length=200, blank=True)

    class Meta:
        verbose_name = "workflow"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["state", "-created_at"], name="task_supervisor_wf_state_idx")]

    def __str__(self) -> str:
        return f"{self.name or 'workflow'} {self.id}"


class WorkflowStep(models.Model):
    """One task of a workflow, unique on (workflow, path): it moves PENDING -> ENQUEUED once, in
    the transaction that inserts its task row, and records its outcome from that row's verdict."""

    PENDING = "PENDING"
    ENQUEUED = "ENQUEUED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"  # an error callback the workflow did not need
    STATES = [(s, s.lower()) for s in (PENDING, ENQUEUED, SUCCEEDED, FAILED, CANCELLED, SKIPPED)]

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="steps")
    path = models.CharField(max_length=100, help_text='Its place in the shape: "1.0.2"; "on_error".')
    position = models.IntegerField(help_text="Order of the steps as written.")
    task_path = models.CharField(max_length=200)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    options = models.JSONField(default=dict, help_text="queue_name, priority, backend of the task.")
    after = models.JSONField(default=list, help_text="Paths of the steps that must succeed first.")
    receives = models.JSONField(null=True, blank=True, help_text="Which results it gets as first argument.")
    state = models.CharField(max_length=16, choices=STATES, default=PENDING)
    task_result_id = models.CharField(max_length=64, blank=True, db_index=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "workflow step"
        ordering = ["workflow", "position"]
        constraints = [models.UniqueConstraint(fields=["workflow", "path"], name="task_supervisor_step_once")]
        indexes = [models.Index(fields=["state", "id"], name="task_supervisor_step_state_idx")]

    def __str__(self) -> str:
        return f"{self.path} {self.task_path}"
