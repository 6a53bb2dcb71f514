"""The ``[auth]`` table of the topology file, checked once into frozen values.

`parse_auth` refuses anything it cannot use with a `ConfigError` naming the file
and the field: unknown fields (with a "did you mean"), wrong types, an unknown mode
or action, a missing or unusable htpasswd file, a token lifetime out of bounds, a
trusted issuer's key that does not load, a rule naming an unknown group. Relative
paths are relative to the topology file's folder. The error class lives in
`treescale.config_error` (``treescale.config`` re-exports it), so the topology
parser can call this module without an import cycle.

Every limit is a named setting here. Those the file does not set (the refresh token
lifetime, the clock leeway, the header and scope caps, the login cache) keep their
defaults; a test or an embedding program may set them when building the values.
"""

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treescale.auth.htpasswd import DEFAULT_LOGIN_CACHE, HtpasswdError, read_htpasswd
from treescale.auth.keys import KeyUnusable, load_private_key, load_public_key
from treescale.auth.scopes import ALL, REPOSITORY_ACTIONS
from treescale.config_error import ConfigError

NONE = "none"
BASIC = "basic"
TOKEN = "token"
MODES = (NONE, BASIC, TOKEN)

DEFAULT_REALM = "treescale"
DEFAULT_TOKEN_SERVICE = "treescale"
DEFAULT_TOKEN_ISSUER = "treescale"
DEFAULT_TOKEN_KEY = "token-key.pem"
DEFAULT_TOKEN_TTL = 300
MIN_TOKEN_TTL = 30
MAX_TOKEN_TTL = 86400

DEFAULT_REFRESH_TTL = 30 * 86400
"""How long a refresh token (docker's stored "identity token") lives."""

DEFAULT_LEEWAY = 30
"""Seconds of clock difference forgiven when checking a token's exp and nbf."""

DEFAULT_MAX_AUTHORIZATION = 16 * 1024
"""The longest Authorization header read; longer ones are refused unread."""

DEFAULT_MAX_SCOPES = 64
"""The most scopes one token request may ask for."""

AUTH_FIELDS = frozenset(
    {
        "mode",
        "htpasswd",
        "realm",
        "anonymous_pull",
        "token_service",
        "token_issuer",
        "token_key",
        "token_realm",
        "token_ttl",
        "trusted_issuer",
        "groups",
        "rule",
    }
)
ISSUER_FIELDS = frozenset({"issuer", "public_key"})
RULE_FIELDS = frozenset({"repositories", "users", "groups", "actions"})
RULE_ACTIONS = REPOSITORY_ACTIONS | {ALL}


def _doc(text: str, **more: Any) -> dict[str, Any]:
    """Field metadata: the sentence the configuration reference shows, and more
    facts for it (the field's ``key`` in the file, its ``bounds``, the
    ``file_default`` a table that leaves the field out gets)."""
    return {"doc": text, **more}


@dataclass(frozen=True)
class TrustedIssuer:
    """An external token issuer whose signed tokens are accepted."""

    issuer: str = field(metadata=_doc("the iss claim of that issuer's tokens"))
    public_key: Path = field(
        metadata=_doc(
            "the issuer's public key (PEM), relative to the topology file's folder"
        )
    )


@dataclass(frozen=True)
class Rule:
    """A grant: these users and groups may do these actions on these repositories.

    `actions` holds concrete actions only: a ``"*"`` in the file is expanded.
    """

    repositories: tuple[str, ...] = field(
        metadata=_doc(
            'repository patterns: "*" stays within one path component, "**" '
            "crosses them"
        )
    )
    users: frozenset[str] = field(
        metadata=_doc(
            'user names the rule grants to; "*" is every signed-in user',
            file_default=[],
        )
    )
    groups: frozenset[str] = field(
        metadata=_doc("groups of [auth.groups] the rule grants to", file_default=[])
    )
    actions: frozenset[str] = field(
        metadata=_doc('"pull", "push", "delete", or "*" for all three')
    )


