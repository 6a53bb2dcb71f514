"""Tests of the token endpoint over twisted.web in memory (treq's StubTreq)."""

import base64
import functools
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import treq.testing
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.server import Site

from tests.unit.test_auth_helpers import (
    FakeClock,
    LogCapture,
    basic,
    bcrypt_line,
    settings,
    write_htpasswd,
)
from treescale.auth.authenticator import Authenticator
from treescale.auth.endpoint import TokenResource
from treescale.auth.scopes import catalog_access, repository_access
from treescale.auth.tokens import TokenClaims

URL = "http://registry.test:5000/token"
RULES = [
    {"repositories": ["team/*"], "users": ["alice"], "actions": ["pull", "push"]},
    {"repositories": ["**"], "users": ["bob"], "actions": ["pull"]},
]


@dataclass
class Reply:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


class Endpoint:
    """The token resource of one authenticator, and a client in memory."""

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth
        self.stub = StubTreq(TokenResource(auth))

    def request(self, method: str, **kwargs: Any) -> Reply:
        response = self._result(self.stub.request(method, URL, **kwargs))
        body = self._result(response.content())
        headers = {
            name.decode().lower(): [v.decode("latin-1") for v in values]
            for name, values in response.headers.getAllRawHeaders()
        }
        return Reply(response.code, headers, body)

    def get(self, *, auth: str | None = None, **params: Any) -> Reply:
        headers = {"Authorization": auth} if auth is not None else {}
        return self.request("GET", params=params, headers=headers)

    def post(self, **form: Any) -> Reply:
        return self.request("POST", data=form)

    def claims(self, reply: Reply) -> TokenClaims:
        assert self.auth.verifier is not None
        return self.auth.verifier.verify(reply.json["token"])

    def _result(self, deferred: "Deferred[Any]") -> Any:
        self.stub.flush()
        results: list[Any] = []
        deferred.addBoth(results.append)
        assert results, "the request did not finish"
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]


