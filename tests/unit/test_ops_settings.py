"""Tests of the ``[notifications]`` and ``[log]`` table parsers."""

import tomllib
from pathlib import Path
from typing import Any

import pytest

from treescale.config_error import ConfigError
from treescale.ops.settings import (
    LogSettings,
    NotificationEndpoint,
    NotificationSettings,
    parse_log,
    parse_notifications,
)

SOURCE = Path("topology.toml")


def tables(text: str) -> dict[str, Any]:
    """The tables of a TOML snippet."""
    return tomllib.loads(text)


def test_empty_tables_give_the_defaults() -> None:
    """No fields at all is no endpoint and the documented defaults."""
    assert parse_notifications({}, SOURCE) == NotificationSettings()
    assert parse_log({}, SOURCE) == LogSettings()
    assert NotificationSettings().endpoints == ()
    assert LogSettings().format == "text"


def test_a_full_table_is_read() -> None:
    """Every field of the table and of an endpoint lands in the settings."""
    raw = tables(
        """
        [notifications]
        queue_size = 10
        max_batch = 2
        max_attempts = 0
        backoff_initial = 0.5
        backoff_max = 8
        backoff_factor = 3

        [[notifications.endpoint]]
        name = "audit"
        url = "https://hooks.example:8443/registry?x=1"
        timeout = 2
        headers = { Authorization = "Bearer t", X-Team = ["a", "b"] }
        ignore_actions = ["pull"]
        ignore_media_types = ["application/octet-stream"]

        [[notifications.endpoint]]
        name = "search"
        url = "http://127.0.0.1:9/hook"
        """
    )
    settings = parse_notifications(raw["notifications"], SOURCE)
    assert settings.queue_size == 10
    assert settings.max_batch == 2
    assert settings.max_attempts == 0
    assert settings.backoff_initial == 0.5
    assert settings.backoff_max == 8.0
    assert isinstance(settings.backoff_max, float)
    assert settings.backoff_factor == 3.0
    audit, search = settings.endpoints
    assert audit == NotificationEndpoint(
        name="audit",
        url="https://hooks.example:8443/registry?x=1",
        headers=(("Authorization", "Bearer t"), ("X-Team", "a"), ("X-Team", "b")),
        timeout=2.0,
        ignore_actions=frozenset({"pull"}),
        ignore_media_types=frozenset({"application/octet-stream"}),
    )
    assert search.timeout == NotificationEndpoint("x", "http://x").timeout
    assert search.headers == ()


def test_wants_filters_actions_and_media_types() -> None:
    """An endpoint is sent only the actions and media types it does not ignore."""
    endpoint = NotificationEndpoint(
        "e",
        "http://h/",
        ignore_actions=frozenset({"pull"}),
        ignore_media_types=frozenset({"application/octet-stream"}),
    )
    assert endpoint.wants("push", "application/vnd.oci.image.manifest.v1+json")
    assert not endpoint.wants("pull", "application/vnd.oci.image.manifest.v1+json")
    assert not endpoint.wants("push", "application/octet-stream")


@pytest.mark.parametrize(
    ("text", "field", "why"),
    [
        ("queue_sise = 3", "notifications.queue_sise", "did you mean 'queue_size'"),
        ("queue_size = 0", "notifications.queue_size", "not in 1..1000000"),
        ("queue_size = 1.5", "notifications.queue_size", "whole number"),
        ("queue_size = true", "notifications.queue_size", "must be a number"),
        ("max_batch = 'x'", "notifications.max_batch", "must be a number"),
        ("backoff_initial = 0", "notifications.backoff_initial", "not in"),
        (
            "backoff_initial = 10\nbackoff_max = 5",
            "notifications.backoff_max",
            "less than backoff_initial",
        ),
        ("endpoint = 3", "notifications.endpoint", "array"),
        ("endpoints = []", "notifications.endpoints", "did you mean 'endpoint'"),
    ],
)
def test_bad_table_fields_are_named(text: str, field: str, why: str) -> None:
    """A wrong field of the table is refused with its name and the reason."""
    with pytest.raises(ConfigError) as caught:
        parse_notifications(tables(text), SOURCE)
    assert caught.value.field == field
    assert why in str(caught.value)
    assert str(SOURCE) in str(caught.value)


GOOD = 'name = "e"\nurl = "http://127.0.0.1:9/"\n'