@dataclass(frozen=True)
class AuthSettings:
    """Who may sign in, how, and what each may do; the defaults leave all open."""

    mode: str = field(
        default=NONE,
        metadata=_doc(
            '"none" lets every request in, "basic" checks an HTTP Basic login on '
            'every request, "token" runs the Docker token flow with this node as '
            "token server"
        ),
    )
    htpasswd: Path | None = field(
        default=None,
        metadata=_doc(
            "file of users and bcrypt hashes (htpasswd -B, or treescale htpasswd), "
            "relative to the topology file's folder; required in basic mode, and "
            "in token mode the users the token endpoint signs in"
        ),
    )
    realm: str = field(
        default=DEFAULT_REALM, metadata=_doc("realm named in the Basic challenge")
    )
    anonymous_pull: bool = field(
        default=False,
        metadata=_doc(
            "let requests without credentials pull; pushes and deletes still need "
            "a login"
        ),
    )
    token_service: str = field(
        default=DEFAULT_TOKEN_SERVICE,
        metadata=_doc(
            "service named in the Bearer challenge, and the audience tokens must carry"
        ),
    )
    token_issuer: str = field(
        default=DEFAULT_TOKEN_ISSUER,
        metadata=_doc("issuer named in the tokens this node signs"),
    )
    token_key: Path = field(
        default=Path(DEFAULT_TOKEN_KEY),
        metadata=_doc(
            "this node's ES256 signing key (PEM), relative to the topology file's "
            "folder; created when missing"
        ),
    )
    token_realm: str = field(
        default="",
        metadata=_doc(
            "URL of the token server named in the Bearer challenge; empty: this "
            "node's own /token endpoint"
        ),
    )
    token_ttl: int = field(
        default=DEFAULT_TOKEN_TTL,
        metadata=_doc(
            "seconds a token this node issues is valid",
            bounds=(MIN_TOKEN_TTL, MAX_TOKEN_TTL),
        ),
    )
    trusted_issuers: tuple[TrustedIssuer, ...] = field(
        default=(),
        metadata=_doc(
            "external issuers whose tokens are accepted: see [[auth.trusted_issuer]]",
            key="trusted_issuer",
            type="array of tables",
        ),
    )
    groups: Mapping[str, frozenset[str]] = field(
        default_factory=dict,
        metadata=_doc(
            "group names, each with a list of user names",
            type="table of lists of strings",
        ),
    )
    rules: tuple[Rule, ...] = field(
        default=(),
        metadata=_doc(
            "who may do what: see [[auth.rule]]; with no rule at all, every "
            "signed-in user may pull, push and delete everything",
            key="rule",
            type="array of tables",
        ),
    )
    refresh_ttl: int = field(
        default=DEFAULT_REFRESH_TTL,
        metadata=_doc(
            "seconds a refresh token (docker's stored identity token) is valid"
        ),
    )
    leeway: int = field(
        default=DEFAULT_LEEWAY,
        metadata=_doc(
            "seconds of clock difference forgiven when checking a token's exp and nbf"
        ),
    )
    max_authorization: int = field(
        default=DEFAULT_MAX_AUTHORIZATION,
        metadata=_doc(
            "bytes of the longest Authorization header read; longer ones are "
            "refused unread"
        ),
    )
    max_scopes: int = field(
        default=DEFAULT_MAX_SCOPES,
        metadata=_doc("most scopes one token request may ask for"),
    )
    login_cache: int = field(
        default=DEFAULT_LOGIN_CACHE,
        metadata=_doc(
            "verified logins remembered, so Basic mode does not run bcrypt on "
            "every request of a push"
        ),
    )


