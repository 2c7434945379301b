"""Workflows: a Workflow row (the lock of its hand-overs) and one WorkflowStep row per step, unique on
(workflow, path). Depends on 0006 for now: the merge with a 0007 of another branch fixes the chain."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("task_supervisor", "0007_fleet"),
    ]

    operations = [
        migrations.CreateModel(
            name="Workflow",
            fields=[
                ("id", models.UUIDField(primary_key=True, serialize=False)),
                ("name", models.CharField(blank=True, max_length=200)),
                (
                    "state",
                    models.CharField(
                        choices=[
                            ("RUNNING", "running"),
                            ("SUCCEEDED", "succeeded"),
                            ("FAILED", "failed"),
                            ("CANCELLED", "cancelled"),
                        ],
                        default="RUNNING",
                        max_length=16,
                    ),
                ),
                ("shape", models.JSONField(default=dict, help_text="The workflow as written, for display.")),
                (
                    "output",
                    models.JSONField(
                        blank=True, help_text="Which steps' results make the workflow's result.", null=True
                    ),
                ),
                ("created_at", models.DateTimeField()),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                ("failed_step", models.CharField(blank=True, max_length=100)),
                ("cancelled_by", models.CharField(blank=True, max_length=200)),
            ],
            options={
                "verbose_name": "workflow",
                "ordering": ["-created_at"],
                "indexes": [models.Index(fields=["state", "-created_at"], name="task_supervisor_wf_state_idx")],
            },
        ),
        migrations.CreateModel(
            name="WorkflowStep",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("path", models.CharField(help_text='Its place in the shape: "1.0.2"; "on_error".', max_length=100)),
                ("position", models.IntegerField(help_text="Order of the steps as written.")),
                ("task_path", models.CharField(max_length=200)),
                ("args", models.JSONField(default=list)),
                ("kwargs", models.JSONField(default=dict)),
                ("options", models.JSONField(default=dict, help_text="queue_name, priority, backend of the task.")),
                ("after", models.JSONField(default=list, help_text="Paths of the steps that must succeed first.")),
                (
                    "receives",
                    models.JSONField(blank=True, help_text="Which results it gets as first argument.", null=True),
                ),
                (
                    "state",
                    models.CharField(
                        choices=[
                            ("PENDING", "pending"),
                            ("ENQUEUED", "enqueued"),
                            ("SUCCEEDED", "succeeded"),
                            ("FAILED", "failed"),
                            ("CANCELLED", "cancelled"),
                            ("SKIPPED", "skipped"),
                        ],
                        default="PENDING",
                        max_length=16,
                    ),
                ),
                ("task_result_id", models.CharField(blank=True, db_index=True, max_length=64)),
                ("result", models.JSONField(blank=True, null=True)),
                ("error", models.TextField(blank=True)),
                ("enqueued_at", models.DateTimeField(blank=True, null=True)),
                ("started_at", models.DateTimeField(blank=True, null=True)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                (
                    "workflow",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="steps", to="task_supervisor.workflow"
                    ),
                ),
            ],
            options={
                "verbose_name": "workflow step",
                "ordering": ["workflow", "position"],
                "indexes": [models.Index(fields=["state", "id"], name="task_supervisor_step_state_idx")],
                "constraints": [models.UniqueConstraint(fields=("workflow", "path"), name="task_supervisor_step_once")],
            },
        ),
    ]
