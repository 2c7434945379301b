import time

from django_tasks import task


@task
def greet_user(name):
    """Simple task that creates a greeting"""
    time.sleep(0.5)  # Brief delay
    return f"Hello, {name}! Task completed successfully."
