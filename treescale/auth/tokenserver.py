"""The token endpoint's logic, from a decoded request to the JSON answer.

Docker's clients ask for tokens two ways, and both are served:

- ``GET ?service=&scope=&account=`` with optional Basic credentials (the Docker
  token specification); ``offline_token=true`` also asks for a refresh token.
  Without credentials the token holds what anonymous requests may do.
- ``POST`` of a form (the OAuth 2 flavour docker tries first): ``grant_type``
  ``password`` with ``username`` and ``password``, or ``refresh_token`` with
  ``refresh_token``; ``access_type=offline`` asks for a refresh token.

The answer is ``{"token", "access_token", "expires_in", "issued_at"}`` (plus
``refresh_token`` when asked for). A token holds the intersection of the scopes
asked for and those the rules permit: an unpermitted scope is silently reduced, as
CNCF distribution's token servers do, and the registry then answers 401 with
``insufficient_scope`` when the client tries. Bad credentials get a 401 with the
spec's error body and a Basic challenge; a request that is malformed or names
another service, a 400. Nothing a client sends leads to a 500.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from twisted.logger import Logger

from treescale.auth.authenticator import Authenticator
from treescale.auth.headers import (
    BearerToken,
    CredentialsInvalid,
    basic_challenge,
    parse_authorization,
)
from treescale.auth.scopes import Access, ScopeInvalid, format_scope, parse_scopes
from treescale.auth.tokens import TokenInvalid, TokenIssuer, TokenVerifier
from treescale.registry.errors import (
    METHOD_NOT_ALLOWED,
    UNAUTHORIZED,
    ApiError,
    ErrorCode,
    error_body,
)

Args = Mapping[str, Sequence[str]]

TOKEN_REQUEST_INVALID = ErrorCode("UNSUPPORTED", 400, "the token request is invalid")

_NO_STORE = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))


@dataclass(frozen=True)
class TokenReply:
    """A response of the token endpoint: status, headers and body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