def parse_auth(
    raw: Mapping[str, Any], source: Path, *, check_files: bool = True
) -> AuthSettings:
    """Validate the decoded ``[auth]`` table of the topology file `source`.

    With `check_files` false, the files it names (htpasswd, keys) are not read:
    the topology file is read on every host, but only registry nodes need them,
    and those check them with `check_auth_files` as they start.
    """
    table = _table(raw, source, "")
    _check_known(table, AUTH_FIELDS, source, "")
    folder = source.parent

    mode = _string(table.get("mode", NONE), source, "mode")
    if mode not in MODES:
        raise _error(source, "mode", f"{mode!r} is not one of {', '.join(MODES)}")

    htpasswd = _htpasswd_path(table, mode, folder, source)
    groups = _groups(table.get("groups", {}), source)
    settings = AuthSettings(
        mode=mode,
        htpasswd=htpasswd,
        realm=_string(table.get("realm", DEFAULT_REALM), source, "realm"),
        anonymous_pull=_boolean(
            table.get("anonymous_pull", False), source, "anonymous_pull"
        ),
        token_service=_string(
            table.get("token_service", DEFAULT_TOKEN_SERVICE), source, "token_service"
        ),
        token_issuer=_string(
            table.get("token_issuer", DEFAULT_TOKEN_ISSUER), source, "token_issuer"
        ),
        token_key=folder
        / _string(table.get("token_key", DEFAULT_TOKEN_KEY), source, "token_key"),
        token_realm=_token_realm(table.get("token_realm", ""), source),
        token_ttl=_token_ttl(table.get("token_ttl", DEFAULT_TOKEN_TTL), source),
        trusted_issuers=_trusted_issuers(
            table.get("trusted_issuer", []), folder, source
        ),
        groups=groups,
        rules=_rules(table.get("rule", []), groups, source),
    )
    if check_files:
        check_auth_files(settings, source)
    return settings


def check_auth_files(settings: AuthSettings, source: Path) -> None:
    """The htpasswd file and the keys the settings name must be usable."""
    if settings.htpasswd is not None:
        _check_htpasswd(settings.htpasswd, source)
    for index, issuer in enumerate(settings.trusted_issuers, 1):
        try:
            load_public_key(issuer.public_key)
        except KeyUnusable as e:
            raise _error(
                source, "trusted_issuer.public_key", f"issuer #{index}: {e}"
            ) from e
    if settings.mode == TOKEN:
        _check_token_keys(settings, source)


def _htpasswd_path(
    table: Mapping[str, Any], mode: str, folder: Path, source: Path
) -> Path | None:
    """Where the users file is; basic mode must name one."""
    value = table.get("htpasswd")
    if value is None:
        if mode == BASIC:
            raise _error(source, "htpasswd", "basic mode needs an htpasswd file")
        return None
    return folder / _string(value, source, "htpasswd")


def _check_htpasswd(path: Path, source: Path) -> None:
    """The users file must exist and hold only bcrypt hashes."""
    try:
        read_htpasswd(path)
    except OSError as e:
        raise _error(
            source, "htpasswd", f"cannot read {str(path)!r}: {e.strerror}"
        ) from e
    except HtpasswdError as e:
        raise _error(source, "htpasswd", str(e)) from e


def _token_realm(value: object, source: Path) -> str:
    realm = _string(value, source, "token_realm", empty=True)
    if realm and not realm.startswith(("http://", "https://")):
        raise _error(
            source, "token_realm", f"{realm!r} is not an http:// or https:// URL"
        )
    return realm


