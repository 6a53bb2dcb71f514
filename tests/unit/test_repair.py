"""Tests of the scrub's pure policy: peer health, homes, who copies, pacing."""

import pytest

from treescale.store.repair import (
    Pacer,
    PeerHealth,
    PeerState,
    ScrubCounts,
    copy_targets,
    effective_homes,
)

RECHECK = 30.0
GONE = 600.0


def health() -> PeerHealth:
    return PeerHealth(RECHECK, GONE)


# Peer health.


def test_a_peer_is_up_until_a_request_fails() -> None:
    """A relay never heard of, or that answered, is up and is asked."""
    peers = health()

    assert peers.state("b", 0.0) is PeerState.UP
    assert peers.should_ask("b", 0.0)
    assert peers.answered("b") is False


def test_failed_peer_is_down_then_gone() -> None:
    """A relay whose request failed is down, and gone after `gone_after` s."""
    peers = health()

    assert peers.failed("b", 100.0) is True
    assert peers.failed("b", 150.0) is False
    assert peers.state("b", 100.0 + GONE - 1) is PeerState.DOWN
    assert peers.state("b", 100.0 + GONE) is PeerState.GONE
    assert peers.not_up(100.0 + GONE) == {"b": "gone"}


def test_down_peer_is_asked_again_only_after_recheck() -> None:
    """A down relay is presumed, not asked, for `recheck_after` s after each ask."""
    peers = health()
    peers.failed("b", 100.0)

    assert not peers.should_ask("b", 100.0 + RECHECK - 1)
    assert peers.should_ask("b", 100.0 + RECHECK)
    peers.asked("b", 200.0)
    assert not peers.should_ask("b", 200.0 + RECHECK / 2)


def test_answer_brings_a_gone_peer_back() -> None:
    """One answer makes a gone relay up again."""
    peers = health()
    peers.failed("b", 0.0)

    assert peers.answered("b") is True
    assert peers.state("b", GONE * 2) is PeerState.UP
    assert peers.not_up(GONE * 2) == {}


# Effective homes.


def test_homes_are_the_first_of_the_rank() -> None:
    """With every relay up, the homes are the first `replicas` of the order."""
    assert effective_homes(["a", "b", "c"], 2, "c", health(), 0.0) == ["a", "b"]


def test_down_home_stays_a_home_and_a_gone_one_does_not() -> None:
    """A relay down for a while is still a home; once gone, the next one is."""
    peers = health()
    peers.failed("a", 0.0)

    assert effective_homes(["a", "b", "c"], 2, "b", peers, 10.0) == ["a", "b"]
    assert effective_homes(["a", "b", "c"], 2, "b", peers, GONE) == ["b", "c"]


def test_this_relay_is_never_gone_to_itself() -> None:
    """The scrubbing relay counts as a home even if its health says gone."""
    peers = health()
    peers.failed("a", 0.0)

    assert effective_homes(["a", "b"], 2, "a", peers, GONE) == ["a", "b"]


# Who copies.


@pytest.mark.parametrize(
    ("me", "homes", "holds", "targets"),
    [
        ("a", ["a", "b"], {"b": True}, []),
        ("a", ["a", "b"], {"b": False}, ["b"]),
        ("b", ["a", "b"], {"a": False}, ["a"]),
        ("b", ["a", "b", "c"], {"a": True, "c": False}, []),
        ("a", ["a", "b", "c"], {"b": True, "c": False}, ["c"]),
        ("a", ["a", "b"], {"b": None}, []),
        ("c", ["a", "b"], {"a": True, "b": False}, []),
        ("c", ["a", "b"], {"a": False, "b": False}, ["a", "b"]),
        ("c", ["a", "b"], {"a": None, "b": False}, []),
        ("b", ["a", "b"], {"a": None}, []),
    ],
    ids=[
        "both hold",
        "first home copies to the other",
        "second home copies when the first lacks it",
        "an earlier home holds it: it copies",
        "first holder copies to the one lacking",
        "presumed copy needs nothing",
        "not a home, a home holds it: leave it",
        "not a home, no home holds it: bring it home",
        "not a home, a presumed home: leave it",
        "presumed earlier home: nothing lacks",
    ],
)
def test_copy_targets(
    me: str, homes: list[str], holds: dict[str, bool | None], targets: list[str]
) -> None:
    """Exactly one holder copies a chunk to the homes lacking it."""
    assert copy_targets(me, homes, holds) == targets


# Pacing.


def test_pacer_spaces_items_by_the_slower_rate() -> None:
    """Each item costs the longer of its item time and its byte time."""
    pacer = Pacer(items_per_second=10.0, bytes_per_second=1000.0)

    assert pacer.reserve(100, 0.0) == 0.0
    assert pacer.reserve(100, 0.0) == pytest.approx(0.1)
    assert pacer.reserve(500, 0.0) == pytest.approx(0.2)
    assert pacer.reserve(0, 0.0) == pytest.approx(0.7)


def test_pacer_saves_no_idle_time() -> None:
    """After a long pause the next item starts at once, and the one after waits."""
    pacer = Pacer(items_per_second=1.0, bytes_per_second=1e9)
    pacer.reserve(0, 0.0)

    assert pacer.reserve(0, 100.0) == 0.0
    assert pacer.reserve(0, 100.0) == pytest.approx(1.0)


def test_pacer_needs_positive_rates() -> None:
    """A rate of zero is refused."""
    with pytest.raises(ValueError):
        Pacer(0.0, 1.0)


def test_counts_add_up() -> None:
    """Counts of two passes add field by field."""
    total = ScrubCounts(chunks=1, copied=2)
    total.add(ScrubCounts(chunks=3, corrupt=1))

    assert total.to_json() == {
        "chunks": 4,
        "nbytes": 0,
        "corrupt": 1,
        "restored": 0,
        "missing": 0,
        "copied": 2,
        "failed": 0,
        "errors": 0,
    }
