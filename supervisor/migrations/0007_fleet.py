"""What a node tells the fleet with its heartbeat: the queues it serves, so that one node, not
every node, wakes a child for each new task (loop/fleet.py)."""

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
    ]
