"""Signed JWT bearer tokens with repository scopes, issued and verified.

A token is what the Docker token specification describes: a JWT whose claims are
``iss``, ``sub`` (the user; empty for an anonymous token), ``aud`` (the registry's
service name), ``exp``, ``nbf``, ``iat``, ``jti`` and ``access``, a list of
``{"type", "name", "actions"}``. treescale signs its own with ES256 and names its
key in the header's ``kid``.

Verification trusts nothing in a token before its signature is checked, except to
find the key: the ``iss`` claim picks the issuer's key, and the header's ``alg``
must be one that key's kind allows (never ``none``, never an HMAC). Then the
audience must be this registry's service, and ``exp``/``nbf`` must hold at the
injected clock's time, give or take a small leeway.

Refresh tokens (docker's stored "identity token") are tokens of treescale's own
issuer for an audience of their own (the service name with ``#refresh`` appended),
so one can never pass for an access token or the other way round. Each carries a
fingerprint of the user's password hash: changing the password, or removing the
user, ends it.
"""

import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.types import Options

from treescale.auth.keys import SIGNING_ALGORITHM, PublicKey, algorithms_for, key_id
from treescale.auth.scopes import Access

Clock = Callable[[], float]

REFRESH_AUDIENCE_SUFFIX = "#refresh"
REFRESH_CLAIM = "refresh"
DEFAULT_MAX_TOKEN = 16 * 1024

_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")

# Claims are checked here, at the injected clock's time, not by PyJWT at the
# machine's: only the signature is left to it.
_SIGNATURE_ONLY: Options = {
    "verify_signature": True,
    "verify_aud": False,
    "verify_exp": False,
    "verify_iat": False,
    "verify_iss": False,
    "verify_jti": False,
    "verify_nbf": False,
    "verify_sub": False,
}
_UNVERIFIED: Options = {"verify_signature": False}


class TokenInvalid(Exception):
    """A token that is not accepted, and why (for logs and error details)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says: who, from which issuer, may do what."""

    subject: str | None
    issuer: str
    accesses: tuple[Access, ...]


class TokenIssuer:
    """Signs access and refresh tokens with this registry's key."""

    def __init__(
        self,
        issuer: str,
        service: str,
        key: ec.EllipticCurvePrivateKey,
        clock: Clock,
        ttl: int,
        refresh_ttl: int,
    ) -> None:
        self.issuer = issuer
        self.service = service
        self.ttl = ttl
        self.refresh_ttl = refresh_ttl
        self._key = key
        self._clock = clock
        self._kid = key_id(key.public_key())

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The key that checks this issuer's tokens."""
        return self._key.public_key()

    def issue(
        self,
        user: str | None,
        accesses: Iterable[Access],
        *,
        now: float | None = None,
    ) -> str:
        """An access token for `user` (None: anonymous) holding `accesses`."""
        access = [
            {"type": a.type, "name": a.name, "actions": sorted(a.actions)}
            for a in accesses
        ]
        return self._sign(user or "", self.service, self.ttl, now, access=access)

    def issue_refresh(
        self, user: str, fingerprint: str, *, now: float | None = None
    ) -> str:
        """A refresh token for `user`, valid while their password is unchanged."""
        return self._sign(
            user,
            self.service + REFRESH_AUDIENCE_SUFFIX,
            self.refresh_ttl,
            now,
            **{REFRESH_CLAIM: fingerprint},
        )

    def _sign(
        self,
        subject: str,
        audience: str,
        ttl: int,
        now: float | None,
        **extra: Any,
    ) -> str:
        issued = int(self._clock() if now is None else now)
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "exp": issued + ttl,
            "nbf": issued,
            "iat": issued,
            "jti": secrets.token_urlsafe(18),
            **extra,
        }
        return jwt.encode(
            claims,
            self._key,
            algorithm=SIGNING_ALGORITHM,
            headers={"kid": self._kid, "typ": "JWT"},
        )


