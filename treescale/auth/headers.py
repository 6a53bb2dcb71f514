"""The ``Authorization`` header read, and the ``WWW-Authenticate`` challenges.

Reading never raises anything but `CredentialsInvalid`: a header from the network
may be huge, not base64, not UTF-8 or lack its colon, and each of those is only a
refusal. The password is kept out of every ``repr``, so it cannot reach a log by
way of a value printed whole.
"""

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field

from treescale.auth.scopes import Access, format_scope, merge


class CredentialsInvalid(ValueError):
    """An Authorization header that cannot be read; the reason names no secret."""


@dataclass(frozen=True)
class BasicCredentials:
    """A user name and password from HTTP Basic."""

    user: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class BearerToken:
    """A bearer token, unchecked."""

    token: str = field(repr=False)


def parse_authorization(
    value: str | None, limit: int
) -> BasicCredentials | BearerToken | None:
    """The credentials of a header value; None when there is no header."""
    if value is None or not value.strip():
        return None
    if len(value) > limit:
        raise CredentialsInvalid(
            f"the Authorization header is longer than {limit} characters"
        )

    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() == "basic":
        credentials = _basic(rest.strip())
        # skopeo without credentials answers a Basic challenge with an empty user
        # and password: that is no credentials at all, not a failed login.
        if credentials == BasicCredentials("", ""):
            return None
        return credentials
    if scheme.lower() == "bearer" and rest.strip():
        return BearerToken(rest.strip())
    raise CredentialsInvalid("the Authorization header is neither Basic nor Bearer")


def _basic(encoded: str) -> BasicCredentials:
    try:
        decoded = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as e:
        raise CredentialsInvalid("the Basic credentials are not base64") from e
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CredentialsInvalid("the Basic credentials are not UTF-8") from e

    user, colon, password = text.partition(":")
    if not colon or (not user and password):
        raise CredentialsInvalid("the Basic credentials are not user:password")
    return BasicCredentials(user, password)


def basic_challenge(realm: str) -> str:
    """The challenge asking for a user name and password."""
    return f"Basic realm={_quoted(realm)}"


def bearer_challenge(
    realm: str,
    service: str,
    scopes: Sequence[Access] = (),
    error: str | None = None,
) -> str:
    """The challenge sending a client to the token endpoint at `realm`."""
    parameters = [f"realm={_quoted(realm)}", f"service={_quoted(service)}"]
    if scopes:
        text = " ".join(format_scope(access) for access in merge(list(scopes)))
        parameters.append(f"scope={_quoted(text)}")
    if error is not None:
        parameters.append(f"error={_quoted(error)}")
    return "Bearer " + ",".join(parameters)


def _quoted(value: str) -> str:
    """A quoted-string of RFC 9110; control characters, never valid there, go."""
    printable = "".join(c for c in value if c >= " " and c != "\x7f")
    return '"' + printable.replace("\\", "\\\\").replace('"', '\\"') + '"'
