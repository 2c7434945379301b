"""The test project with Sentry initialised as a project would, sending to a local transport that
appends each event, as one JSON line, to the file named by TS_SENTRY_EVENTS (no network)."""

import json
import logging
import os

import sentry_sdk
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.transport import Transport

from tsproject.settings import *  # noqa: F403


class FileTransport(Transport):
    def capture_envelope(self, envelope):  # type: ignore[no-untyped-def]
        for item in envelope.items:
            if item.type != "event":
                continue
            event = item.payload.json
            values = (event.get("exception") or {}).get("values") or [{}]
            line = {
                "pid": os.getpid(),
                "tags": event.get("tags") or {},
                "logger": event.get("logger"),
                "message": (event.get("logentry") or {}).get("message") or event.get("message"),
                "exception": values[-1].get("type"),
                "frames": len((values[-1].get("stacktrace") or {}).get("frames") or []),
            }
            with open(os.environ["TS_SENTRY_EVENTS"], "a") as out:
                out.write(json.dumps(line) + "\n")


# ERROR lines as events too (sentry-sdk 2's default; 3 makes it opt-in): the supervisor must not let
# the log lines about a failure repeat its report.
sentry_sdk.init(
    dsn="http://public@127.0.0.1:9/1",
    transport=FileTransport,
    integrations=[LoggingIntegration(level=None, event_level=logging.ERROR)],
)