class TokenVerifier:
    """Checks tokens of this registry's own issuer and of the trusted ones."""

    def __init__(
        self,
        service: str,
        keys: Mapping[str, PublicKey],
        clock: Clock,
        leeway: int,
        *,
        own_issuer: str | None = None,
        max_token: int = DEFAULT_MAX_TOKEN,
    ) -> None:
        self.service = service
        self._keys = dict(keys)
        self._clock = clock
        self._leeway = leeway
        self._own_issuer = own_issuer
        self._max_token = max_token

    def verify(self, token: str) -> TokenClaims:
        """The claims of an access token; `TokenInvalid` when it is not accepted."""
        claims = self._decode(token, self.service, self._keys)
        subject = claims.get("sub", "")
        if not isinstance(subject, str):
            raise TokenInvalid("the sub claim is not a string")
        return TokenClaims(
            subject=subject or None,
            issuer=claims["iss"],
            accesses=_accesses(claims.get("access", [])),
        )

    def verify_refresh(self, token: str) -> tuple[str, str]:
        """The user and password fingerprint of one of our own refresh tokens."""
        if self._own_issuer is None or self._own_issuer not in self._keys:
            raise TokenInvalid("this registry issues no refresh tokens")
        own = {self._own_issuer: self._keys[self._own_issuer]}
        claims = self._decode(token, self.service + REFRESH_AUDIENCE_SUFFIX, own)
        subject = claims.get("sub")
        fingerprint = claims.get(REFRESH_CLAIM)
        if not isinstance(subject, str) or not subject:
            raise TokenInvalid("the refresh token names no user")
        if not isinstance(fingerprint, str):
            raise TokenInvalid("the refresh token has no password fingerprint")
        return subject, fingerprint

    def _decode(
        self, token: str, audience: str, keys: Mapping[str, PublicKey]
    ) -> dict[str, Any]:
        """The claims of a token signed by one of `keys` for `audience`."""
        if len(token) > self._max_token:
            raise TokenInvalid("the token is too long")
        if not _JWT_SHAPE.fullmatch(token):
            raise TokenInvalid("not a signed JWT")

        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
            issuer = jwt.decode(token, options=_UNVERIFIED).get("iss")
        except (jwt.PyJWTError, ValueError) as e:
            raise TokenInvalid(f"malformed token: {e}") from e
        if not isinstance(issuer, str) or issuer not in keys:
            raise TokenInvalid(f"issuer {issuer!r} is not trusted")
        key = keys[issuer]
        if algorithm not in algorithms_for(key):
            raise TokenInvalid(
                f"algorithm {algorithm!r} is not accepted for issuer {issuer!r}"
            )

        try:
            claims = jwt.decode(
                token, key, algorithms=[algorithm], options=_SIGNATURE_ONLY
            )
        except jwt.InvalidSignatureError as e:
            raise TokenInvalid("the signature does not match") from e
        except (jwt.PyJWTError, ValueError) as e:
            raise TokenInvalid(f"malformed token: {e}") from e

        self._check_audience(claims.get("aud"), audience)
        self._check_times(claims)
        return claims

    def _check_audience(self, value: object, audience: str) -> None:
        audiences = value if isinstance(value, list) else [value]
        if audience not in audiences:
            raise TokenInvalid(f"the token is for {value!r}, not {audience!r}")

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock()
        expires = claims.get("exp")
        if not _is_number(expires):
            raise TokenInvalid("the token has no expiry time")
        if now > expires + self._leeway:
            raise TokenInvalid("the token has expired")

        not_before = claims.get("nbf")
        if not_before is None:
            return
        if not _is_number(not_before):
            raise TokenInvalid("the nbf claim is not a time")
        if now + self._leeway < not_before:
            raise TokenInvalid("the token is not valid yet")


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _accesses(value: object) -> tuple[Access, ...]:
    """The ``access`` claim as values; `TokenInvalid` when it has another shape."""
    if not isinstance(value, list):
        raise TokenInvalid("the access claim is not a list")
    return tuple(_access(entry) for entry in value)


def _access(entry: object) -> Access:
    if not isinstance(entry, dict):
        raise TokenInvalid("an entry of the access claim is not an object")
    kind, name, actions = entry.get("type"), entry.get("name"), entry.get("actions")
    if not isinstance(kind, str) or not isinstance(name, str):
        raise TokenInvalid("an entry of the access claim lacks its type or name")
    if not isinstance(actions, Sequence) or isinstance(actions, str):
        raise TokenInvalid("an entry of the access claim has no list of actions")
    if not all(isinstance(action, str) for action in actions):
        raise TokenInvalid("an action of the access claim is not a string")
    return Access(kind, name, frozenset(actions))
