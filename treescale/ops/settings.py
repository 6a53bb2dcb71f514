"""The ``[notifications]`` and ``[log]`` tables of the topology file.

    [notifications]
    queue_size = 1024            # events waiting per endpoint; past it new ones drop
    max_attempts = 10            # tries of one batch before it is given up (0: no cap)

    [[notifications.endpoint]]
    name = "audit"               # in logs and metric labels; never the URL
    url = "https://hooks.example/registry"
    headers = { Authorization = "Bearer ..." }
    ignore_actions = ["pull"]

    [log]
    format = "json"              # or "text", twistd's own lines
    level = "info"               # the least level written: debug, info, warn, error

Every number is checked against the bounds in its field's metadata, so one table of
fields is both the defaults and the rules. Header values may hold secrets: nothing
here or in the sender ever logs them.
"""

import difflib
import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from treescale.config_error import ConfigError

ACTIONS = frozenset({"push", "pull", "delete", "mount"})
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")

# Headers the sender sets itself: an endpoint may not replace them.
RESERVED_HEADERS = frozenset({"content-type", "content-length", "host"})

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _bounded(default: Any, low: float, high: float, doc: str) -> Any:
    """A settings field with a default, bounds and the sentence the docs show."""
    return field(default=default, metadata={"bounds": (low, high), "doc": doc})


@dataclass(frozen=True)
class NotificationEndpoint:
    """One receiver of the registry's events."""

    name: str = field(
        metadata={
            "doc": "name in logs and metric labels (never the URL): up to 64 "
            "letters, digits, '.', '_' or '-'"
        }
    )
    url: str = field(metadata={"doc": "http:// or https:// URL events are POSTed to"})
    headers: tuple[tuple[str, str], ...] = field(
        default=(),
        metadata={
            "doc": "extra request headers, a name to a string or a list of strings; "
            "they may hold secrets and are never logged",
            "type": "table of strings",
            "file_default": {},
        },
    )
    timeout: float = _bounded(
        5.0, 0.1, 300.0, "seconds one delivery may take, answer included"
    )
    ignore_actions: frozenset[str] = field(
        default=frozenset(),
        metadata={"doc": "actions not sent: any of push, pull, delete, mount"},
    )
    ignore_media_types: frozenset[str] = field(
        default=frozenset(),
        metadata={"doc": "media types of targets whose events are not sent"},
    )

    def wants(self, action: str, media_type: str) -> bool:
        """Whether this endpoint is sent events of `action` about `media_type`."""
        return (
            action not in self.ignore_actions
            and media_type not in self.ignore_media_types
        )


@dataclass(frozen=True)
class NotificationSettings:
    """Where events go, and how hard the sender tries."""

    endpoints: tuple[NotificationEndpoint, ...] = field(
        default=(),
        metadata={
            "doc": "receivers of the registry's events: see [[notifications.endpoint]]",
            "key": "endpoint",
            "type": "array of tables",
        },
    )
    queue_size: int = _bounded(
        1024, 1, 1_000_000, "events waiting per endpoint; past it new events drop"
    )
    max_batch: int = _bounded(16, 1, 1000, "most events one delivery carries")
    max_attempts: int = _bounded(
        10, 0, 1_000_000, "tries of one delivery before it is given up; 0 for no cap"
    )
    backoff_initial: float = _bounded(
        1.0, 0.01, 3600.0, "seconds before the first retry"
    )
    backoff_max: float = _bounded(
        60.0, 0.01, 86400.0, "longest wait between retries, before jitter"
    )
    backoff_factor: float = _bounded(
        2.0, 1.0, 10.0, "how much longer each retry waits than the one before"
    )


@dataclass(frozen=True)
class LogSettings:
    """How a node writes its log."""

    format: str = field(
        default="text",
        metadata={
            "doc": '"text": twistd\'s own lines; "json": one JSON object per event, '
            "in the same --logfile"
        },
    )
    level: str = field(
        default="info",
        metadata={
            "doc": "the least level written, one of "
            '"debug", "info", "warn", "error", "critical"; "debug" adds a line '
            "per chunk a caching relay fetches and per TLS probe on the HTTP port"
        },
    )


def parse_notifications(table: Mapping[str, Any], source: Path) -> NotificationSettings:
    """The settings of a ``[notifications]`` table, checked."""
    _check_table(table, "notifications", source)
    endpoints = table.get("endpoint", [])
    if not isinstance(endpoints, list):
        raise ConfigError(
            source, None, "notifications.endpoint", "an array of [[tables]]"
        )

    allowed = _field_names(NotificationSettings) - {"endpoints"} | {"endpoint"}
    _check_known(table, allowed, "notifications", source)
    values = _numbers(table, NotificationSettings, "notifications", source)
    parsed = tuple(
        _endpoint(entry, f"notifications.endpoint[{index}]", source)
        for index, entry in enumerate(endpoints)
    )
    _check_unique(parsed, source)
    settings = NotificationSettings(endpoints=parsed, **values)
    if settings.backoff_max < settings.backoff_initial:
        raise ConfigError(
            source,
            None,
            "notifications.backoff_max",
            f"{settings.backoff_max} is less than backoff_initial "
            f"({settings.backoff_initial})",
        )
    return settings


def parse_log(table: Mapping[str, Any], source: Path) -> LogSettings:
    """The settings of a ``[log]`` table, checked."""
    _check_table(table, "log", source)
    _check_known(table, _field_names(LogSettings), "log", source)
    chosen = _one_of(table, "format", LOG_FORMATS, source)
    level = _one_of(table, "level", LOG_LEVELS, source)
    return LogSettings(format=chosen, level=level)


