"""The test project's app config: a receiver that opens the window workflows must survive."""

import os

from django.apps import AppConfig


class TsappConfig(AppConfig):
    name = "tsapp"

    def ready(self):
        from django_tasks_db.compat import task_finished

        # Connected at set-up, so before the supervisor's own receivers in every child.
        task_finished.connect(die_after_verdict, dispatch_uid="tsapp_die_after_verdict")


def die_after_verdict(sender, task_result, **kwargs):
    """After ``tasks.die_after_verdict``'s row is written SUCCESSFUL, its child dies at once, the
    first time (a marker file says it happened): before any hand-over of a workflow step."""
    if getattr(task_result.task, "module_path", "") != "tsapp.tasks.die_after_verdict":
        return
    marker = task_result.args[0]
    if not os.path.exists(marker):
        with open(marker, "w") as out:
            out.write(str(os.getpid()))
        os._exit(9)
