"""Tests of running hashes whose state is saved and taken up again."""

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from treescale.store.hashstate import HashState, ResumableHash, resumable_hasher

ALGORITHMS = ("sha256", "sha512")


def hasher(algorithm: str) -> ResumableHash:
    """A resumable hash, which this host's libcrypto must offer."""
    found = resumable_hasher(algorithm)
    assert found is not None, f"no resumable {algorithm} on this host"
    return found


@given(
    algorithm=st.sampled_from(ALGORITHMS),
    data=st.binary(max_size=2000),
    cut=st.integers(min_value=0, max_value=2000),
)
def test_saved_state_goes_on_to_hashlibs_digest(
    algorithm: str, data: bytes, cut: int
) -> None:
    """Hashing to any point, saving as JSON, restoring and going on gives hashlib's
    digest of the whole."""
    first = hasher(algorithm)
    first.update(data[:cut])
    saved = json.loads(json.dumps(first.save().to_json()))

    second = hasher(algorithm)
    second.restore(HashState.from_json(saved))
    second.update(data[cut:])

    assert second.hexdigest() == hashlib.new(algorithm, data).hexdigest()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_digest_midway_does_not_end_the_hash(algorithm: str) -> None:
    """Reading the digest part way leaves the hash able to go on."""
    running = hasher(algorithm)
    running.update(b"first part ")

    assert running.hexdigest() == hashlib.new(algorithm, b"first part ").hexdigest()
    running.update(b"and the rest")
    whole = hashlib.new(algorithm, b"first part and the rest").hexdigest()
    assert running.hexdigest() == whole


def test_state_counts_bytes_and_keeps_the_unhashed_tail() -> None:
    """A state says how many bytes were hashed and holds the last partial block."""
    running = hasher("sha256")
    running.update(b"x" * 70)

    state = running.save()

    assert (state.algorithm, state.length, state.tail) == ("sha256", 70, b"x" * 6)
    assert len(state.words) == 8


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"algorithm": "sha512"}, "not a sha256 state"),
        ({"tail": "eHg="}, "tail does not match"),
        ({"words": [0] * 7}, "8 chaining words"),
        ({"words": [2**32] * 8}, "8 chaining words"),
    ],
)
def test_restore_refuses_a_state_that_cannot_be_this_hashs(
    change: dict[str, object], why: str
) -> None:
    """A state of another hash, or whose parts disagree, is refused."""
    running = hasher("sha256")
    running.update(b"abc")
    document = {**running.save().to_json(), **change}

    with pytest.raises(ValueError, match=why):
        hasher("sha256").restore(HashState.from_json(document))


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"algorithm": "sha256"},
        {"algorithm": "sha256", "length": -1, "words": [], "tail": ""},
        {"algorithm": "sha256", "length": True, "words": [], "tail": ""},
        {"algorithm": "sha256", "length": 0, "words": ["a"], "tail": ""},
        {"algorithm": "sha256", "length": 0, "words": [], "tail": "!!"},
    ],
)
def test_anything_else_is_not_a_state(document: object) -> None:
    """Documents that are not saved states raise ValueError."""
    with pytest.raises(ValueError):
        HashState.from_json(document)


def test_unknown_algorithm_has_no_resumable_hash() -> None:
    """Only sha256 and sha512 can be saved."""
    assert resumable_hasher("md5") is None
