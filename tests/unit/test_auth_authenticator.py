"""Tests of the per-request decision in every mode, and of what gets logged."""

import base64
import stat
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.unit.test_auth_helpers import (
    FakeClock,
    LogCapture,
    basic,
    ec_key,
    settings,
    write_htpasswd,
    write_public,
)
from treescale.auth.authenticator import Authenticator, Decision
from treescale.auth.scopes import Access, catalog_access, repository_access
from treescale.auth.settings import AuthSettings

BASE = "http://registry.test:5000"
PEER = "192.0.2.7"
PULL_A = repository_access("team/a", "pull")
PUSH_A = repository_access("team/a", "pull", "push")
PULL_B = repository_access("other/b", "pull")

RULES = [
    {"repositories": ["team/*"], "users": ["alice"], "actions": ["pull", "push"]},
    {"repositories": ["**"], "users": ["bob"], "actions": ["pull"]},
]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_htpasswd(tmp_path / "htpasswd", {"alice": "alice-pw", "bob": "bob-pw"})
    return tmp_path


def make(folder: Path, **table: Any) -> Authenticator:
    return Authenticator(settings(folder, **table), FakeClock())


def decide(
    auth: Authenticator, header: str | None, *wanted: Access, base: str = BASE
) -> Decision:
    return auth.authorize(header, list(wanted), PEER, base)


MALFORMED = [
    "Basic !!!not-base64!!!",
    "Basic " + base64.b64encode(b"no-colon").decode(),
    "Basic " + base64.b64encode(b":empty-user").decode(),
    "Basic " + base64.b64encode(b"caf\xe9:pw").decode(),
    "Basic " + "A" * 20000,
    "Basic",
    "Basic    ",
    "Digest username=alice",
    "Bearer",
    "Basic YWxp\x00Y2U6cHc=",
    "Basic ÿÿÿÿ",
    "\x00\x01",
]


def test_none_mode_allows_everything(folder: Path) -> None:
    """Mode none allows every request, whatever its header says."""
    auth = make(folder)
    for header in [None, "garbage", basic("alice", "wrong")]:
        decision = decide(auth, header, PUSH_A, catalog_access())
        assert decision == Decision(True, None, 200, None, "authentication is off")


