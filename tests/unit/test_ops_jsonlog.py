"""Tests of the JSON-lines log: its keys and its values."""

# Twisted's test helpers carry no annotations yet.
# mypy: disable-error-code="no-untyped-call"

import io
import json
import math
from typing import Any

from twisted.logger import LogEvent, Logger, LogLevel
from twisted.logger._legacy import publishToNewObserver
from twisted.python import log as legacy_log
from twisted.python.failure import Failure

from treescale.ops.jsonlog import JsonLineObserver, json_line


class Relay:
    """Something that logs the way treescale's classes do."""

    log = Logger()


def logged(emit: Any) -> list[dict[str, Any]]:
    """The JSON objects a JsonLineObserver writes for what `emit` logs."""
    output = io.StringIO()
    observer = JsonLineObserver(output)
    emit(Logger(namespace="treescale.store.relay.Relay", observer=observer))
    text = output.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_an_event_has_the_stable_keys_then_its_fields() -> None:
    """time, level, namespace, message, then every field under its own name."""
    (line,) = logged(
        lambda log: log.info(
            "chunk {digest} stored: {nbytes} bytes in {elapsed} s",
            digest="sha256:ab",
            nbytes=4096,
            elapsed=0.25,
            relay="relay-a",
        )
    )
    assert list(line)[:4] == ["time", "level", "namespace", "message"]
    assert line["level"] == "info"
    assert line["namespace"] == "treescale.store.relay.Relay"
    assert line["message"] == "chunk sha256:ab stored: 4096 bytes in 0.25 s"
    assert line["digest"] == "sha256:ab"
    assert line["nbytes"] == 4096
    assert line["elapsed"] == 0.25
    assert line["relay"] == "relay-a"
    assert line["time"].endswith("Z") and "T" in line["time"]
    assert not any(key.startswith("log_") for key in line)


def test_levels_are_named() -> None:
    """Each level is written by its name."""
    lines = logged(
        lambda log: [
            log.debug("d"),
            log.warn("w"),
            log.error("e"),
            log.critical("c"),
        ]
    )
    assert [line["level"] for line in lines] == ["debug", "warn", "error", "critical"]


def test_a_failure_is_its_own_object() -> None:
    """A logged failure gives its type, message and traceback under "failure"."""
    try:
        raise ValueError("bad recipe")
    except ValueError:
        failure = Failure()

    (line,) = logged(lambda log: log.failure("recipe of {digest}", failure, digest="d"))
    assert line["level"] == "critical"
    assert line["message"] == "recipe of d"
    assert line["failure"]["type"] == "ValueError"
    assert line["failure"]["message"] == "bad recipe"
    assert "Traceback" in line["failure"]["traceback"]
    assert "bad recipe" in line["failure"]["traceback"]


def test_a_field_named_like_a_key_is_renamed() -> None:
    """A field called "message" or "time" cannot replace the line's own keys."""
    (line,) = logged(
        lambda log: log.info("hi", message="theirs", time=3, namespace="x")
    )
    assert line["message"] == "hi"
    assert line["field_message"] == "theirs"
    assert line["field_time"] == 3
    assert line["field_namespace"] == "x"
    assert line["namespace"] == "treescale.store.relay.Relay"


def test_values_json_cannot_hold_become_text() -> None:
    """Bytes are decoded, objects and non-finite numbers written as text."""

    class Thing:
        def __str__(self) -> str:
            return "a thing"

    (line,) = logged(
        lambda log: log.info(
            "x",
            raw=b"caf\xc3\xa9 \xff",
            thing=Thing(),
            ratio=math.nan,
            nested={"a": [1, 2]},
            peers=("a", "b"),
        )
    )
    assert line["raw"] == "café \\xff"
    assert line["thing"] == "a thing"
    assert line["ratio"] == "nan"
    assert line["nested"] == {"a": [1, 2]}
    assert line["peers"] == ["a", "b"]


def test_a_format_that_fails_still_gives_a_line() -> None:
    """An event whose format names a missing field is still one valid line."""
    (line,) = logged(lambda log: log.info("{missing} here"))
    assert "Unable to format event" in line["message"]


def test_legacy_events_keep_only_their_text() -> None:
    """An event of the old log API (twistd's access lines) shows its text once."""
    output = io.StringIO()
    observer = JsonLineObserver(output)
    event: dict[str, Any] = {
        "message": ('"GET /v2/ HTTP/1.1" 200 2',),
        "isError": 0,
        "system": "RegistryChannel,0,127.0.0.1",
        "time": 1_700_000_000.0,
        "printed": 1,
    }
    publishToNewObserver(observer, event, legacy_log.textFromEventDict)
    line = json.loads(output.getvalue())
    assert line["message"] == '"GET /v2/ HTTP/1.1" 200 2'
    assert line["system"] == "RegistryChannel,0,127.0.0.1"
    assert line["level"] == "info"
    assert line["time"] == "2023-11-14T22:13:20.000Z"
    assert set(line) == {"time", "level", "namespace", "system", "message"}


def test_json_line_of_a_bare_event() -> None:
    """An event with no time or level still gives the keys, with nulls."""
    event: LogEvent = {"log_format": "plain", "log_level": LogLevel.warn}
    assert json.loads(json_line(event)) == {
        "time": None,
        "level": "warn",
        "namespace": "",
        "message": "plain",
    }


def test_a_class_logger_names_its_class() -> None:
    """A class-level Logger gives the class's dotted name as the namespace."""
    output = io.StringIO()
    log = Relay().log
    log.observer = JsonLineObserver(output)
    log.info("x")
    assert json.loads(output.getvalue())["namespace"].endswith("test_ops_jsonlog.Relay")