@pytest.fixture(params=[True, False], ids=["forms-parsed", "raw-bodies"])
def site_parses_forms(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> bool:
    """Tests with a folder run on a site that parses POST forms, and one that does not.

    The registry's site leaves bodies unparsed, so the resource must read forms
    itself.
    """
    parses: bool = request.param
    use_site(monkeypatch, parses)
    return parses


def use_site(monkeypatch: pytest.MonkeyPatch, parses_forms: bool) -> None:
    """Make StubTreq serve through a site that does or does not parse forms."""
    site = functools.partial(Site, parsePOSTFormSubmission=parses_forms)
    monkeypatch.setattr(treq.testing, "Site", site)


@pytest.fixture
def folder(tmp_path: Path, site_parses_forms: bool) -> Path:
    """A folder with the users file, on either kind of site."""
    return users_folder(tmp_path)


@pytest.fixture
def registry_site_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Endpoint:
    """An endpoint on a site that leaves bodies unparsed, as the registry's does."""
    use_site(monkeypatch, False)
    return endpoint(users_folder(tmp_path))


def users_folder(tmp_path: Path) -> Path:
    write_htpasswd(tmp_path / "htpasswd", {"alice": "alice-pw", "bob": "bob-pw"})
    return tmp_path


def endpoint(folder: Path, **table: Any) -> Endpoint:
    table = {"mode": "token", "htpasswd": "htpasswd", "rule": RULES, **table}
    # A header cap below twisted.web's own line limit, so that ours is reached.
    parsed = replace(settings(folder, **table), max_authorization=8192)
    return Endpoint(Authenticator(parsed, FakeClock(1.7e9)))


@pytest.fixture
def ep(folder: Path) -> Endpoint:
    return endpoint(folder)


def test_token_for_a_user(ep: Endpoint) -> None:
    """GET with Basic credentials answers a token for that user and scope."""
    reply = ep.get(
        auth=basic("alice", "alice-pw"),
        service="treescale",
        scope="repository:team/a:pull,push",
        account="alice",
        client_id="docker",
    )
    assert reply.status == 200
    assert reply.header("Content-Type") == "application/json"
    assert reply.header("Cache-Control") == "no-store"
    answer = reply.json
    assert answer["token"] == answer["access_token"]
    assert answer["expires_in"] == 300
    assert answer["issued_at"] == "2023-11-14T22:13:20Z"
    assert "refresh_token" not in answer
    assert ep.claims(reply) == TokenClaims(
        "alice", "treescale", (repository_access("team/a", "pull", "push"),)
    )


def test_token_opens_the_registry(ep: Endpoint) -> None:
    """The token answered is what the registry then accepts for the scope."""
    reply = ep.get(auth=basic("alice", "alice-pw"), scope="repository:team/a:push")
    header = "Bearer " + reply.json["token"]
    wanted = [repository_access("team/a", "push")]
    decision = ep.auth.authorize(header, wanted, "127.0.0.1", "http://r")
    assert (decision.allowed, decision.user) == (True, "alice")


def test_scopes_are_reduced(ep: Endpoint) -> None:
    """Unpermitted actions and scopes are silently left out of the token."""
    reply = ep.request(
        "GET",
        params=[
            ("scope", "repository:team/a:pull,push repository:other/b:pull,push"),
            ("scope", "repository:other/c:delete"),
            ("scope", "registry:catalog:*"),
        ],
        headers={"Authorization": basic("bob", "bob-pw")},
    )
    assert reply.status == 200
    assert ep.claims(reply).accesses == (
        repository_access("team/a", "pull"),
        repository_access("other/b", "pull"),
        catalog_access(),
    )


def test_anonymous_token(ep: Endpoint) -> None:
    """Without credentials the token holds only what anonymous may do: nothing."""
    reply = ep.get(scope="repository:team/a:pull", offline_token="true")
    assert reply.status == 200
    claims = ep.claims(reply)
    assert (claims.subject, claims.accesses) == (None, ())
    assert "refresh_token" not in reply.json


def test_anonymous_pull_token(folder: Path) -> None:
    """With anonymous pull an anonymous token may pull, never push."""
    ep = endpoint(folder, anonymous_pull=True)
    reply = ep.get(scope="repository:x/y:pull,push")
    assert ep.claims(reply).accesses == (repository_access("x/y", "pull"),)


def test_bad_credentials(ep: Endpoint) -> None:
    """A wrong password: 401, the spec's error body, a Basic challenge, a log line."""
    with LogCapture() as log:
        reply = ep.get(auth=basic("alice", "Not-The-Pw"), scope="repository:a:pull")
    assert reply.status == 401
    assert reply.header("WWW-Authenticate") == 'Basic realm="treescale"'
    error = reply.json["errors"][0]
    assert error["code"] == "UNAUTHORIZED"
    assert error["message"]
    assert error["detail"] == "wrong user name or password"
    assert "failed login as alice from 127.0.0.1" in log.texts()
    assert "Not-The-Pw" not in log.everything()


@pytest.mark.parametrize(
    "header",
    [
        "Basic %%%",
        "Basic " + base64.b64encode(b"nocolon").decode(),
        "Basic " + "QUFB" * 3000,
        "Bearer abc.def.ghi",
        "Negotiate xyz",
    ],
)
def test_unusable_credentials(ep: Endpoint, header: str) -> None:
    """Credentials that cannot be read are a 401 with the error body, not a 500."""
    reply = ep.get(auth=header)
    assert reply.status == 401
    assert reply.json["errors"][0]["code"] == "UNAUTHORIZED"


def test_wrong_service(ep: Endpoint) -> None:
    """A request for another service is a 400."""
    reply = ep.get(auth=basic("alice", "alice-pw"), service="elsewhere")
    assert reply.status == 400
    assert "elsewhere" in reply.json["errors"][0]["detail"]


@pytest.mark.parametrize("scope", ["repository", "repository:team/a", ":a:pull"])
def test_malformed_scope(ep: Endpoint, scope: str) -> None:
    """A scope that does not parse is a 400."""
    assert ep.get(scope=scope).status == 400


def test_too_many_scopes(ep: Endpoint) -> None:
    """More scopes than the limit is a 400."""
    limit = ep.auth.settings.max_scopes
    scope = " ".join(f"repository:r{i}:pull" for i in range(limit + 1))
    assert ep.get(scope=scope).status == 400


def test_account_must_match(ep: Endpoint) -> None:
    """An account other than the signed-in user is a 400."""
    reply = ep.get(auth=basic("alice", "alice-pw"), account="bob")
    assert reply.status == 400


def test_non_utf8_field(ep: Endpoint) -> None:
    """A query field that is not UTF-8 is a 400."""
    reply = ep.request("GET", params={"scope": b"repository:\xff:pull"})
    assert reply.status == 400


def test_form_past_the_cap(ep: Endpoint) -> None:
    """A form larger than the cap is a 400."""
    reply = ep.post(grant_type="password", username="alice", password="x" * 70000)
    assert reply.status == 400
    assert "larger than" in reply.json["errors"][0]["detail"]


def test_form_with_charset(ep: Endpoint) -> None:
    """A form whose Content-Type names a charset is read as a form."""
    reply = ep.request(
        "POST",
        data=b"grant_type=password&username=alice&password=alice-pw",
        headers={"Content-Type": "Application/X-WWW-Form-Urlencoded; charset=UTF-8"},
    )
    assert reply.status == 200


def test_body_of_another_type_is_no_form(ep: Endpoint) -> None:
    """A POST body that is not a form is not read for fields."""
    reply = ep.request(
        "POST",
        data=b"grant_type=password&username=alice&password=alice-pw",
        headers={"Content-Type": "text/plain"},
    )
    assert reply.status == 400


def test_other_methods(ep: Endpoint) -> None:
    """Methods other than GET and POST are a 405 naming the allowed ones."""
    reply = ep.request("PUT", data=b"x")
    assert reply.status == 405
    assert reply.header("Allow") == "GET, POST"


def test_offline_get_answers_a_refresh_token(ep: Endpoint) -> None:
    """offline_token=true with credentials adds a refresh token."""
    reply = ep.get(auth=basic("alice", "alice-pw"), offline_token="true")
    assert reply.status == 200
    assert isinstance(reply.json["refresh_token"], str)


def test_post_password_grant(ep: Endpoint) -> None:
    """The OAuth password grant answers a token, and a refresh token if offline."""
    reply = ep.post(
        grant_type="password",
        username="alice",
        password="alice-pw",
        service="treescale",
        scope="repository:team/a:pull",
        client_id="docker",
        access_type="offline",
    )
    assert reply.status == 200
    assert ep.claims(reply).accesses == (repository_access("team/a", "pull"),)
    assert reply.json["access_token"] == reply.json["token"]
    assert reply.json["refresh_token"]
    plain = ep.post(grant_type="password", username="alice", password="alice-pw")
    assert "refresh_token" not in plain.json


def test_post_wrong_password(ep: Endpoint) -> None:
    """The password grant with a wrong password is a 401."""
    reply = ep.post(grant_type="password", username="alice", password="nope")
    assert reply.status == 401
    assert reply.header("WWW-Authenticate") == 'Basic realm="treescale"'


@pytest.mark.parametrize(
    "form",
    [
        {"grant_type": "password", "username": "alice"},
        {"grant_type": "password", "password": "alice-pw"},
        {"grant_type": "refresh_token"},
        {"grant_type": "client_credentials"},
        {},
    ],
)
def test_post_malformed(ep: Endpoint, form: dict[str, str]) -> None:
    """A form missing a field, or with another grant type, is a 400."""
    assert ep.post(**form).status == 400


def test_refresh_grant(ep: Endpoint) -> None:
    """A refresh token gets a new token for its user, and a new refresh token."""
    first = ep.post(
        grant_type="password",
        username="alice",
        password="alice-pw",
        access_type="offline",
    )
    reply = ep.post(
        grant_type="refresh_token",
        refresh_token=first.json["refresh_token"],
        scope="repository:team/a:push",
        access_type="offline",
    )
    assert reply.status == 200
    claims = ep.claims(reply)
    assert claims.subject == "alice"
    assert claims.accesses == (repository_access("team/a", "push"),)
    assert reply.json["refresh_token"]


def test_refresh_ends_with_the_password(folder: Path, ep: Endpoint) -> None:
    """Changing a user's password ends the refresh tokens given before."""
    first = ep.get(auth=basic("alice", "alice-pw"), offline_token="true")
    refresh = first.json["refresh_token"]
    (folder / "htpasswd").write_text(
        bcrypt_line("alice", "changed") + "\n" + bcrypt_line("bob", "bob-pw") + "\n"
    )
    with LogCapture() as log:
        reply = ep.post(grant_type="refresh_token", refresh_token=refresh)
    assert reply.status == 401
    assert any(e.get("user") == "alice" for e in log.events)


def test_access_token_is_no_refresh_token(ep: Endpoint) -> None:
    """An access token offered as a refresh token is a 401."""
    token = ep.get(auth=basic("alice", "alice-pw")).json["token"]
    reply = ep.post(grant_type="refresh_token", refresh_token=token)
    assert reply.status == 401


def test_not_in_token_mode(folder: Path) -> None:
    """The endpoint refuses to serve for a registry not in token mode."""
    auth = Authenticator(
        settings(folder, mode="basic", htpasswd="htpasswd"), FakeClock()
    )
    with pytest.raises(ValueError, match="token mode"):
        TokenResource(auth)


def test_issued_tokens_logged_without_the_token(ep: Endpoint) -> None:
    """Each token issued is logged with user, peer and scopes, not the token."""
    with LogCapture() as log:
        reply = ep.get(auth=basic("alice", "alice-pw"), scope="repository:team/a:pull")
    text = log.everything()
    assert "token for alice from 127.0.0.1: repository:team/a:pull" in log.texts()
    assert reply.json["token"] not in text


def test_header_past_the_cap(ep: Endpoint) -> None:
    """An Authorization header longer than the cap is refused unread."""
    reply = ep.get(auth=basic("alice", "alice-pw" + "x" * 9000))
    assert reply.status == 401
    assert "longer than 8192" in reply.json["errors"][0]["detail"]


_FIELDS = st.sampled_from(
    [
        "scope",
        "service",
        "account",
        "offline_token",
        "grant_type",
        "username",
        "password",
        "refresh_token",
        "access_type",
        "client_id",
    ]
)
_VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["treescale", "true", "password", "refresh_token", "offline", "alice"]
    ),
    st.builds(
        "repository:{}:{}".format,
        st.text(max_size=10),
        st.sampled_from(["pull", "push", "*", ""]),
    ),
)


@hypothesis_settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    method=st.sampled_from(["GET", "POST"]),
    fields=st.lists(st.tuples(_FIELDS, _VALUES), max_size=6),
    header=st.one_of(st.none(), st.sampled_from(["Basic YWxpY2U6YWxpY2UtcHc="])),
)
def test_never_a_server_error(
    registry_site_endpoint: Endpoint,
    method: str,
    fields: list[tuple[str, str]],
    header: str | None,
) -> None:
    """Whatever fields a client sends, the answer is a 2xx or 4xx with JSON."""
    ep = registry_site_endpoint
    headers = {"Authorization": header} if header else {}
    if method == "GET":
        reply = ep.request("GET", params=fields, headers=headers)
    else:
        reply = ep.request("POST", data=fields, headers=headers)
    assert reply.status in (200, 400, 401)
    assert isinstance(reply.json, dict)