def _one_of(
    table: Mapping[str, Any], name: str, choices: tuple[str, ...], source: Path
) -> str:
    """The ``[log]`` field `name`, which must be one of `choices` (its default
    when absent)."""
    value = table.get(name, getattr(LogSettings, name))
    if value not in choices:
        raise ConfigError(
            source, None, f"log.{name}", f"{value!r} is not one of {choices}"
        )
    return str(value)


def _endpoint(entry: object, where: str, source: Path) -> NotificationEndpoint:
    """One ``[[notifications.endpoint]]`` table, checked."""
    _check_table(entry, where, source)
    assert isinstance(entry, Mapping)
    _check_known(entry, _field_names(NotificationEndpoint), where, source)
    name = _required_string(entry, "name", where, source)
    if not _NAME.fullmatch(name):
        why = "up to 64 letters, digits, '.', '_' or '-'"
        raise ConfigError(source, None, f"{where}.name", why)

    actions = _strings(entry, "ignore_actions", where, source)
    unknown = sorted(set(actions) - ACTIONS)
    if unknown:
        raise ConfigError(
            source,
            None,
            f"{where}.ignore_actions",
            f"{unknown} not among {sorted(ACTIONS)}",
        )

    numbers = _numbers(entry, NotificationEndpoint, where, source)
    return NotificationEndpoint(
        name=name,
        url=_url(_required_string(entry, "url", where, source), where, source),
        headers=_headers(entry.get("headers", {}), f"{where}.headers", source),
        ignore_actions=frozenset(actions),
        ignore_media_types=frozenset(
            _strings(entry, "ignore_media_types", where, source)
        ),
        **numbers,
    )


def _url(text: str, where: str, source: Path) -> str:
    """An http or https URL with a host and a port in range."""
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError as e:
        why = "the port is not in 1..65535"
        raise ConfigError(source, None, f"{where}.url", why) from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            source, None, f"{where}.url", "an http:// or https:// URL with a host"
        )
    if port == 0:
        raise ConfigError(source, None, f"{where}.url", "port 0 cannot be dialled")
    return text


def _headers(table: object, where: str, source: Path) -> tuple[tuple[str, str], ...]:
    """Extra request headers: a name to a string, or to a list of strings."""
    if not isinstance(table, Mapping):
        raise ConfigError(source, None, where, "a table of header names to values")

    headers = []
    for name, value in table.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ConfigError(source, None, f"{where}.{name}", "not a header name")
        if name.lower() in RESERVED_HEADERS:
            raise ConfigError(source, None, f"{where}.{name}", "set by treescale")
        values = value if isinstance(value, list) else [value]
        for one in values:
            if not isinstance(one, str) or any(c in one for c in "\r\n\0"):
                raise ConfigError(
                    source, None, f"{where}.{name}", "strings of one line each"
                )
            headers.append((name, one))
    return tuple(headers)


def _check_unique(endpoints: tuple[NotificationEndpoint, ...], source: Path) -> None:
    seen: set[str] = set()
    for index, endpoint in enumerate(endpoints):
        if endpoint.name in seen:
            raise ConfigError(
                source,
                None,
                f"notifications.endpoint[{index}].name",
                f"{endpoint.name!r} appears twice",
            )
        seen.add(endpoint.name)


def _check_table(value: object, where: str, source: Path) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(source, None, where, "must be a table")


def _field_names(kind: type) -> set[str]:
    return {spec.name for spec in fields(kind)}


def _check_known(
    table: Mapping[str, Any], known: set[str], where: str, source: Path
) -> None:
    """Refuse a field the settings do not have, naming the closest one."""
    for name in sorted(set(table) - known):
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(source, None, f"{where}.{name}", f"unknown field{hint}")


def _numbers(
    table: Mapping[str, Any], kind: type, where: str, source: Path
) -> dict[str, Any]:
    """The bounded numeric fields of `kind` that the table sets, checked."""
    values = {}
    for spec in fields(kind):
        if "bounds" not in spec.metadata or spec.name not in table:
            continue
        assert spec.default is not MISSING
        values[spec.name] = _number(
            table[spec.name],
            spec.default,
            spec.metadata["bounds"],
            where,
            spec.name,
            source,
        )
    return values


def _number(
    value: object,
    default: object,
    bounds: tuple[float, float],
    where: str,
    name: str,
    source: Path,
) -> int | float:
    """One number, of its default's type and within its bounds."""
    field_name = f"{where}.{name}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(source, None, field_name, f"must be a number, not {value!r}")
    if isinstance(default, int) and not isinstance(value, int):
        raise ConfigError(
            source, None, field_name, f"must be a whole number, not {value}"
        )

    low, high = bounds
    if not low <= value <= high:
        raise ConfigError(source, None, field_name, f"{value} is not in {low}..{high}")
    return float(value) if isinstance(default, float) else value


def _required_string(
    table: Mapping[str, Any], name: str, where: str, source: Path
) -> str:
    value = table.get(name)
    if not isinstance(value, str) or not value:
        raise ConfigError(source, None, f"{where}.{name}", "a non-empty string")
    return value


def _strings(
    table: Mapping[str, Any], name: str, where: str, source: Path
) -> list[str]:
    value = table.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(source, None, f"{where}.{name}", "a list of strings")
    return list(value)
