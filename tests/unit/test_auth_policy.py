"""Tests of the policy: rules, groups, patterns, anonymous pull and the catalog."""

from pathlib import Path

import pytest

from tests.unit.test_auth_helpers import settings
from treescale.auth.policy import Policy, repository_pattern
from treescale.auth.scopes import ALL, Access, catalog_access, repository_access
from treescale.auth.settings import AuthSettings, Rule

EVERYTHING = frozenset({"pull", "push", "delete"})


def rule(repositories: list[str], actions: list[str], **who: list[str]) -> Rule:
    return Rule(
        tuple(repositories),
        frozenset(who.get("users", [])),
        frozenset(who.get("groups", [])),
        frozenset(actions),
    )


def everything(name: str) -> Access:
    return repository_access(name, "pull", "push", "delete")


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("team/*", "team/app", True),
        ("team/*", "team/app/db", False),
        ("team/*", "team", False),
        ("team/**", "team/app/db", True),
        ("team/**", "team/app", True),
        ("team/**", "team", False),
        ("**", "a/b/c", True),
        ("*", "app", True),
        ("*", "a/b", False),
        ("a.b", "aXb", False),
        ("a.b", "a.b", True),
        ("*/app", "team/app", True),
        ("*/app", "team/x/app", False),
        ("**/app", "team/x/app", True),
        ("team/app", "team/app2", False),
        ("localhost:5000/*", "localhost:5000/app", True),
    ],
)
def test_patterns(pattern: str, name: str, matches: bool) -> None:
    """'*' stays within a component, '**' crosses them, the rest is literal."""
    assert bool(repository_pattern(pattern).fullmatch(name)) is matches


def test_no_rules_open_to_signed_in_users() -> None:
    """Without rules a signed-in user may do everything; anonymous, nothing."""
    policy = Policy(AuthSettings(mode="basic"))
    assert policy.granted("alice", everything("any/repo")) == EVERYTHING
    assert policy.granted(None, everything("any/repo")) == frozenset()
    assert policy.granted("alice", catalog_access()) == {ALL}
    assert policy.granted(None, catalog_access()) == frozenset()


def test_anonymous_pull() -> None:
    """Anonymous pull lets anyone pull and list, never push or delete."""
    policy = Policy(AuthSettings(mode="basic", anonymous_pull=True))
    assert policy.granted(None, everything("a")) == {"pull"}
    assert policy.granted(None, catalog_access()) == {ALL}


def test_rules_by_user_group_and_anyone() -> None:
    """A rule applies to its users, its groups' members, and '*' to anyone."""
    policy = Policy(
        AuthSettings(
            mode="basic",
            groups={"devs": frozenset({"alice", "bob"})},
            rules=(
                rule(["team/*"], ["pull", "push"], users=["carol"], groups=["devs"]),
                rule(["public/**"], ["pull"], users=["*"]),
                rule(["team/app"], ["delete"], users=["bob"]),
            ),
        )
    )
    assert policy.granted("alice", everything("team/x")) == {"pull", "push"}
    assert policy.granted("carol", everything("team/x")) == {"pull", "push"}
    assert policy.granted("bob", everything("team/app")) == EVERYTHING
    assert policy.granted("alice", everything("team/x/y")) == frozenset()
    assert policy.granted("zed", everything("team/x")) == frozenset()
    assert policy.granted("zed", everything("public/a/b")) == {"pull"}
    assert policy.granted(None, everything("public/a")) == frozenset()


def test_signed_in_users_keep_anonymous_pull() -> None:
    """A signed-in user no rule names may still do what anonymous may."""
    policy = Policy(
        AuthSettings(
            mode="basic",
            anonymous_pull=True,
            rules=(rule(["team/*"], ["push"], users=["alice"]),),
        )
    )
    assert policy.granted("zed", everything("elsewhere")) == {"pull"}
    assert policy.granted("alice", everything("team/a")) == {"pull", "push"}


def test_asking_for_all_actions() -> None:
    """Asking for '*' on a repository is granted only with all three actions."""
    policy = Policy(
        AuthSettings(
            mode="basic",
            rules=(
                rule(["a"], ["pull", "push", "delete"], users=["alice"]),
                rule(["b"], ["pull", "push"], users=["alice"]),
            ),
        )
    )
    assert policy.granted("alice", repository_access("a", ALL)) == {ALL}
    assert policy.granted("alice", repository_access("b", ALL)) == frozenset()


def test_catalog_needs_pull_on_everything() -> None:
    """With rules, only a '**' rule granting pull gives the catalog."""
    policy = Policy(
        AuthSettings(
            mode="basic",
            rules=(
                rule(["**"], ["pull"], users=["auditor"]),
                rule(["**"], ["push"], users=["robot"]),
                rule(["team/**"], ["pull"], users=["alice"]),
            ),
        )
    )
    assert policy.granted("auditor", catalog_access()) == {ALL}
    assert policy.granted("robot", catalog_access()) == frozenset()
    assert policy.granted("alice", catalog_access()) == frozenset()
    assert policy.granted(None, catalog_access()) == frozenset()


def test_unknown_resource_types_get_nothing() -> None:
    """A scope of a type the registry does not serve is never granted."""
    policy = Policy(AuthSettings(mode="basic"))
    assert policy.granted("alice", Access("repository(plugin)", "a", EVERYTHING)) == (
        frozenset()
    )
    assert policy.granted("alice", Access("registry", "other", frozenset({ALL}))) == (
        frozenset()
    )


def test_unknown_actions_never_granted() -> None:
    """Only the actions asked for, and known, come back."""
    policy = Policy(AuthSettings(mode="basic"))
    asked = repository_access("a", "pull", "metadata-read")
    assert policy.granted("alice", asked) == {"pull"}


def test_rules_from_the_file(tmp_path: Path) -> None:
    """Rules as the topology file writes them work through the parser."""
    policy = Policy(
        settings(
            tmp_path,
            groups={"ops": ["olga"]},
            rule=[
                {"repositories": ["**"], "groups": ["ops"], "actions": ["*"]},
                {"repositories": ["lib/*"], "users": ["*"], "actions": ["pull"]},
            ],
        )
    )
    assert policy.granted("olga", everything("x/y/z")) == EVERYTHING
    assert policy.granted("olga", catalog_access()) == {ALL}
    assert policy.granted("pat", everything("lib/a")) == {"pull"}
    assert policy.granted("pat", everything("x")) == frozenset()
