"""The test project's app: its tasks, and a system check that a test can make fail."""

import os

from django.core import checks


@checks.register()
def check_on_request(app_configs=None, **kwargs):
    if os.environ.get("TS_FAIL_CHECK"):
        return [checks.Error("TS_FAIL_CHECK is set in the environment.", id="tsapp.E001")]
    return []
