"""The log as JSON lines: one object per twisted.logger event, with stable keys.

    {"time": "2026-12-04T17:27:01.509Z", "level": "info",
     "namespace": "treescale.registry.pushes.Pushes",
     "message": "upload of sha256:55... into lib/app complete: 138 bytes in 0.01 s",
     "digest": "sha256:55...", "repo": "lib/app", "nbytes": 138, "elapsed": 0.01}

Every line has ``time`` (UTC, milliseconds), ``level``, ``namespace`` and
``message`` (the event's format filled in, as the text log shows it); ``system``
when the event has one; ``failure`` (``type``, ``message``, ``traceback``) when it
carries one. Then come the event's own fields under the names the code logs them
with: ``relay``, ``repo``, ``digest``, ``nbytes``, ``elapsed`` ... Twisted's
``log_*`` keys are left out, and so are the raw keys of events from the legacy
``twisted.python.log`` API. A field named like one of the keys above is written as
``field_<name>``, so those keys always mean the same thing. A value JSON cannot
hold is written as its ``str``.

`treescale.ops.logsetup` hands twistd a `JsonLineObserver` when ``[log] format``
is ``"json"``.
"""

import datetime
import json
import math
from collections.abc import Mapping
from typing import IO, Any

from twisted.logger import ILogObserver, LogEvent, formatEvent
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from zope.interface import implementer

RESERVED = ("time", "level", "namespace", "system", "message", "failure")

# Keys the legacy API (twisted.python.log.msg, twisted.web's access log) puts on
# its events beside the new ones; their content is already in "message".
LEGACY_KEYS = frozenset(
    {"message", "isError", "system", "time", "format", "why", "failure", "printed"}
)
LEGACY_NAMESPACE = "log_legacy"


def json_line(event: LogEvent) -> str:
    """One event as one line of JSON, without the newline."""
    line: dict[str, Any] = {
        "time": _time(event.get("log_time")),
        "level": _level(event),
        "namespace": str(event.get("log_namespace", "")),
    }
    system = event.get("log_system")
    if system and system != "-":
        line["system"] = str(system)
    line["message"] = formatEvent(event)
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        line["failure"] = _failure(failure)

    for name, value in _fields(event).items():
        key = f"field_{name}" if name in RESERVED else name
        line[key] = _plain(value)
    return json.dumps(line, separators=(",", ":"), allow_nan=False)


def _fields(event: LogEvent) -> Mapping[str, object]:
    """The event's own fields: not Twisted's, nor the legacy API's."""
    legacy = event.get("log_namespace") == LEGACY_NAMESPACE or "isError" in event
    return {
        name: value
        for name, value in event.items()
        if isinstance(name, str)
        and not name.startswith("log_")
        and not (legacy and name in LEGACY_KEYS)
    }


def _time(when: object) -> str | None:
    if not isinstance(when, int | float):
        return None
    moment = datetime.datetime.fromtimestamp(when, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _level(event: LogEvent) -> str:
    level = event.get("log_level")
    return str(getattr(level, "name", "info"))


def _failure(failure: Failure) -> dict[str, str]:
    kind = failure.type
    name = getattr(kind, "__qualname__", str(kind))
    module = getattr(kind, "__module__", "")
    return {
        "type": f"{module}.{name}" if module and module != "builtins" else name,
        "message": str(failure.value),
        "traceback": failure.getTraceback(),
    }


def _plain(value: object) -> object:
    """A value JSON can hold: the value itself when it can, else its text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return str(value)
    return value


@implementer(ILogObserver)
class JsonLineObserver:
    """Writes each event it is given as one JSON line to a text stream."""

    def __init__(self, output: IO[str] | LogFile) -> None:
        self.output = output

    def __call__(self, event: LogEvent) -> None:
        self.output.write(json_line(event) + "\n")
        self.output.flush()
