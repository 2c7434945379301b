"""Every log event name, one constant each: log pipelines and tests match on these, never on prose.

A record about a child also carries pool, slot and pid; about a task, task_id.
"""

from __future__ import annotations

ACCEPT_FAILED = "accept_failed"
CHILD_KILLED = "child_killed"
CHILD_OVER_MEMORY = "child_over_memory"
CHILD_READY = "child_ready"
CHILD_RECYCLE_MEMORY = "child_recycle_memory"
CHILD_STARTED = "child_started"
DB_ERROR = "db_error"
DEAD_NODE = "dead_node"
DRAIN_STARTED = "drain_started"
ENDPOINT_FAILED = "endpoint_failed"
FORCED_STOP = "forced_stop"
HEARTBEATS_OFF = "heartbeats_off"
HTTP_BIND_FAILED = "http_bind_failed"
LISTEN_CONNECT_FAILED = "listen_connect_failed"
LISTEN_LOST = "listen_lost"
LISTENING = "listening"
LISTEN_NO_TRIGGER = "listen_no_trigger"
LISTEN_DEAF = "listen_deaf"  # the LISTEN connection is up but its probe does not come back
PICKUP_INSTANT = "pickup_instant"  # notices arrive: idle children poll only as a safety net
PICKUP_POLLING = "pickup_polling"  # notices do not (or no longer) arrive: children poll at their interval
LOST_UNRECORDED = "lost_unrecorded"
ORPHAN_REAPED = "orphan_reaped"
POOL_ADDED = "pool_added"
POOL_REMOVED = "pool_removed"
POOL_RESIZED = "pool_resized"
POOL_ROLLED = "pool_rolled"
POOL_SCALED = "pool_scaled"
RELOAD_FAILED = "reload_failed"
RELOAD_PARTIAL = "reload_partial"
RELOADED = "reloaded"
RETRY_EXHAUSTED = "retry_exhausted"
RETRY_SCHEDULED = "retry_scheduled"
SCHEDULE_ERROR = "schedule_error"
SPAWN_FAILED = "spawn_failed"
SUPERVISOR_GAVE_UP = "supervisor_gave_up"
SUPERVISOR_STARTED = "supervisor_started"
SUPERVISOR_STOPPED = "supervisor_stopped"
SYSTEM_CHECK = "system_check"
TASK_LOST = "task_lost"
TASK_LOST_HANDLED = "task_lost_handled"
TASK_STARTED = "task_started"
TASK_TIMEOUT = "task_timeout"
TASK_TIMEOUT_KILL = "task_timeout_kill"
TASK_UNRUNNABLE = "task_unrunnable"

# The scheduler logs one of these per slot it looked at.
SLOT_FIRED = "slot_fired"
SLOT_TAKEN = "slot_taken"
SLOT_OVERLAP = "slot_overlap"
SLOT_MISSED = "slot_missed"

# A child's exit, by ExitReason.
CHILD_STOPPED = "child_stopped"
CHILD_RECYCLED = "child_recycled"
CHILD_BOOT_FAILED = "child_boot_failed"
CHILD_CRASHED = "child_crashed"

# A worker's final write refused: its row was no longer RUNNING under its worker id.
TASK_FENCED = "task_fenced"

# The janitor's sweep found RUNNING rows under a worker id of this node that no live child has.
LOST_ROWS_FOUND = "lost_rows_found"

# Leases and liveness (never twice at once).
LEASE_EXPIRED = "lease_expired"  # a child stopped its task: its lease ran out
LEASE_LOST = "lease_lost"  # the supervisor could not renew its lease in time
LEASE_RENEWED = "lease_renewed"  # held again after it was lost
CHILD_HUNG = "child_hung"  # a child stopped answering, or the OS says it is stopped
CONTROL_SOCKET_IN_USE = "control_socket_in_use"  # another supervisor of this node runs

# Operating a cluster (task_supervisor.ops): one event per operator action, and their effects.
OPERATOR_ACTION = "operator_action"  # fields: verb, actor, rows
TASK_CANCEL_SENT = "task_cancel_sent"  # a supervisor told its child to stop a cancelled task
TASK_CANCEL_KILL = "task_cancel_kill"  # the cancelled task did not stop within kill_after
ROWS_PRUNED = "rows_pruned"  # fields: kind, rows

# Workflows (task_supervisor.workflows): hand-overs from step to step.
WORKFLOW_ENQUEUED = "workflow_enqueued"  # fields: workflow_id, steps
WORKFLOW_STEP_ENQUEUED = "workflow_step_enqueued"  # fields: workflow_id, step
WORKFLOW_FINISHED = "workflow_finished"  # fields: workflow_id, state
WORKFLOW_HANDOVER_FAILED = "workflow_handover_failed"  # the sweep completes it; fields: workflow_id