class TokenServer:
    """Answers token requests for an `Authenticator` in token mode."""

    log = Logger()

    def __init__(self, authenticator: Authenticator) -> None:
        if authenticator.issuer is None or authenticator.verifier is None:
            raise ValueError("the token endpoint serves only in token mode")
        self._auth = authenticator
        self._issuer: TokenIssuer = authenticator.issuer
        self._verifier: TokenVerifier = authenticator.verifier

    def handle(
        self, method: str, args: Args, authorization: str | None, peer: str
    ) -> TokenReply:
        """The reply to one request; `args` holds its query and form fields."""
        try:
            if method == "GET":
                return self._get(args, authorization, peer)
            if method == "POST":
                return self._post(args, peer)
            raise ApiError(METHOD_NOT_ALLOWED, headers={"Allow": "GET, POST"})
        except ApiError as error:
            return error_reply(error)

    def _get(self, args: Args, authorization: str | None, peer: str) -> TokenReply:
        self._check_service(args)
        scopes = self._scopes(args)
        user = self._basic_user(authorization, peer)

        account = _one(args, "account")
        if user is not None and account is not None and account != user:
            raise _invalid(f"account {account!r} is not the user signed in")
        offline = _one(args, "offline_token") == "true"
        return self._token_reply(user, scopes, offline, peer)

    def _post(self, args: Args, peer: str) -> TokenReply:
        self._check_service(args)
        scopes = self._scopes(args)

        grant_type = _one(args, "grant_type")
        if grant_type == "password":
            user = _required(args, "username")
            if not self._auth.login(user, _required(args, "password"), peer):
                raise self._unauthorized("wrong user name or password")
        elif grant_type == "refresh_token":
            user = self._refreshed_user(_required(args, "refresh_token"), peer)
        else:
            raise _invalid(
                f"grant_type {grant_type!r} is not supported: "
                "use password or refresh_token"
            )

        offline = _one(args, "access_type") == "offline"
        return self._token_reply(user, scopes, offline, peer)

    def _basic_user(self, authorization: str | None, peer: str) -> str | None:
        """The user of the request's Basic credentials; None when it has none."""
        try:
            credentials = parse_authorization(
                authorization, self._auth.settings.max_authorization
            )
        except CredentialsInvalid as e:
            self.log.warn(
                "unreadable credentials from {peer}: {reason}", peer=peer, reason=str(e)
            )
            raise self._unauthorized(str(e)) from e

        if credentials is None:
            return None
        if isinstance(credentials, BearerToken):
            raise self._unauthorized("sign in with a user name and password")
        if not self._auth.login(credentials.user, credentials.password, peer):
            raise self._unauthorized("wrong user name or password")
        return credentials.user

    def _refreshed_user(self, token: str, peer: str) -> str:
        """The user a refresh token was given to, while it is still theirs."""
        try:
            user, fingerprint = self._verifier.verify_refresh(token)
        except TokenInvalid as e:
            self.log.warn(
                "refused refresh token from {peer}: {reason}",
                peer=peer,
                reason=e.reason,
            )
            raise self._unauthorized(e.reason) from e

        users = self._auth.users
        if users is None or users.fingerprint(user) != fingerprint:
            self.log.warn(
                "failed login as {user} from {peer}: refresh token outdated",
                user=user,
                peer=peer,
            )
            raise self._unauthorized("the refresh token is outdated: sign in again")
        return user

    def _unauthorized(self, detail: str) -> ApiError:
        """A 401 asking the client to sign in with a user name and password."""
        challenge = basic_challenge(self._auth.settings.realm)
        return ApiError(UNAUTHORIZED, detail, headers={"WWW-Authenticate": challenge})

    def _check_service(self, args: Args) -> None:
        service = _one(args, "service")
        wanted = self._auth.settings.token_service
        if service is not None and service != wanted:
            raise _invalid(f"service {service!r} is not {wanted!r}")

    def _scopes(self, args: Args) -> list[Access]:
        accesses: list[Access] = []
        for value in args.get("scope", ()):
            try:
                accesses.extend(parse_scopes(value))
            except ScopeInvalid as e:
                raise _invalid(str(e)) from e

        limit = self._auth.settings.max_scopes
        if len(accesses) > limit:
            raise _invalid(f"{len(accesses)} scopes asked for; at most {limit}")
        return accesses

    def _token_reply(
        self, user: str | None, scopes: list[Access], offline: bool, peer: str
    ) -> TokenReply:
        now = self._auth.clock()
        granted = self._auth.grant(user, scopes)
        token = self._issuer.issue(user, granted, now=now)
        answer: dict[str, object] = {
            "token": token,
            "access_token": token,
            "expires_in": self._issuer.ttl,
            "issued_at": _timestamp(now),
        }

        users = self._auth.users
        fingerprint = users.fingerprint(user) if user and users else None
        if offline and user is not None and fingerprint is not None:
            answer["refresh_token"] = self._issuer.issue_refresh(
                user, fingerprint, now=now
            )

        self.log.info(
            "token for {user} from {peer}: {scopes}",
            user=user if user is not None else "anonymous",
            peer=peer,
            scopes=" ".join(format_scope(access) for access in granted) or "none",
        )
        body = json.dumps(answer, sort_keys=True).encode("utf-8")
        return TokenReply(200, (("Content-Type", "application/json"), *_NO_STORE), body)


def error_reply(error: ApiError) -> TokenReply:
    """The reply carrying the spec's error body for `error`."""
    headers = (
        ("Content-Type", "application/json"),
        *_NO_STORE,
        *error.headers.items(),
    )
    return TokenReply(error.status, tuple(headers), error_body(error))


def _one(args: Args, name: str) -> str | None:
    values = args.get(name)
    return values[0] if values else None


def _required(args: Args, name: str) -> str:
    value = _one(args, name)
    if not value:
        raise _invalid(f"the field {name!r} is required")
    return value


def _invalid(detail: str) -> ApiError:
    return ApiError(TOKEN_REQUEST_INVALID, detail)


def _timestamp(seconds: float) -> str:
    """RFC 3339 in UTC, as docker reads ``issued_at``."""
    moment = datetime.fromtimestamp(int(seconds), UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
