"""PostgreSQL only: NOTIFY task_supervisor_ready when a task row becomes READY.

The notice is delivered when the enqueueing transaction commits, and the supervisor wakes one
idle child of a pool serving that queue. The payload carries the row id so that PostgreSQL does
not fold several enqueues of one transaction into a single notice. Other databases keep polling.
"""

from django.db import migrations

FUNCTION = """
CREATE OR REPLACE FUNCTION task_supervisor_notify_ready() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'READY' AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM 'READY') THEN
        PERFORM pg_notify('task_supervisor_ready', json_build_object(
            'q', NEW.queue_name, 'at', extract(epoch FROM NEW.run_after), 'id', NEW.id)::text);
    END IF;
    RETURN NULL;
END $$;
"""


def _table(apps):
    return apps.get_model("django_tasks_database", "DBTaskResult")._meta.db_table


def install(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name(_table(apps))
    schema_editor.execute(FUNCTION)
    schema_editor.execute(f"DROP TRIGGER IF EXISTS task_supervisor_notify_ready ON {table}")
    schema_editor.execute(
        # The status test lives in the function, not in a WHEN clause or a column list, so the
        # backend's own later migrations can still alter those columns.
        f"CREATE TRIGGER task_supervisor_notify_ready AFTER INSERT OR UPDATE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION task_supervisor_notify_ready()"
    )


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name(_table(apps))
    schema_editor.execute(f"DROP TRIGGER IF EXISTS task_supervisor_notify_ready ON {table}")
    schema_editor.execute("DROP FUNCTION IF EXISTS task_supervisor_notify_ready()")


class Migration(migrations.Migration):
    dependencies = [
        ("task_supervisor", "0001_initial"),
        ("django_tasks_database", "__latest__"),
    ]

    operations = [migrations.RunPython(install, uninstall)]
