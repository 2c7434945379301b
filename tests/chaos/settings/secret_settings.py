"""The test project's settings plus a database password, to prove the supervisor never prints it.

PostgreSQL on the test machines trusts 127.0.0.1, so the password is sent and ignored.
"""

import os

from tsproject.settings import *  # noqa: F403
from tsproject.settings import DATABASES

DATABASES["default"]["PASSWORD"] = os.environ["TS_DB_PASSWORD"]