class TestBasic:
    """Basic mode: a user and password on every request."""

    @pytest.fixture
    def auth(self, folder: Path) -> Authenticator:
        return make(folder, mode="basic", htpasswd="htpasswd", realm="Treescale R")

    def test_good_credentials(self, auth: Authenticator) -> None:
        """A right password is allowed, as that user."""
        decision = decide(auth, basic("alice", "alice-pw"), PUSH_A)
        assert (decision.allowed, decision.user, decision.status) == (
            True,
            "alice",
            200,
        )

    def test_scheme_is_case_insensitive(self, auth: Authenticator) -> None:
        """'basic' in any case is Basic."""
        header = basic("alice", "alice-pw").replace("Basic", "bAsIc")
        assert decide(auth, header, PULL_A).allowed

    def test_no_credentials(self, auth: Authenticator) -> None:
        """No credentials: 401 with the Basic challenge of the realm."""
        decision = decide(auth, None, PULL_A)
        assert (decision.allowed, decision.status) == (False, 401)
        assert decision.challenge == 'Basic realm="Treescale R"'

    @pytest.mark.parametrize("password", ["wrong", "", "alice-pw "])
    def test_wrong_password(self, auth: Authenticator, password: str) -> None:
        """A wrong password is a 401 with the challenge, and is logged."""
        with LogCapture() as log:
            decision = decide(auth, basic("alice", password), PULL_A)
        assert (decision.status, decision.user) == (401, None)
        assert decision.challenge == 'Basic realm="Treescale R"'
        failures = [e for e in log.events if e.get("user") == "alice"]
        assert len(failures) == 1
        assert failures[0]["peer"] == PEER
        assert "failed login as alice from 192.0.2.7" in log.texts()

    def test_password_with_a_nul(self, auth: Authenticator) -> None:
        """A password with a NUL byte after the right one is still wrong."""
        assert decide(auth, basic("alice", "alice-pw\x00x"), PULL_A).status == 401
        assert decide(auth, basic("alice", "\x00"), PULL_A).status == 401

    def test_unknown_user(self, auth: Authenticator) -> None:
        """An unknown user is refused like a wrong password."""
        decision = decide(auth, basic("mallory", "alice-pw"), PULL_A)
        assert decision.status == 401

    def test_passwords_never_logged(self, auth: Authenticator) -> None:
        """Neither a right nor a wrong password appears in any log event."""
        with LogCapture() as log:
            decide(auth, basic("alice", "alice-pw"), PULL_A)
            decide(auth, basic("alice", "Wr0ng-Secret"), PULL_A)
            decide(auth, basic("Wr0ng-User", "Other-Secret"), PULL_A)
        text = log.everything()
        assert "Wr0ng-User" in text
        for secret in ("alice-pw", "Wr0ng-Secret", "Other-Secret"):
            assert secret not in text
            assert base64.b64encode(secret.encode()).decode() not in text

    def test_no_rules_everyone_signed_in_may_all(self, auth: Authenticator) -> None:
        """Without rules any signed-in user may push, delete and list."""
        wanted = [repository_access("x/y", "push", "delete"), catalog_access()]
        assert decide(auth, basic("bob", "bob-pw"), *wanted).allowed

    def test_not_permitted_is_403(self, folder: Path) -> None:
        """Signed in but not permitted: 403, no challenge, the reason names it."""
        auth = make(folder, mode="basic", htpasswd="htpasswd", rule=RULES)
        decision = decide(auth, basic("bob", "bob-pw"), PUSH_A)
        assert (decision.allowed, decision.status, decision.challenge) == (
            False,
            403,
            None,
        )
        assert decision.user == "bob"
        assert "repository:team/a:pull,push" in decision.reason
        assert decide(auth, basic("bob", "bob-pw"), PULL_A, PULL_B).allowed
        assert decide(auth, basic("alice", "alice-pw"), PUSH_A).allowed
        assert decide(auth, basic("alice", "alice-pw"), PULL_B).status == 403

    def test_base_check(self, auth: Authenticator) -> None:
        """Wanting nothing (GET /v2/) needs a signed-in user."""
        assert decide(auth, basic("alice", "alice-pw")).allowed
        assert decide(auth, None).status == 401
        assert decide(auth, basic("alice", "nope")).status == 401

    def test_anonymous_pull(self, folder: Path) -> None:
        """With anonymous pull, no credentials may pull and list, not push; the
        version check still challenges, so clients learn to send credentials."""
        auth = make(folder, mode="basic", htpasswd="htpasswd", anonymous_pull=True)
        assert decide(auth, None).status == 401
        assert decide(auth, None, PULL_A, catalog_access()).allowed
        assert decide(auth, None, PULL_A).user is None
        assert decide(auth, None, PUSH_A).status == 401
        assert decide(auth, basic("alice", "bad"), PULL_A).status == 401

    def test_empty_basic_credentials_are_anonymous(self, folder: Path) -> None:
        """skopeo answers a challenge it has no credentials for with ``:``: that
        is an anonymous request, let in where anonymous pull is on."""
        auth = make(folder, mode="basic", htpasswd="htpasswd", anonymous_pull=True)
        empty = "Basic " + base64.b64encode(b":").decode()
        assert decide(auth, empty, PULL_A).allowed
        assert decide(auth, empty, PUSH_A).status == 401

    def test_bearer_in_basic_mode(self, auth: Authenticator) -> None:
        """A bearer token is not credentials in Basic mode."""
        decision = decide(auth, "Bearer abc.def.ghi", PULL_A)
        assert decision.status == 401
        assert decision.challenge is not None
        assert decision.challenge.startswith("Basic ")

    @pytest.mark.parametrize("header", MALFORMED)
    def test_malformed_headers(self, auth: Authenticator, header: str) -> None:
        """A malformed Authorization header is a 401, never an exception."""
        decision = decide(auth, header, PULL_A)
        assert (decision.allowed, decision.status) == (False, 401)
        assert decision.challenge == 'Basic realm="Treescale R"'

    def test_password_with_colons_and_unicode(self, folder: Path) -> None:
        """A password may hold colons and any Unicode."""
        write_htpasswd(folder / "htpasswd", {"zoë": "a:b:ç:€"})
        auth = make(folder, mode="basic", htpasswd="htpasswd")
        assert decide(auth, basic("zoë", "a:b:ç:€"), PULL_A).user == "zoë"


