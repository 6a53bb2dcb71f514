"""Tests of scopes: parsing, formatting, merging and which actions cover which."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from treescale.auth.scopes import (
    ALL,
    REPOSITORY_ACTIONS,
    Access,
    ScopeInvalid,
    catalog_access,
    format_scope,
    merge,
    parse_scope,
    parse_scopes,
    repository_access,
    within,
)


def test_repository_scope() -> None:
    """A plain repository scope gives its type, name and actions."""
    assert parse_scope("repository:team/app:pull,push") == Access(
        "repository", "team/app", frozenset({"pull", "push"})
    )


def test_name_with_a_port() -> None:
    """Actions start after the last colon, so a host:port stays in the name."""
    access = parse_scope("repository:localhost:5000/team/app:pull")
    assert access == Access(
        "repository", "localhost:5000/team/app", frozenset({"pull"})
    )


def test_name_with_several_colons() -> None:
    """The type ends at the first colon even when the name has more of them."""
    access = parse_scope("repository:a:b:c:delete")
    assert (access.type, access.name, access.actions) == (
        "repository",
        "a:b:c",
        frozenset({"delete"}),
    )


def test_catalog_scope() -> None:
    """The catalog scope reads as the registry resource with action '*'."""
    assert parse_scope("registry:catalog:*") == catalog_access()


def test_several_scopes_in_order() -> None:
    """Space-separated scopes, with any amount of whitespace, all come back."""
    text = "  repository:a:pull \t repository:b:push\nregistry:catalog:*  "
    assert parse_scopes(text) == [
        repository_access("a", "pull"),
        repository_access("b", "push"),
        catalog_access(),
    ]


def test_empty_text_has_no_scopes() -> None:
    """An empty or blank scope list is no scope, not an error."""
    assert parse_scopes("") == []
    assert parse_scopes("   ") == []


def test_empty_actions() -> None:
    """A scope may name no action; empty items of the list are dropped."""
    assert parse_scope("repository:a:").actions == frozenset()
    assert parse_scope("repository:a:pull,,push,").actions == {"pull", "push"}


def test_unknown_type_kept() -> None:
    """A type this registry does not serve parses; the policy grants it nothing."""
    assert parse_scope("repository(plugin):a:pull").type == "repository(plugin)"


@pytest.mark.parametrize(
    "text",
    ["repository", "repository:app", ":app:pull", "repository::pull", "", ":", "::"],
)
def test_malformed_scope(text: str) -> None:
    """A scope without a type, a name or its two colons is refused."""
    with pytest.raises(ScopeInvalid):
        parse_scope(text)


def test_malformed_scope_in_a_list() -> None:
    """One bad scope in a list refuses the list."""
    with pytest.raises(ScopeInvalid):
        parse_scopes("repository:a:pull repository")


def test_format_sorts_actions() -> None:
    """Formatting sorts the actions, so a scope reads the same each time."""
    assert format_scope(repository_access("a/b", "push", "pull", "delete")) == (
        "repository:a/b:delete,pull,push"
    )


def test_merge_unites_actions_per_resource() -> None:
    """One resource asked for twice comes back once, with the union of actions."""
    merged = merge(
        [
            repository_access("a", "pull"),
            repository_access("b", "pull"),
            repository_access("a", "push"),
        ]
    )
    assert merged == [
        repository_access("a", "pull", "push"),
        repository_access("b", "pull"),
    ]


def test_within() -> None:
    """Held actions allow what they name; '*' held allows all, asked needs all."""
    pull = frozenset({"pull"})
    assert within(frozenset({"pull", "push"}), pull) == pull
    assert within(frozenset({"delete"}), frozenset({ALL})) == {"delete"}
    assert within(frozenset({ALL}), REPOSITORY_ACTIONS) == {ALL}
    assert within(frozenset({ALL}), frozenset({"pull", "push"})) == frozenset()


_word = st.text(
    st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")),
    min_size=1,
    max_size=20,
)


@given(
    kind=_word.filter(lambda t: ":" not in t),
    name=_word,
    actions=st.frozensets(_word.filter(lambda t: ":" not in t and "," not in t)),
)
def test_round_trip(kind: str, name: str, actions: frozenset[str]) -> None:
    """Any scope formatted and parsed again is the same scope."""
    access = Access(kind, name, actions)
    assert parse_scope(format_scope(access)) == access


@given(st.text(max_size=200))
def test_hostile_text(text: str) -> None:
    """Any text either parses or is refused with ScopeInvalid, nothing else."""
    try:
        accesses = parse_scopes(text)
    except ScopeInvalid:
        return
    assert all(access.type and access.name for access in accesses)
