"""What a node tells the fleet with its heartbeat: the queues it serves and its idle children, so
that one node, not every node, wakes a child for each new task (loop/fleet.py)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("task_supervisor", "0006_flow_control"),
    ]

    operations = [
        migrations.AddField(
            model_name="nodeheartbeat",
            name="queues",
            field=models.JSONField(default=list, help_text='The queues its pools serve ("*": every queue).'),
        ),
        migrations.AddField(
            model_name="nodeheartbeat",
            name="idle",
            field=models.IntegerField(default=0, help_text="Its idle worker children at the last heartbeat."),
        ),
    ]
