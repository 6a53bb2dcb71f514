"""Tests of tokens: issue and verify round trips, and every kind of bad token."""

import base64
import hashlib
import hmac
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_auth_helpers import FakeClock, ec_key, rsa_key, write_private
from treescale.auth import keys as keys_module
from treescale.auth.keys import (
    PublicKey,
    key_id,
    load_or_create_private_key,
    load_private_key,
)
from treescale.auth.scopes import catalog_access, repository_access
from treescale.auth.tokens import (
    TokenClaims,
    TokenInvalid,
    TokenIssuer,
    TokenVerifier,
)

SERVICE = "registry.test"
LEEWAY = 30
TTL = 300
CORP_KEY = rsa_key()
"""One external issuer's RSA key for every test: making one takes a while."""


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def forged(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    """A token assembled by hand, to say what a library would refuse to sign."""
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(claims).encode())
    return f"{head}.{body}.{b64(signature)}"


class Fixture:
    """Our issuer, a clock and a verifier trusting us and one external issuer."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.key = ec_key()
        self.issuer = TokenIssuer(
            "treescale", SERVICE, self.key, self.clock, TTL, refresh_ttl=86400
        )
        self.corp = CORP_KEY
        self.keys: dict[str, PublicKey] = {
            "treescale": self.key.public_key(),
            "corp": self.corp.public_key(),
        }
        self.verifier = TokenVerifier(
            SERVICE, self.keys, self.clock, LEEWAY, own_issuer="treescale"
        )

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(self.clock())
        claims = {
            "iss": "corp",
            "sub": "alice",
            "aud": SERVICE,
            "exp": now + TTL,
            "nbf": now,
            "iat": now,
            "jti": "j1",
            "access": [{"type": "repository", "name": "a", "actions": ["pull"]}],
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def corp_token(self, algorithm: str = "RS256", **changes: Any) -> str:
        return jwt.encode(self.claims(**changes), self.corp, algorithm=algorithm)


@pytest.fixture
def fx() -> Fixture:
    return Fixture()


def test_round_trip(fx: Fixture) -> None:
    """A token we issue verifies to its user, issuer and accesses."""
    accesses = [repository_access("team/app", "pull", "push"), catalog_access()]
    token = fx.issuer.issue("alice", accesses)
    assert fx.verifier.verify(token) == TokenClaims(
        "alice", "treescale", tuple(accesses)
    )


def test_claims_and_header(fx: Fixture) -> None:
    """The token carries every claim of the spec, and its key's id in the header."""
    token = fx.issuer.issue("alice", [repository_access("a", "push", "pull")])
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "ES256"
    assert header["kid"] == key_id(fx.key.public_key())
    now = int(fx.clock())
    assert claims["iss"] == "treescale"
    assert claims["sub"] == "alice"
    assert claims["aud"] == SERVICE
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (now, now, now + TTL)
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
    assert claims["access"] == [
        {"type": "repository", "name": "a", "actions": ["pull", "push"]}
    ]


def test_token_ids_differ(fx: Fixture) -> None:
    """Two tokens issued at the same instant have different ids."""
    first = jwt.decode(fx.issuer.issue("a", []), options={"verify_signature": False})
    second = jwt.decode(fx.issuer.issue("a", []), options={"verify_signature": False})
    assert first["jti"] != second["jti"]


def test_key_id_shape(fx: Fixture) -> None:
    """A key id is twelve groups of four base32 characters, stable for a key."""
    kid = key_id(fx.key.public_key())
    groups = kid.split(":")
    assert len(groups) == 12
    assert all(len(g) == 4 and g.isalnum() and g.upper() == g for g in groups)
    assert key_id(fx.key.public_key()) == kid
    assert key_id(ec_key().public_key()) != kid


def test_anonymous_token(fx: Fixture) -> None:
    """An anonymous token has an empty subject and verifies to no user."""
    token = fx.issuer.issue(None, [repository_access("a", "pull")])
    assert jwt.decode(token, options={"verify_signature": False})["sub"] == ""
    assert fx.verifier.verify(token).subject is None


def test_expiry_with_leeway(fx: Fixture) -> None:
    """A token is good until its expiry plus the leeway, then refused."""
    token = fx.issuer.issue("alice", [])
    fx.clock.advance(TTL + LEEWAY)
    assert fx.verifier.verify(token).subject == "alice"
    fx.clock.advance(1)
    with pytest.raises(TokenInvalid, match="expired"):
        fx.verifier.verify(token)


def test_not_yet_valid(fx: Fixture) -> None:
    """A token from the future is refused until the leeway reaches its nbf."""
    token = fx.issuer.issue("alice", [], now=fx.clock() + LEEWAY + 10)
    with pytest.raises(TokenInvalid, match="not valid yet"):
        fx.verifier.verify(token)
    fx.clock.advance(10)
    assert fx.verifier.verify(token).subject == "alice"