@hypothesis_settings(
    max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    header=st.text(max_size=300)
    | st.binary(max_size=200).map(lambda b: "Basic " + base64.b64encode(b).decode())
)
def test_hostile_headers_decide(folder: Path, header: str) -> None:
    """Any header value gets a decision with a status, in both modes."""
    for mode in ("basic", "token"):
        auth = make(folder, mode=mode, htpasswd="htpasswd")
        decision = decide(auth, header, PULL_A)
        assert decision.status in (200, 401, 403)
        assert decision.allowed == (decision.status == 200)


class TestToken:
    """Token mode: bearer tokens from our endpoint or a trusted issuer."""

    @pytest.fixture
    def auth(self, folder: Path) -> Authenticator:
        return make(folder, mode="token", htpasswd="htpasswd", rule=RULES)

    def token(self, auth: Authenticator, user: str | None, *accesses: Access) -> str:
        assert auth.issuer is not None
        return auth.issuer.issue(user, accesses, now=auth.clock())

    def test_signing_key_created(self, folder: Path, auth: Authenticator) -> None:
        """Token mode creates its signing key, private to its owner."""
        mode = (folder / "token-key.pem").stat().st_mode
        assert stat.S_IMODE(mode) == 0o600

    def test_no_token_is_challenged(self, auth: Authenticator) -> None:
        """No token: 401 with a Bearer challenge to our endpoint and the scope."""
        decision = decide(auth, None, PUSH_A, base=BASE + "/")
        assert (decision.allowed, decision.status) == (False, 401)
        assert decision.challenge == (
            'Bearer realm="http://registry.test:5000/token",service="treescale",'
            'scope="repository:team/a:pull,push"'
        )

    def test_challenge_with_several_scopes(self, auth: Authenticator) -> None:
        """Several scopes go space-separated into one scope parameter."""
        decision = decide(auth, None, PULL_A, PULL_B, catalog_access())
        assert decision.challenge is not None
        assert (
            'scope="repository:team/a:pull repository:other/b:pull registry:catalog:*"'
        ) in decision.challenge

    def test_base_check_challenge_has_no_scope(self, auth: Authenticator) -> None:
        """GET /v2/ without a token is challenged without a scope."""
        decision = decide(auth, None)
        assert decision.challenge == (
            'Bearer realm="http://registry.test:5000/token",service="treescale"'
        )

    def test_configured_realm(self, folder: Path) -> None:
        """A token_realm setting is the challenge's realm."""
        auth = make(
            folder,
            mode="token",
            token_realm="https://auth.example/token",
            token_service="reg",
        )
        decision = decide(auth, None, PULL_A)
        assert decision.challenge is not None
        assert decision.challenge.startswith(
            'Bearer realm="https://auth.example/token",service="reg"'
        )

    def test_valid_token(self, auth: Authenticator) -> None:
        """A token holding the scope is allowed, as its subject."""
        header = "Bearer " + self.token(auth, "alice", PUSH_A)
        decision = decide(auth, header, PUSH_A)
        assert (decision.allowed, decision.user, decision.status) == (
            True,
            "alice",
            200,
        )
        assert decide(auth, header).allowed

    def test_token_scope_is_authoritative(self, auth: Authenticator) -> None:
        """A token's access claim decides, not the rules: it was granted already."""
        header = "Bearer " + self.token(auth, "bob", PUSH_A)
        assert decide(auth, header, PUSH_A).allowed

    def test_insufficient_scope(self, auth: Authenticator) -> None:
        """A valid token without the scope: 401 insufficient_scope, scope asked."""
        header = "Bearer " + self.token(auth, "alice", PULL_A)
        decision = decide(auth, header, PUSH_A)
        assert decision.status == 401
        assert decision.challenge == (
            'Bearer realm="http://registry.test:5000/token",service="treescale",'
            'scope="repository:team/a:pull,push",error="insufficient_scope"'
        )

    def test_token_for_another_repository(self, auth: Authenticator) -> None:
        """A token for one repository does not open another."""
        header = "Bearer " + self.token(auth, "alice", PUSH_A)
        assert decide(auth, header, PULL_B).status == 401

    def test_invalid_token(self, auth: Authenticator) -> None:
        """A bad token: 401 invalid_token, logged with the peer, token not logged."""
        assert auth.issuer is not None
        token = self.token(auth, "alice", PULL_A)
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        with LogCapture() as log:
            decision = decide(auth, "Bearer " + forged, PULL_A)
        assert decision.status == 401
        assert decision.challenge is not None
        assert decision.challenge.endswith('error="invalid_token"')
        assert any(e.get("peer") == PEER for e in log.events)
        assert forged not in log.everything()

    def test_expired_token(self, auth: Authenticator) -> None:
        """An expired token is refused."""
        header = "Bearer " + self.token(auth, "alice", PULL_A)
        assert isinstance(auth.clock, FakeClock)
        auth.clock.advance(auth.settings.token_ttl + auth.settings.leeway + 1)
        decision = decide(auth, header, PULL_A)
        assert decision.status == 401
        assert "expired" in decision.reason

    def test_basic_credentials_are_sent_for_a_token(self, auth: Authenticator) -> None:
        """Basic credentials at the registry get the Bearer challenge instead."""
        decision = decide(auth, basic("alice", "alice-pw"), PULL_A)
        assert decision.status == 401
        assert decision.challenge is not None
        assert decision.challenge.startswith('Bearer realm="')

    def test_anonymous_pull(self, folder: Path) -> None:
        """With anonymous pull, no token may pull; pushing still needs one, and
        the version check still challenges."""
        auth = make(folder, mode="token", htpasswd="htpasswd", anonymous_pull=True)
        assert decide(auth, None, PULL_A).allowed
        assert decide(auth, None).status == 401
        assert decide(auth, None, PUSH_A).status == 401
        header = "Bearer " + self.token(auth, None, PULL_B)
        assert decide(auth, header, PULL_A).allowed

    def test_anonymous_token(self, auth: Authenticator) -> None:
        """An anonymous token is allowed what it holds, as no user."""
        header = "Bearer " + self.token(auth, None, PULL_A)
        decision = decide(auth, header, PULL_A)
        assert (decision.allowed, decision.user) == (True, None)

    def test_external_issuer(self, folder: Path) -> None:
        """A trusted issuer's token is accepted with its own grants."""
        corp = ec_key()
        write_public(folder / "corp.pem", corp)
        auth = make(
            folder,
            mode="token",
            trusted_issuer=[{"issuer": "corp", "public_key": "corp.pem"}],
        )
        now = int(auth.clock())
        claims = {
            "iss": "corp",
            "sub": "erin",
            "aud": "treescale",
            "exp": now + 60,
            "access": [{"type": "repository", "name": "x", "actions": ["*"]}],
        }
        token = jwt.encode(claims, corp, algorithm="ES256")
        decision = decide(auth, "Bearer " + token, repository_access("x", "delete"))
        assert (decision.allowed, decision.user) == (True, "erin")
        claims["aud"] = "someone-else"
        token = jwt.encode(claims, corp, algorithm="ES256")
        assert decide(auth, "Bearer " + token, PULL_A).status == 401

    def test_refresh_token_is_not_a_bearer(self, auth: Authenticator) -> None:
        """A refresh token presented to the registry is refused."""
        assert auth.issuer is not None
        refresh = auth.issuer.issue_refresh("alice", "f", now=auth.clock())
        assert decide(auth, "Bearer " + refresh, PULL_A).status == 401

    @pytest.mark.parametrize("header", MALFORMED)
    def test_malformed_headers(self, auth: Authenticator, header: str) -> None:
        """A malformed Authorization header is a 401 with a Bearer challenge."""
        decision = decide(auth, header, PULL_A)
        assert decision.status == 401
        assert decision.challenge is not None
        assert decision.challenge.startswith('Bearer realm="')


def test_challenge_values_are_quoted(folder: Path) -> None:
    """Quotes, backslashes and control characters cannot break the challenge."""
    auth = Authenticator(
        AuthSettings(mode="basic", htpasswd=folder / "htpasswd", realm='a"b\\c\r\nd'),
        FakeClock(),
    )
    assert decide(auth, None, PULL_A).challenge == 'Basic realm="a\\"b\\\\cd"'


def test_grant_reduces_to_what_is_permitted(folder: Path) -> None:
    """grant keeps what the rules allow and drops scopes with nothing left."""
    auth = make(folder, mode="token", htpasswd="htpasswd", rule=RULES)
    granted = auth.grant("bob", [PUSH_A, PULL_B, repository_access("team/a", "pull")])
    assert granted == [PULL_A, PULL_B]
    assert auth.grant(None, [PULL_A]) == []