@pytest.mark.parametrize(
    ("text", "field", "why"),
    [
        ('url = "http://h/"', "notifications.endpoint[0].name", "non-empty"),
        ('name = "e"', "notifications.endpoint[0].url", "non-empty"),
        ('name = "a b"\nurl = "http://h/"', "notifications.endpoint[0].name", "64"),
        ('name = "e"\nurl = "ftp://h/"', "notifications.endpoint[0].url", "http"),
        ('name = "e"\nurl = "http:///x"', "notifications.endpoint[0].url", "host"),
        (
            'name = "e"\nurl = "http://h:99999/"',
            "notifications.endpoint[0].url",
            "port",
        ),
        ('name = "e"\nurl = "http://h:0/"', "notifications.endpoint[0].url", "port 0"),
        (GOOD + "timeout = 0", "notifications.endpoint[0].timeout", "not in"),
        (GOOD + "colour = 1", "notifications.endpoint[0].colour", "unknown field"),
        (GOOD + "headers = 3", "notifications.endpoint[0].headers", "a table"),
        (
            GOOD + 'headers = { "Bad Name" = "x" }',
            "notifications.endpoint[0].headers.Bad Name",
            "not a header name",
        ),
        (
            GOOD + 'headers = { Content-Type = "text/plain" }',
            "notifications.endpoint[0].headers.Content-Type",
            "set by treescale",
        ),
        (
            GOOD + 'headers = { X-A = "one\\r\\nX-B: two" }',
            "notifications.endpoint[0].headers.X-A",
            "one line",
        ),
        (
            GOOD + "headers = { X-A = 3 }",
            "notifications.endpoint[0].headers.X-A",
            "one line",
        ),
        (
            GOOD + 'ignore_actions = ["pul"]',
            "notifications.endpoint[0].ignore_actions",
            "not among",
        ),
        (
            GOOD + "ignore_media_types = [1]",
            "notifications.endpoint[0].ignore_media_types",
            "list of strings",
        ),
    ],
)
def test_bad_endpoint_fields_are_named(text: str, field: str, why: str) -> None:
    """A wrong field of an endpoint is refused with its index, name and reason."""
    raw = tables("[[endpoint]]\n" + text)
    with pytest.raises(ConfigError) as caught:
        parse_notifications(raw, SOURCE)
    assert caught.value.field == field
    assert why in str(caught.value)


def test_endpoint_names_are_unique() -> None:
    """Two endpoints of one name are refused: the name labels their metrics."""
    raw = tables("[[endpoint]]\n" + GOOD + "[[endpoint]]\n" + GOOD)
    with pytest.raises(ConfigError) as caught:
        parse_notifications(raw, SOURCE)
    assert caught.value.field == "notifications.endpoint[1].name"
    assert "twice" in str(caught.value)


def test_an_endpoint_must_be_a_table() -> None:
    """An entry of the endpoint array that is not a table is refused."""
    with pytest.raises(ConfigError) as caught:
        parse_notifications({"endpoint": ["http://h/"]}, SOURCE)
    assert caught.value.field == "notifications.endpoint[0]"


def test_log_format_json_is_read() -> None:
    """``format = "json"`` asks for JSON lines."""
    assert parse_log(tables('format = "json"'), SOURCE) == LogSettings("json")


def test_log_level_is_read_and_info_by_default() -> None:
    """``level`` names the least level written; info unless given."""
    assert LogSettings().level == "info"
    assert parse_log(tables('level = "warn"'), SOURCE) == LogSettings("text", "warn")


@pytest.mark.parametrize(
    ("raw", "field", "why"),
    [
        ({"format": "xml"}, "log.format", "not one of"),
        ({"format": 1}, "log.format", "not one of"),
        ({"formt": "json"}, "log.formt", "did you mean 'format'"),
        ({"level": "verbose"}, "log.level", "not one of"),
        ({"level": "INFO"}, "log.level", "not one of"),
    ],
)
def test_bad_log_fields_are_named(raw: dict[str, Any], field: str, why: str) -> None:
    """A wrong ``[log]`` field is refused with its name and the reason."""
    with pytest.raises(ConfigError) as caught:
        parse_log(raw, SOURCE)
    assert caught.value.field == field
    assert why in str(caught.value)


def test_tables_must_be_tables() -> None:
    """A ``notifications`` or ``log`` that is not a table is refused."""
    with pytest.raises(ConfigError) as caught:
        parse_notifications([], SOURCE)  # type: ignore[arg-type]
    assert caught.value.field == "notifications"
    with pytest.raises(ConfigError) as caught:
        parse_log("json", SOURCE)  # type: ignore[arg-type]
    assert caught.value.field == "log"