def test_wrong_audience(fx: Fixture) -> None:
    """A token for another service is refused."""
    other = TokenIssuer("treescale", "other", fx.key, fx.clock, TTL, 86400)
    with pytest.raises(TokenInvalid, match=re.escape("not 'registry.test'")):
        fx.verifier.verify(other.issue("alice", []))


def test_audience_list(fx: Fixture) -> None:
    """An audience list that names our service is accepted; one that does not, not."""
    assert fx.verifier.verify(fx.corp_token(aud=["x", SERVICE])).subject == "alice"
    with pytest.raises(TokenInvalid):
        fx.verifier.verify(fx.corp_token(aud=["x", "y"]))


def test_unknown_issuer(fx: Fixture) -> None:
    """A token whose issuer is not trusted is refused, even if well signed."""
    stranger = TokenIssuer("stranger", SERVICE, fx.key, fx.clock, TTL, 86400)
    with pytest.raises(TokenInvalid, match="not trusted"):
        fx.verifier.verify(stranger.issue("alice", []))


def test_issuer_claimed_with_another_key(fx: Fixture) -> None:
    """A token claiming our issuer but signed with another key is refused."""
    impostor = TokenIssuer("treescale", SERVICE, ec_key(), fx.clock, TTL, 86400)
    with pytest.raises(TokenInvalid, match="signature"):
        fx.verifier.verify(impostor.issue("alice", []))


def test_tampered_payload(fx: Fixture) -> None:
    """Changing the claims of a signed token breaks its signature."""
    token = fx.issuer.issue("alice", [repository_access("a", "pull")])
    head, _, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["access"][0]["actions"] = ["pull", "push", "delete"]
    body = b64(json.dumps(claims).encode())
    with pytest.raises(TokenInvalid, match="signature"):
        fx.verifier.verify(f"{head}.{body}.{signature}")


def test_tampered_signature(fx: Fixture) -> None:
    """A flipped bit of the signature is refused."""
    token = fx.issuer.issue("alice", [])
    head, body, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[5] ^= 1
    with pytest.raises(TokenInvalid):
        fx.verifier.verify(f"{head}.{body}.{b64(bytes(raw))}")


@pytest.mark.parametrize("signature", [b"", b"x"])
def test_alg_none(fx: Fixture, signature: bytes) -> None:
    """An unsigned token (alg none) is refused, with or without a signature part."""
    token = forged({"alg": "none", "typ": "JWT"}, fx.claims(iss="treescale"), signature)
    with pytest.raises(TokenInvalid):
        fx.verifier.verify(token)


@pytest.mark.parametrize("issuer", ["treescale", "corp"])
def test_hs256_with_the_public_key(fx: Fixture, issuer: str) -> None:
    """An HMAC token keyed with the issuer's public key PEM is refused."""
    public = fx.keys[issuer].public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(fx.claims(iss=issuer)).encode())
    mac = hmac.new(public, f"{head}.{body}".encode(), hashlib.sha256).digest()
    with pytest.raises(TokenInvalid, match="algorithm 'HS256' is not accepted"):
        fx.verifier.verify(f"{head}.{body}.{b64(mac)}")


def test_external_rsa_issuer(fx: Fixture) -> None:
    """An external issuer's RS256 and PS256 tokens verify with its RSA key."""
    for algorithm in ("RS256", "PS256", "RS512"):
        claims = fx.verifier.verify(fx.corp_token(algorithm))
        assert claims.issuer == "corp"
        assert claims.subject == "alice"
        assert claims.accesses == (repository_access("a", "pull"),)


def test_external_ec_issuer() -> None:
    """A P-384 issuer is checked with ES384 only."""
    clock = FakeClock()
    key = ec_key(ec.SECP384R1())
    verifier = TokenVerifier(SERVICE, {"corp": key.public_key()}, clock, LEEWAY)
    now = int(clock())
    claims = {"iss": "corp", "sub": "x", "aud": SERVICE, "exp": now + 60}
    assert verifier.verify(jwt.encode(claims, key, algorithm="ES384")).subject == "x"
    with pytest.raises(TokenInvalid, match="'ES256' is not accepted"):
        verifier.verify(jwt.encode(claims, ec_key(), algorithm="ES256"))


