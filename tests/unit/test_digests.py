"""Tests of the forms of chunk names and checks, and of verifying by either."""

import pytest

from treescale.store.digests import (
    check_of,
    chunk_matches_either,
    is_check,
    is_chunk_digest,
    sha256_digest,
)

DATA = b"a chunk's bytes" * 100
DIGEST = sha256_digest(DATA)
CHECK = check_of(DATA)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (DIGEST, True),
        (DIGEST.upper(), False),
        ("sha512:" + "a" * 64, False),
        ("sha256:" + "a" * 63, False),
        (CHECK, False),
        (None, False),
        (7, False),
    ],
)
def test_chunk_digests_are_recognised(value: object, ok: bool) -> None:
    """Only a sha256 digest of 64 lowercase hex digits names a chunk."""
    assert is_chunk_digest(value) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (CHECK, True),
        (CHECK.upper(), False),
        ("blake3:" + "g" * 64, False),
        ("blake3:" + "a" * 65, False),
        (DIGEST, False),
        ("", False),
        (None, False),
    ],
)
def test_checks_are_recognised(value: object, ok: bool) -> None:
    """A check is ``blake3:`` and 64 lowercase hex digits."""
    assert is_check(value) is ok


def test_either_takes_a_matching_check_or_the_name() -> None:
    """The check decides when it matches; the name when there is none or it does
    not; bytes that are not the chunk match neither."""
    assert chunk_matches_either(DATA, DIGEST, CHECK)
    assert chunk_matches_either(DATA, DIGEST, "")
    assert chunk_matches_either(DATA, DIGEST, check_of(b"other"))
    assert not chunk_matches_either(DATA + b"!", DIGEST, CHECK)
    assert not chunk_matches_either(DATA + b"!", DIGEST, "")
