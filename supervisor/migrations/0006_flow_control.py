"""Flow control: a row per limit key (locked by each claim of that key) and a row per unique key."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("task_supervisor", "0005_dashboard")]

    operations = [
        migrations.CreateModel(
            name="FlowKey",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("limit", models.CharField(help_text="The limited task path.", max_length=200)),
                (
                    "key",
                    models.CharField(blank=True, help_text="The key argument's value, as JSON.", max_length=250),
                ),
                (
                    "declared",
                    models.CharField(blank=True, help_text="The limit as last declared, as JSON.", max_length=200),
                ),
                ("holders", models.JSONField(default=list, help_text="Task ids claimed under this key.")),
                (
                    "starts",
                    models.JSONField(default=list, help_text="Claims inside the rate window, in epoch seconds."),
                ),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={
                "verbose_name": "flow limit key",
                "ordering": ["limit", "key"],
                "constraints": [models.UniqueConstraint(fields=("limit", "key"), name="task_supervisor_flow_key_once")],
            },
        ),
        migrations.CreateModel(
            name="UniqueTask",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("key", models.CharField(max_length=200, unique=True)),
                ("task_result_id", models.CharField(max_length=64)),
                ("task_path", models.CharField(max_length=200)),
                ("scope", models.CharField(help_text='"ready", "active" or "for".', max_length=16)),
                (
                    "until",
                    models.DateTimeField(blank=True, help_text='The end of a "for" scope.', null=True),
                ),
                ("created_at", models.DateTimeField()),
            ],
            options={"verbose_name": "unique task", "ordering": ["-created_at"]},
        ),
    ]