def test_claims_without_nbf_or_access(fx: Fixture) -> None:
    """nbf and access may be absent; the token then grants nothing."""
    claims = fx.verifier.verify(fx.corp_token(nbf=None, access=None, iat=None))
    assert claims.accesses == ()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"exp": None}, "no expiry"),
        ({"exp": "soon"}, "no expiry"),
        ({"exp": True}, "no expiry"),
        ({"nbf": "now"}, "nbf"),
        ({"sub": 5}, "sub"),
        ({"access": {"type": "repository"}}, "not a list"),
        ({"access": ["repository:a:pull"]}, "not an object"),
        ({"access": [{"type": "repository", "actions": ["pull"]}]}, "type or name"),
        ({"access": [{"type": "repository", "name": "a"}]}, "list of actions"),
        (
            {"access": [{"type": "repository", "name": "a", "actions": "pull"}]},
            "list of actions",
        ),
        ({"access": [{"type": "repository", "name": "a", "actions": [1]}]}, "string"),
    ],
)
def test_malformed_claims(fx: Fixture, changes: dict[str, Any], reason: str) -> None:
    """Well-signed tokens whose claims have the wrong shape are refused."""
    with pytest.raises(TokenInvalid, match=reason):
        fx.verifier.verify(fx.corp_token(**changes))


def test_too_long(fx: Fixture) -> None:
    """A token past the size cap is refused before it is decoded."""
    verifier = TokenVerifier(SERVICE, fx.keys, fx.clock, LEEWAY, max_token=100)
    with pytest.raises(TokenInvalid, match="too long"):
        verifier.verify(fx.issuer.issue("alice", []))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "é.é.é",
        "e30.e30.e30",
        b64(b"[]") + "." + b64(b"{}") + ".AAAA",
        b64(b'{"alg":"ES256"}') + "." + b64(b"[1]") + ".AAAA",
        b64(b'{"alg":"ES256"}') + "." + b64(b'{"iss":"treescale"}') + ".AAAA",
        b64(b"\xff\xfe") + ".e30.AAAA",
    ],
)
def test_garbage_tokens(fx: Fixture, token: str) -> None:
    """Malformed tokens are refused with TokenInvalid, never another error."""
    with pytest.raises(TokenInvalid):
        fx.verifier.verify(token)


@settings(max_examples=200)
@given(st.text(max_size=300))
def test_any_text_is_refused_cleanly(token: str) -> None:
    """Arbitrary text is refused with TokenInvalid."""
    verifier = TokenVerifier(SERVICE, {"corp": CORP_KEY.public_key()}, FakeClock(), 0)
    with pytest.raises(TokenInvalid):
        verifier.verify(token)


def test_refresh_round_trip(fx: Fixture) -> None:
    """A refresh token gives back its user and fingerprint."""
    token = fx.issuer.issue_refresh("alice", "f1")
    assert fx.verifier.verify_refresh(token) == ("alice", "f1")


def test_refresh_and_access_tokens_do_not_mix(fx: Fixture) -> None:
    """A refresh token is no access token, and an access token no refresh token."""
    with pytest.raises(TokenInvalid, match=re.escape("not 'registry.test'")):
        fx.verifier.verify(fx.issuer.issue_refresh("alice", "f1"))
    with pytest.raises(TokenInvalid):
        fx.verifier.verify_refresh(fx.issuer.issue("alice", []))


def test_refresh_only_from_our_issuer(fx: Fixture) -> None:
    """An external issuer cannot mint refresh tokens for this registry."""
    token = fx.corp_token(aud=SERVICE + "#refresh", refresh="f1")
    with pytest.raises(TokenInvalid, match="not trusted"):
        fx.verifier.verify_refresh(token)


def test_refresh_expires(fx: Fixture) -> None:
    """A refresh token lives its own lifetime, then is refused."""
    token = fx.issuer.issue_refresh("alice", "f1")
    fx.clock.advance(86400 + LEEWAY + 1)
    with pytest.raises(TokenInvalid, match="expired"):
        fx.verifier.verify_refresh(token)


def test_signing_key_created_private(tmp_path: Path) -> None:
    """A missing signing key is created with mode 0600, then reused."""
    path = tmp_path / "token-key.pem"
    key = load_or_create_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_private_key(path)
    assert key_id(again.public_key()) == key_id(key.public_key())
    assert sorted(os.listdir(tmp_path)) == ["token-key.pem"]


def test_creation_race_keeps_first_key(tmp_path: Path) -> None:
    """When another process links its key first, that key is kept and used."""
    path = tmp_path / "token-key.pem"
    theirs = write_private(path, ec_key())
    before = theirs.read_bytes()
    keys_module._create_private_key(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["token-key.pem"]
    assert isinstance(load_private_key(path), ec.EllipticCurvePrivateKey)


def test_signing_key_folder_missing(tmp_path: Path) -> None:
    """A key that cannot be created is a clear error, not a traceback of os."""
    with pytest.raises(keys_module.KeyUnusable, match="cannot create"):
        load_or_create_private_key(tmp_path / "nowhere" / "key.pem")
