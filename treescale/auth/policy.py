"""What a user may do: the rules, groups and anonymous pull of the settings.

With no rule at all, every signed-in user may pull, push and delete everything,
as users of an htpasswd-protected CNCF distribution registry expect. Once there is
a rule, a signed-in user may do what the rules that name them (directly, through
a group, or as ``"*"``) grant on repositories their patterns match, and nothing
else. Anonymous requests may only pull, and only when ``anonymous_pull`` is on;
a signed-in user may always do what an anonymous one may.

Listing the catalog (``registry:catalog:*``) shows every repository's name, so it
is granted to whoever may pull every repository: anyone, with anonymous pull;
every signed-in user when there are no rules; else users a rule with the pattern
``"**"`` grants pull.

Patterns: ``*`` matches within one path component, ``**`` across components, and
anything else matches itself. ``team/*`` matches ``team/app`` but not
``team/app/db``; ``team/**`` matches both, not ``team`` itself.
"""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from treescale.auth.scopes import (
    ALL,
    CATALOG,
    PULL,
    REGISTRY,
    REPOSITORY,
    REPOSITORY_ACTIONS,
    Access,
    within,
)
from treescale.auth.settings import AuthSettings, Rule

EVERY_REPOSITORY = "**"


def repository_pattern(pattern: str) -> re.Pattern[str]:
    """The expression that matches the repository names `pattern` names."""
    pieces = []
    for piece in re.split(r"(\*\*|\*)", pattern):
        if piece == "**":
            pieces.append(".*")
        elif piece == "*":
            pieces.append("[^/]*")
        else:
            pieces.append(re.escape(piece))
    return re.compile("".join(pieces), re.DOTALL)


@dataclass(frozen=True)
class _CompiledRule:
    patterns: tuple[re.Pattern[str], ...]
    every_repository: bool
    users: frozenset[str]
    groups: frozenset[str]
    actions: frozenset[str]

    def names(self, user: str, groups: frozenset[str]) -> bool:
        """Whether the rule applies to the signed-in `user`."""
        return "*" in self.users or user in self.users or bool(self.groups & groups)

    def covers(self, repository: str) -> bool:
        return any(pattern.fullmatch(repository) for pattern in self.patterns)


class Policy:
    """Who may do what, from the settings."""

    def __init__(self, settings: AuthSettings) -> None:
        self._anonymous_pull = settings.anonymous_pull
        self._open = not settings.rules
        self._rules = tuple(_compile(rule) for rule in settings.rules)
        self._groups_of = _groups_of(settings.groups)

    def granted(self, user: str | None, access: Access) -> frozenset[str]:
        """The actions of `access` that `user` (None: anonymous) may do."""
        if access.type == REPOSITORY:
            return within(access.actions, self._repository_actions(user, access.name))
        if access.type == REGISTRY and access.name == CATALOG:
            held = frozenset({ALL}) if self._may_list(user) else frozenset()
            return within(access.actions, held)
        return frozenset()

    def _repository_actions(self, user: str | None, name: str) -> frozenset[str]:
        anonymous = frozenset({PULL}) if self._anonymous_pull else frozenset()
        if user is None:
            return anonymous
        if self._open:
            return REPOSITORY_ACTIONS

        actions = set(anonymous)
        for rule in self._applying(user):
            if rule.covers(name):
                actions |= rule.actions
        return frozenset(actions)

    def _may_list(self, user: str | None) -> bool:
        if self._anonymous_pull:
            return True
        if user is None:
            return False
        if self._open:
            return True
        return any(
            rule.every_repository and PULL in rule.actions
            for rule in self._applying(user)
        )

    def _applying(self, user: str) -> Iterable[_CompiledRule]:
        groups = self._groups_of.get(user, frozenset())
        return (rule for rule in self._rules if rule.names(user, groups))


def _compile(rule: Rule) -> _CompiledRule:
    return _CompiledRule(
        patterns=tuple(repository_pattern(p) for p in rule.repositories),
        every_repository=EVERY_REPOSITORY in rule.repositories,
        users=rule.users,
        groups=rule.groups,
        actions=rule.actions,
    )


def _groups_of(groups: Mapping[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    """For each user, the groups they belong to."""
    member_of: dict[str, set[str]] = {}
    for group, members in groups.items():
        for member in members:
            member_of.setdefault(member, set()).add(group)
    return {user: frozenset(names) for user, names in member_of.items()}
