"""The dashboard: node snapshots, per-minute figures, the page's proxy model, and one index on
the backend's task table, (status, finished_at), which the page's RUNNING counts, its latest
FAILED tasks and the per-minute figures of finished tasks read (the backend indexes only READY
rows by status). The index is added to the backend's table by name, as 0002 adds its trigger.
"""

from django.db import migrations, models

TASK_INDEX = models.Index(fields=["status", "finished_at"], name="task_supervisor_status_fin_idx")


def _task_model(apps):
    return apps.get_model("django_tasks_database", "DBTaskResult")


def _has_index(schema_editor, table, name):
    with schema_editor.connection.cursor() as cursor:
        return name in schema_editor.connection.introspection.get_constraints(cursor, table)


def add_task_index(apps, schema_editor):
    model = _task_model(apps)
    if not _has_index(schema_editor, model._meta.db_table, TASK_INDEX.name):
        schema_editor.add_index(model, TASK_INDEX)


def remove_task_index(apps, schema_editor):
    model = _task_model(apps)
    if _has_index(schema_editor, model._meta.db_table, TASK_INDEX.name):
        schema_editor.remove_index(model, TASK_INDEX)


class Migration(migrations.Migration):
    dependencies = [
        ("task_supervisor", "0004_operations"),
        ("django_tasks_database", "__latest__"),
    ]

    operations = [
        migrations.CreateModel(
            name="NodeSnapshot",
            fields=[
                ("node", models.CharField(max_length=64, primary_key=True, serialize=False)),
                ("snapshot", models.JSONField(default=dict)),
                ("last_seen", models.DateTimeField(db_index=True)),
                (
                    "stopped_at",
                    models.DateTimeField(blank=True, help_text="Set by the node at a clean exit.", null=True),
                ),
            ],
            options={
                "verbose_name": "node snapshot",
                "ordering": ["node"],
            },
        ),
        migrations.CreateModel(
            name="MinuteFigures",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("minute", models.DateTimeField(help_text="The minute's start, in UTC.")),
                ("queue", models.CharField(max_length=32)),
                ("succeeded", models.IntegerField(default=0)),
                ("failed", models.IntegerField(default=0)),
                (
                    "started",
                    models.IntegerField(default=0, help_text="Tasks started in the minute, whose latency is summed."),
                ),
                (
                    "latency_ms_total",
                    models.BigIntegerField(default=0, help_text="Enqueue to start, summed over started."),
                ),
                ("latency_ms_max", models.IntegerField(default=0)),
                ("ready", models.IntegerField(default=0, help_text="READY tasks at the minute's end.")),
                ("running", models.IntegerField(default=0, help_text="RUNNING tasks at the minute's end.")),
                ("node", models.CharField(help_text="The node that recorded it.", max_length=64)),
            ],
            options={
                "verbose_name": "minute figures",
                "verbose_name_plural": "minute figures",
                "ordering": ["-minute", "queue"],
                "constraints": [
                    models.UniqueConstraint(fields=("minute", "queue"), name="task_supervisor_minute_once")
                ],
            },
        ),
        migrations.CreateModel(
            name="Dashboard",
            fields=[],
            options={
                "verbose_name": "dashboard",
                "verbose_name_plural": "dashboard",
                "proxy": True,
                "indexes": [],
                "constraints": [],
            },
            bases=("task_supervisor.nodesnapshot",),
        ),
        migrations.RunPython(add_task_index, remove_task_index, atomic=False),  # MySQL: no DDL in a transaction
    ]
