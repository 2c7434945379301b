from django.core.management.base import BaseCommand
from django_tasks_db.models import DBTaskResult

from demo.tasks import greet, tick


class Command(BaseCommand):
    help = "Enqueue the demo's first tasks (and drop stale ticks of earlier runs)."

    def handle(self, **options) -> None:
        stale = DBTaskResult.objects.filter(task_path="demo.tasks.tick", status="READY").delete()[0]
        for name in ("Ada", "Grace", "Linus", "Guido"):
            greet.enqueue(name)
        tick.enqueue(1)
        self.stdout.write(f"Enqueued 4 greetings and the first tick ({stale} stale ticks removed).")
