"""Scopes: what a request or a token is about, as ``type:name:actions``.

A scope names a resource type, a resource name and a comma-separated list of
actions, e.g. ``repository:team/app:pull,push``. A repository name may carry a
registry host with a port (``localhost:5000/app``), so the type ends at the first
colon and the actions start after the last one; everything between is the name.
Several scopes travel space-separated in one string, as the challenge's ``scope``
parameter and the token endpoint's ``scope`` query have them.
"""

from dataclasses import dataclass

REPOSITORY = "repository"
REGISTRY = "registry"
CATALOG = "catalog"
"""The name of the ``registry`` resource that ``GET /v2/_catalog`` asks for."""

PULL = "pull"
PUSH = "push"
DELETE = "delete"
ALL = "*"
REPOSITORY_ACTIONS = frozenset({PULL, PUSH, DELETE})


class ScopeInvalid(ValueError):
    """A scope string that does not have the ``type:name:actions`` shape."""


@dataclass(frozen=True)
class Access:
    """Some actions on one named resource."""

    type: str
    name: str
    actions: frozenset[str]


def catalog_access() -> Access:
    """What listing the catalog asks for."""
    return Access(REGISTRY, CATALOG, frozenset({ALL}))


def repository_access(name: str, *actions: str) -> Access:
    """What an operation on the repository `name` asks for."""
    return Access(REPOSITORY, name, frozenset(actions))


def parse_scope(text: str) -> Access:
    """One scope; `ScopeInvalid` when it lacks a type, a name or its colons."""
    kind, first, rest = text.partition(":")
    name, last, actions = rest.rpartition(":")
    if not first or not last or not kind or not name:
        raise ScopeInvalid(f"{text!r} is not a scope of the form type:name:actions")

    return Access(kind, name, frozenset(a for a in actions.split(",") if a))


def parse_scopes(text: str) -> list[Access]:
    """Every scope of a space-separated list, in order."""
    return [parse_scope(part) for part in text.split()]


def format_scope(access: Access) -> str:
    """The scope string of `access`, its actions sorted so it reads the same twice."""
    return f"{access.type}:{access.name}:{','.join(sorted(access.actions))}"


def merge(accesses: list[Access]) -> list[Access]:
    """The same accesses with one entry per resource, in order of first mention.

    A client may ask for one repository twice (``pull`` and then ``push``); a token
    or a challenge names it once, with the union of the actions.
    """
    merged: dict[tuple[str, str], frozenset[str]] = {}
    for access in accesses:
        key = (access.type, access.name)
        merged[key] = merged.get(key, frozenset()) | access.actions
    return [Access(kind, name, actions) for (kind, name), actions in merged.items()]


def within(asked: frozenset[str], held: frozenset[str]) -> frozenset[str]:
    """The asked actions that the held ones allow.

    Holding ``*`` allows any action; asking for ``*`` on a repository is allowed
    by holding pull, push and delete together.
    """
    if ALL in held:
        return asked
    allowed = asked & held
    if ALL in asked and held >= REPOSITORY_ACTIONS:
        allowed |= {ALL}
    return allowed
