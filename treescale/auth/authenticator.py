"""One decision per request: allowed, or why not and what to ask the client for.

`Authenticator.authorize` is given the request's Authorization header, what the
request is about (its scopes), the peer's address and the base URL the client
used, and answers a `Decision` the application turns into a response:

- mode ``none``: everything is allowed.
- mode ``basic``: an htpasswd user and password on every request. No or bad
  credentials: 401 with a Basic challenge. Signed in but not permitted: 403.
- mode ``token``: a bearer token on every request, from treescale's own token
  endpoint or a trusted issuer. No token or a bad one: 401 with a Bearer
  challenge naming the realm, the service and the scopes wanted; a valid token
  that lacks a scope: 401 with ``error="insufficient_scope"``. The token's
  ``access`` claim is what its issuer granted; the rules are applied when
  treescale issues a token, not again when one is presented.

A request that wants no scope (``GET /v2/``) needs only a signed-in user, or
nothing with anonymous pull. Requests without credentials get what anonymous
pull allows. Failed logins and refused tokens are logged with the user name (when
there is one) and the peer; a password or a token never is.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from twisted.logger import Logger

from treescale.auth.headers import (
    BasicCredentials,
    BearerToken,
    CredentialsInvalid,
    basic_challenge,
    bearer_challenge,
    parse_authorization,
)
from treescale.auth.htpasswd import Htpasswd
from treescale.auth.keys import (
    PublicKey,
    load_or_create_private_key,
    load_public_key,
)
from treescale.auth.policy import Policy
from treescale.auth.scopes import Access, format_scope, merge, within
from treescale.auth.settings import BASIC, NONE, TOKEN, AuthSettings
from treescale.auth.tokens import (
    Clock,
    TokenClaims,
    TokenInvalid,
    TokenIssuer,
    TokenVerifier,
)

TOKEN_PATH = "/token"
"""Where the registry serves its own token endpoint, under its base URL."""

INVALID_REQUEST = "invalid_request"
INVALID_TOKEN = "invalid_token"
INSUFFICIENT_SCOPE = "insufficient_scope"


@dataclass(frozen=True)
class Decision:
    """What to do with one request.

    `status` is 200 when `allowed`, else 401 (send `challenge` as the
    ``WWW-Authenticate`` header) or 403. `reason` says why, for the log and the
    error's detail; it never holds a secret.
    """

    allowed: bool
    user: str | None
    status: int
    challenge: str | None
    reason: str


class Authenticator:
    """Authentication and authorization, as the settings ask.

    Construction reads the htpasswd file and the keys, and creates the signing
    key in token mode when it is missing; it raises `HtpasswdError`,
    `KeyUnusable` or `OSError` when one cannot be used.
    """

    log = Logger()

    def __init__(self, settings: AuthSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.policy = Policy(settings)
        self.users: Htpasswd | None = None
        self.issuer: TokenIssuer | None = None
        self.verifier: TokenVerifier | None = None
        if settings.mode != NONE and settings.htpasswd is not None:
            self.users = Htpasswd(settings.htpasswd, settings.login_cache)
        if settings.mode == TOKEN:
            self.issuer, self.verifier = _token_machinery(settings, clock)

    def authorize(
        self,
        authorization: str | None,
        wanted: Sequence[Access],
        peer: str,
        base_url: str,
    ) -> Decision:
        """Whether a request with this header may do what `wanted` names."""
        if self.settings.mode == NONE:
            return Decision(True, None, 200, None, "authentication is off")

        try:
            credentials = parse_authorization(
                authorization, self.settings.max_authorization
            )
        except CredentialsInvalid as e:
            self.log.warn(
                "unreadable credentials from {peer}: {reason}", peer=peer, reason=str(e)
            )
            return self._unauthorized(wanted, base_url, str(e), INVALID_REQUEST)

        if self.settings.mode == BASIC:
            return self._authorize_basic(credentials, wanted, peer, base_url)
        return self._authorize_token(credentials, wanted, peer, base_url)

    def login(self, user: str, password: str, peer: str) -> bool:
        """Whether `password` is `user`'s; a failure is logged."""
        if self.users is not None and self.users.check(user, password):
            return True
        self.log.warn("failed login as {user} from {peer}", user=user, peer=peer)
        return False

    def grant(self, user: str | None, wanted: Sequence[Access]) -> list[Access]:
        """What of `wanted` the rules give `user`, scopes with nothing left dropped."""
        granted = []
        for access in merge(list(wanted)):
            actions = self.policy.granted(user, access)
            if actions:
                granted.append(Access(access.type, access.name, actions))
        return granted

    def token_realm(self, base_url: str) -> str:
        """The URL a client fetches tokens from."""
        return self.settings.token_realm or base_url.rstrip("/") + TOKEN_PATH

    def _authorize_basic(
        self,
        credentials: BasicCredentials | BearerToken | None,
        wanted: Sequence[Access],
        peer: str,
        base_url: str,
    ) -> Decision:
        if credentials is None:
            if self._anonymous_may(wanted):
                return _allowed(None)
            return self._unauthorized(wanted, base_url, "credentials are required")
        if isinstance(credentials, BearerToken):
            return self._unauthorized(
                wanted, base_url, "this registry takes a user name and password"
            )
        if not self.login(credentials.user, credentials.password, peer):
            return self._unauthorized(wanted, base_url, "wrong user name or password")

        user = credentials.user
        missing = [a for a in wanted if self.policy.granted(user, a) != a.actions]
        if missing:
            return Decision(False, user, 403, None, _not_permitted(user, missing))
        return _allowed(user)

    def _authorize_token(
        self,
        credentials: BasicCredentials | BearerToken | None,
        wanted: Sequence[Access],
        peer: str,
        base_url: str,
    ) -> Decision:
        if credentials is None:
            if self._anonymous_may(wanted):
                return _allowed(None)
            return self._unauthorized(wanted, base_url, "a token is required")
        if isinstance(credentials, BasicCredentials):
            return self._unauthorized(
                wanted, base_url, "this registry takes bearer tokens from its realm"
            )

        if self.verifier is None:
            return self._unauthorized(wanted, base_url, "no token is accepted")
        try:
            claims = self.verifier.verify(credentials.token)
        except TokenInvalid as e:
            self.log.warn(
                "refused token from {peer}: {reason}", peer=peer, reason=e.reason
            )
            return self._unauthorized(wanted, base_url, e.reason, INVALID_TOKEN)

        missing = [a for a in wanted if self._token_grants(claims, a) != a.actions]
        if missing:
            return self._unauthorized(
                wanted,
                base_url,
                _not_permitted(claims.subject, missing),
                INSUFFICIENT_SCOPE,
            )
        return _allowed(claims.subject)

    def _token_grants(self, claims: TokenClaims, access: Access) -> frozenset[str]:
        """What a token, and anonymous pull, allow of `access`."""
        held: frozenset[str] = frozenset()
        for entry in claims.accesses:
            if (entry.type, entry.name) == (access.type, access.name):
                held |= entry.actions
        return within(access.actions, held) | self.policy.granted(None, access)

    def _anonymous_may(self, wanted: Sequence[Access]) -> bool:
        """Whether a request without credentials may do what it asks.

        ``GET /v2/`` (wanting nothing) always challenges an anonymous client, even
        with anonymous pull: that answer is how clients learn to send the
        credentials they hold; without it skopeo and docker never do, and every
        push fails. Anonymous pulls are let in by their own scopes.
        """
        if not wanted:
            return False
        return all(self.policy.granted(None, a) == a.actions for a in wanted)

    def _unauthorized(
        self,
        wanted: Sequence[Access],
        base_url: str,
        reason: str,
        error: str | None = None,
    ) -> Decision:
        """A 401 with the challenge of the mode."""
        if self.settings.mode == BASIC:
            challenge = basic_challenge(self.settings.realm)
        else:
            challenge = bearer_challenge(
                self.token_realm(base_url), self.settings.token_service, wanted, error
            )
        return Decision(False, None, 401, challenge, reason)


def _token_machinery(
    settings: AuthSettings, clock: Clock
) -> tuple[TokenIssuer, TokenVerifier]:
    """The issuer of our own tokens and the verifier of ours and trusted ones."""
    key = load_or_create_private_key(settings.token_key)
    issuer = TokenIssuer(
        settings.token_issuer,
        settings.token_service,
        key,
        clock,
        settings.token_ttl,
        settings.refresh_ttl,
    )
    keys: dict[str, PublicKey] = {settings.token_issuer: issuer.public_key}
    for trusted in settings.trusted_issuers:
        keys[trusted.issuer] = load_public_key(trusted.public_key)
    verifier = TokenVerifier(
        settings.token_service,
        keys,
        clock,
        settings.leeway,
        own_issuer=settings.token_issuer,
        max_token=settings.max_authorization,
    )
    return issuer, verifier


def _allowed(user: str | None) -> Decision:
    return Decision(True, user, 200, None, "allowed")


def _not_permitted(user: str | None, missing: Sequence[Access]) -> str:
    who = repr(user) if user is not None else "anonymous"
    scopes = " ".join(format_scope(access) for access in missing)
    return f"{who} may not {scopes}"
