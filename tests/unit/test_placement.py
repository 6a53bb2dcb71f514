"""Tests of weighted rendezvous placement: stable, weighted, spread over domains."""

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from treescale.store import placement
from treescale.store.placement import Holder, place, rank, search_order

KEYS = [f"sha256:{n:064x}" for n in range(10_000)]
RELAYS = [Holder(f"relay-{letter}") for letter in "abcde"]


def names(holders: list[Holder]) -> list[str]:
    """The names of holders, in order."""
    return [holder.name for holder in holders]


def test_rank_is_deterministic_and_ignores_input_order() -> None:
    """The same key and holders give the same rank, however the holders are listed."""
    for key in KEYS[:200]:
        first = rank(key, RELAYS)

        assert rank(key, RELAYS) == first
        assert rank(key, list(reversed(RELAYS))) == first
        assert sorted(names(first)) == names(RELAYS)


def test_rank_spreads_keys_over_holders() -> None:
    """Different keys have different best holders."""
    best = {rank(key, RELAYS)[0].name for key in KEYS[:200]}

    assert best == set(names(RELAYS))


def test_equal_scores_are_ordered_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """When every score is equal the rank falls back to the holders' names."""
    monkeypatch.setattr(placement, "_unit", lambda key, name: 0.5)
    holders = [Holder("c"), Holder("a"), Holder("b")]

    assert names(rank("k", holders)) == ["a", "b", "c"]


def test_place_takes_the_top_of_the_rank() -> None:
    """Without failure domains, placement is the first `replicas` of the rank."""
    for key in KEYS[:200]:
        assert place(key, RELAYS, 2) == rank(key, RELAYS)[:2]


def test_place_prefers_distinct_domains() -> None:
    """Replicas land in distinct failure domains whenever there are enough."""
    holders = [
        Holder(f"{rack}-{n}", domain=rack)
        for rack in ("r1", "r2", "r3")
        for n in range(3)
    ]

    for key in KEYS[:500]:
        chosen = place(key, holders, 3)

        assert len({holder.domain for holder in chosen}) == 3
        assert chosen[0] == rank(key, holders)[0]


def test_place_fills_from_the_rank_when_domains_run_out() -> None:
    """With fewer domains than replicas, the extra replicas are the best remaining."""
    holders = [
        Holder(f"{rack}-{n}", domain=rack) for rack in ("r1", "r2") for n in range(3)
    ]

    for key in KEYS[:500]:
        chosen = place(key, holders, 3)
        ranked = rank(key, holders)

        assert len(set(chosen)) == 3
        assert {holder.domain for holder in chosen[:2]} == {"r1", "r2"}
        assert chosen[2] == next(h for h in ranked if h not in chosen[:2])


def test_weights_skew_the_share_proportionally() -> None:
    """A holder's share of 10,000 keys is close to its weight over the total."""
    holders = [
        Holder(f"relay-{weight}", weight=float(weight)) for weight in (1, 2, 3, 4)
    ]

    shares = Counter(place(key, holders, 1)[0] for key in KEYS)

    for holder in holders:
        assert shares[holder] / len(KEYS) == pytest.approx(holder.weight / 10, abs=0.02)


def test_adding_a_holder_moves_only_keys_that_land_on_it() -> None:
    """A new relay takes about 1/(n+1) of the keys, and no other key moves."""
    newcomer = Holder("relay-f")
    grown = [*RELAYS, newcomer]
    moved = 0

    for key in KEYS:
        before = place(key, RELAYS, 1)
        after = place(key, grown, 1)
        if before != after:
            moved += 1
            assert after == [newcomer]

    assert moved / len(KEYS) == pytest.approx(1 / len(grown), abs=0.02)


def test_adding_a_holder_with_replicas_changes_one_member_at_most() -> None:
    """With two replicas, a placement that changes gains the new relay and drops one."""
    newcomer = Holder("relay-f")
    grown = [*RELAYS, newcomer]
    changed = 0

    for key in KEYS:
        before = set(place(key, RELAYS, 2))
        after = set(place(key, grown, 2))
        if before != after:
            changed += 1
            assert newcomer in after
            assert len(before & after) == 1

    assert changed / len(KEYS) == pytest.approx(2 / len(grown), abs=0.03)


def test_removing_a_holder_moves_only_its_keys() -> None:
    """Keys a removed relay did not hold keep their holders; its keys keep the rest."""
    leaver = RELAYS[2]
    shrunk = [holder for holder in RELAYS if holder != leaver]

    for key in KEYS:
        before = place(key, RELAYS, 2)
        after = place(key, shrunk, 2)
        if leaver in before:
            survivor = next(holder for holder in before if holder != leaver)
            assert survivor in after
            assert leaver not in after
        else:
            assert after == before


def test_fewer_holders_than_replicas_gives_all_of_them() -> None:
    """Asking for more replicas than holders returns every holder, best first."""
    holders = RELAYS[:2]

    for key in KEYS[:100]:
        assert place(key, holders, 3) == rank(key, holders)


def test_no_holders_gives_no_placement() -> None:
    """An empty holder list places a key nowhere."""
    assert place("k", [], 2) == []
    assert rank("k", []) == []


@pytest.mark.parametrize("replicas", [0, -1])
def test_replicas_below_one_is_an_error(replicas: int) -> None:
    """place refuses a replica count below one."""
    with pytest.raises(ValueError):
        place("k", RELAYS, replicas)


def test_duplicate_holder_names_are_an_error() -> None:
    """Two holders of one name make placement ambiguous and are refused."""
    with pytest.raises(ValueError):
        rank("k", [Holder("a"), Holder("a", weight=2.0)])


@pytest.mark.parametrize("weight", [0.0, -1.0, float("inf"), float("nan")])
def test_weights_must_be_positive_and_finite(weight: float) -> None:
    """A holder of zero, negative or non-finite weight is refused."""
    with pytest.raises(ValueError):
        Holder("a", weight=weight)


@given(
    key=st.text(max_size=40),
    layout=st.lists(
        st.tuples(st.floats(0.1, 10.0), st.sampled_from(["", "x", "y", "z"])),
        max_size=8,
    ),
    replicas=st.integers(min_value=1, max_value=10),
)
def test_place_always_spreads_as_far_as_it_can(
    key: str, layout: list[tuple[float, str]], replicas: int
) -> None:
    """Placement gives distinct holders, as many as asked, over as many domains."""
    holders = [
        Holder(f"h{n}", weight=weight, domain=domain)
        for n, (weight, domain) in enumerate(layout)
    ]
    domains = {holder.domain or holder.name for holder in holders}

    chosen = place(key, holders, replicas)

    assert len(set(chosen)) == len(chosen) == min(replicas, len(holders))
    assert set(chosen) <= set(holders)
    chosen_domains = {holder.domain or holder.name for holder in chosen}
    assert len(chosen_domains) == min(replicas, len(domains))


def test_search_order_is_the_homes_then_the_rest_of_the_rank() -> None:
    """The search order starts with exactly place()'s homes, in their order, and
    goes on through every other holder in rank order."""
    holders = [
        Holder("a", domain="x"),
        Holder("b", domain="x"),
        Holder("c", domain="y"),
        Holder("d", domain="z"),
    ]
    for key in KEYS[:200]:
        order = search_order(key, holders, 2)
        homes = place(key, holders, 2)

        assert order[:2] == homes
        assert order[2:] == [h for h in rank(key, holders) if h not in homes]