def _token_ttl(value: object, source: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _error(source, "token_ttl", "a whole number of seconds")
    if not MIN_TOKEN_TTL <= value <= MAX_TOKEN_TTL:
        raise _error(
            source,
            "token_ttl",
            f"{value} is outside {MIN_TOKEN_TTL}..{MAX_TOKEN_TTL} seconds",
        )
    return value


def _trusted_issuers(
    value: object, folder: Path, source: Path
) -> tuple[TrustedIssuer, ...]:
    if not isinstance(value, list):
        raise _error(source, "trusted_issuer", "a list of [[auth.trusted_issuer]]")

    issuers: list[TrustedIssuer] = []
    for item in value:
        entry = _table(item, source, "trusted_issuer")
        _check_known(entry, ISSUER_FIELDS, source, "trusted_issuer.")
        name = _string(entry.get("issuer"), source, "trusted_issuer.issuer")
        if any(issuer.issuer == name for issuer in issuers):
            raise _error(
                source, "trusted_issuer.issuer", f"issuer {name!r} is listed twice"
            )
        path = folder / _string(
            entry.get("public_key"), source, "trusted_issuer.public_key"
        )
        issuers.append(TrustedIssuer(name, path))
    return tuple(issuers)


def _check_token_keys(settings: AuthSettings, source: Path) -> None:
    """The signing key, when it exists, must load; no issuer may be trusted twice."""
    if settings.token_key.exists():
        try:
            load_private_key(settings.token_key)
        except KeyUnusable as e:
            raise _error(source, "token_key", str(e)) from e

    for issuer in settings.trusted_issuers:
        if issuer.issuer == settings.token_issuer:
            raise _error(
                source,
                "trusted_issuer.issuer",
                f"{issuer.issuer!r} is this registry's own token_issuer",
            )


def _groups(value: object, source: Path) -> dict[str, frozenset[str]]:
    table = _table(value, source, "groups")
    groups: dict[str, frozenset[str]] = {}
    for name, members in table.items():
        groups[name] = frozenset(_strings(members, source, f"groups.{name}"))
    return groups


def _rules(
    value: object, groups: Mapping[str, frozenset[str]], source: Path
) -> tuple[Rule, ...]:
    if not isinstance(value, list):
        raise _error(source, "rule", "a list of [[auth.rule]]")
    return tuple(
        _rule(item, index, groups, source) for index, item in enumerate(value, 1)
    )


def _rule(
    value: object, index: int, groups: Mapping[str, frozenset[str]], source: Path
) -> Rule:
    entry = _table(value, source, "rule")
    _check_known(entry, RULE_FIELDS, source, "rule.")
    where = f"rule #{index}: "

    repositories = _strings(entry.get("repositories"), source, "rule.repositories")
    if not repositories:
        raise _error(source, "rule.repositories", where + "name at least one pattern")
    users = _strings(entry.get("users", []), source, "rule.users")
    rule_groups = _strings(entry.get("groups", []), source, "rule.groups")
    if not users and not rule_groups:
        raise _error(source, "rule.users", where + "name at least one user or group")
    for group in rule_groups:
        if group not in groups:
            known = ", ".join(sorted(groups)) or "none"
            raise _error(
                source,
                "rule.groups",
                where + f"unknown group {group!r}{_hint(group, groups)} "
                f"(groups: {known})",
            )

    actions = _strings(entry.get("actions"), source, "rule.actions")
    if not actions:
        raise _error(source, "rule.actions", where + "name at least one action")
    for action in actions:
        if action not in RULE_ACTIONS:
            raise _error(
                source,
                "rule.actions",
                where + f"unknown action {action!r}{_hint(action, RULE_ACTIONS)} "
                "(use pull, push, delete or '*')",
            )
    concrete = REPOSITORY_ACTIONS if ALL in actions else frozenset(actions)
    return Rule(tuple(repositories), frozenset(users), frozenset(rule_groups), concrete)


def _check_known(
    table: Mapping[str, Any], known: frozenset[str], source: Path, prefix: str
) -> None:
    """Refuse fields this program does not know: a typo must not pass unseen."""
    for name in sorted(set(table) - known):
        allowed = ", ".join(sorted(known))
        raise _error(
            source,
            prefix + name,
            f"unknown field{_hint(name, known)} (known: {allowed})",
        )


def _hint(word: str, candidates: Any) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _table(value: object, source: Path, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _error(source, name, "a table")
    return value


def _string(value: object, source: Path, name: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or not (value or empty):
        raise _error(source, name, "a non-empty string" if not empty else "a string")
    return value


def _strings(value: object, source: Path, name: str) -> list[str]:
    if not isinstance(value, list) or not all(
        isinstance(item, str) and item for item in value
    ):
        raise _error(source, name, "a list of non-empty strings")
    return list(value)


def _boolean(value: object, source: Path, name: str) -> bool:
    if not isinstance(value, bool):
        raise _error(source, name, "true or false")
    return value


def _error(source: Path, name: str, why: str) -> ConfigError:
    """The error for one field of the ``[auth]`` table."""
    return ConfigError(source, None, f"auth.{name}" if name else "auth", why)
