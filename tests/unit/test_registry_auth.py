"""Tests of logins at the API: which request needs which scope, and what a client
without it is answered (401 with a challenge, or 403), in basic and token modes."""

import base64
import hashlib
import time
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from twisted.internet.task import Clock

from tests.unit.memstore import MemoryStorage
from tests.unit.test_registry_app import BLOB, World
from tests.unit.test_registry_request import connect, request_head
from treescale.auth.authenticator import Authenticator
from treescale.auth.scopes import repository_access
from treescale.auth.settings import parse_auth
from treescale.registry.app import Registry, RegistrySettings, make_site

PASSWORDS = {"alice": "wonderland", "bob": "builder", "carol": "singer"}


def write_htpasswd(folder: Path) -> Path:
    """A bcrypt htpasswd file of the users above, at a low cost to keep tests fast."""
    lines = []
    for user, password in PASSWORDS.items():
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))
        lines.append(f"{user}:{hashed.decode().replace('$2b$', '$2y$', 1)}")
    path = folder / "htpasswd"
    path.write_text("\n".join(lines) + "\n")
    return path


def world_with(folder: Path, **table: object) -> World:
    """A registry whose [auth] table is `table`, with the htpasswd file above."""
    write_htpasswd(folder)
    settings = parse_auth({"htpasswd": "htpasswd", **table}, folder / "topology.toml")
    return World(authenticator=Authenticator(settings, time.time))


def basic(user: str, password: str | None = None) -> dict[str, str]:
    secret = PASSWORDS[user] if password is None else password
    token = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


RULES = {
    "groups": {"devs": ["alice"]},
    "rule": [
        {"repositories": ["team/**"], "groups": ["devs"], "actions": ["*"]},
        {"repositories": ["team/**"], "users": ["bob"], "actions": ["pull"]},
    ],
}


@pytest.fixture
def world(tmp_path: Path) -> World:
    return world_with(tmp_path, mode="basic", **RULES)


def test_version_check_asks_for_a_login(world: World) -> None:
    answer = world.send("GET", "/v2/")
    assert (answer.code, answer.error) == (401, "UNAUTHORIZED")
    assert answer.header("WWW-Authenticate") == 'Basic realm="treescale"'
    assert world.send("GET", "/v2/", headers=basic("bob")).code == 200


def test_wrong_password_is_401_and_logged_without_it(world: World) -> None:
    answer = world.send("GET", "/v2/", headers=basic("alice", "guess"))
    assert answer.code == 401
    assert "guess" not in answer.body.decode()


def test_a_permitted_push_and_pull(world: World) -> None:
    digest = "sha256:" + hashlib.sha256(BLOB).hexdigest()
    path = f"/v2/team/app/blobs/uploads/?digest={digest}"

    pushed = world.send("POST", path, BLOB, headers=basic("alice"))
    pulled = world.send("GET", f"/v2/team/app/blobs/{digest}", headers=basic("bob"))

    assert pushed.code == 201
    assert pulled.body == BLOB


def test_a_pull_only_user_may_not_push(world: World) -> None:
    answer = world.send("POST", "/v2/team/app/blobs/uploads/", headers=basic("bob"))
    assert (answer.code, answer.error) == (403, "DENIED")
    assert len(world.registry.sessions) == 0


def test_a_user_without_a_rule_gets_nothing(world: World) -> None:
    answer = world.send("GET", "/v2/team/app/tags/list", headers=basic("carol"))
    assert (answer.code, answer.error) == (403, "DENIED")


def test_rules_stop_at_their_repositories(world: World) -> None:
    answer = world.send("POST", "/v2/other/app/blobs/uploads/", headers=basic("alice"))
    assert answer.code == 403


def test_deletes_need_the_delete_action(world: World) -> None:
    answer = world.send("DELETE", "/v2/team/app/manifests/v1", headers=basic("bob"))
    assert answer.code == 403
    answer = world.send("DELETE", "/v2/team/app/manifests/v1", headers=basic("alice"))
    assert (answer.code, answer.error) == (404, "MANIFEST_UNKNOWN")


def test_without_rules_every_user_may_do_everything(tmp_path: Path) -> None:
    world = world_with(tmp_path, mode="basic")
    answer = world.send("POST", "/v2/any/repo/blobs/uploads/", headers=basic("carol"))
    assert answer.code == 202


def test_anonymous_pull(tmp_path: Path) -> None:
    """With anonymous_pull, reads need no login; writes still do, and the version
    check still challenges (how clients learn to send their credentials)."""
    world = world_with(tmp_path, mode="basic", anonymous_pull=True)

    assert world.send("GET", "/v2/").code == 401
    assert world.send("GET", "/v2/a/tags/list").error == "NAME_UNKNOWN"
    assert world.send("POST", "/v2/a/blobs/uploads/").code == 401


def test_mount_from_a_repository_the_user_cannot_read_is_an_upload(
    tmp_path: Path,
) -> None:
    """A mount asks for pull on ``from``; without it the client gets a session,
    and learns nothing of what the other repository holds."""
    world = world_with(
        tmp_path,
        mode="basic",
        rule=[
            {"repositories": ["secret"], "users": ["alice"], "actions": ["*"]},
            {"repositories": ["open"], "users": ["alice", "bob"], "actions": ["*"]},
        ],
    )
    digest = "sha256:" + hashlib.sha256(BLOB).hexdigest()
    stored = world.send(
        "POST", f"/v2/secret/blobs/uploads/?digest={digest}", BLOB, basic("alice")
    )
    assert stored.code == 201

    mount = f"/v2/open/blobs/uploads/?mount={digest}&from=secret"
    assert world.send("POST", mount, headers=basic("bob")).code == 202
    assert world.send("POST", mount, headers=basic("alice")).code == 201


def test_catalog_needs_the_catalog_scope(world: World) -> None:
    assert world.send("GET", "/v2/_catalog", headers=basic("bob")).code == 403


# Token mode.


@pytest.fixture
def token_world(tmp_path: Path) -> World:
    return world_with(tmp_path, mode="token", **RULES)


def test_token_mode_challenges_with_the_scope(token_world: World) -> None:
    answer = token_world.send("GET", "/v2/team/app/tags/list")
    assert answer.code == 401
    assert answer.header("WWW-Authenticate") == (
        'Bearer realm="http://registry.test/token",service="treescale",'
        'scope="repository:team/app:pull"'
    )


def test_a_token_with_the_scope_is_let_in(token_world: World) -> None:
    authenticator = token_world.registry.authenticator
    assert authenticator is not None and authenticator.issuer is not None
    token = authenticator.issuer.issue("bob", [repository_access("team/app", "pull")])
    bearer = {"Authorization": f"Bearer {token}"}

    answer = token_world.send("GET", "/v2/team/app/tags/list", headers=bearer)
    other = token_world.send("GET", "/v2/team/other/tags/list", headers=bearer)

    assert answer.error == "NAME_UNKNOWN"
    assert other.code == 401
    assert 'error="insufficient_scope"' in (other.header("WWW-Authenticate") or "")


# The streaming site: a body refused before its first byte.


def test_a_refused_patch_adds_nothing_to_an_upload(tmp_path: Path) -> None:
    """A PATCH without a login into someone's session is 401 and its bytes go
    nowhere; the owner's upload then closes with the right digest."""
    write_htpasswd(tmp_path)
    settings = parse_auth(
        {"mode": "basic", "htpasswd": "htpasswd"}, tmp_path / "topology.toml"
    )
    storage = MemoryStorage()
    registry = Registry(
        storage, Clock(), RegistrySettings(), Authenticator(settings, time.time)
    )
    site = make_site(registry)
    login = "Authorization: " + basic("alice")["Authorization"]

    def exchange(raw: bytes) -> tuple[int, dict[str, str], bytes]:
        connection = connect(site)
        connection.send(raw)
        return connection.response()

    status, headers, _ = exchange(
        request_head("POST", "/v2/a/blobs/uploads/", login, "Content-Length: 0")
    )
    location = headers["location"]
    intruder = b"not alice's bytes"
    refused, _, _ = exchange(
        request_head("PATCH", location, f"Content-Length: {len(intruder)}") + intruder
    )
    digest = "sha256:" + hashlib.sha256(BLOB).hexdigest()
    closed, _, _ = exchange(
        request_head(
            "PUT", f"{location}?digest={digest}", login, f"Content-Length: {len(BLOB)}"
        )
        + BLOB
    )

    assert (status, refused, closed) == (202, 401, 201)
    assert storage.blobs[digest] == BLOB


def test_a_request_on_the_streaming_site_is_authorized_once(tmp_path: Path) -> None:
    """Checked as its headers arrive and again at dispatch, a request's credentials
    are still verified once (one bcrypt, one failed-login line)."""
    write_htpasswd(tmp_path)
    settings = parse_auth(
        {"mode": "basic", "htpasswd": "htpasswd"}, tmp_path / "topology.toml"
    )
    authenticator = Authenticator(settings, time.time)
    calls: list[object] = []
    real = authenticator.authorize

    def counted(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    authenticator.authorize = counted  # type: ignore[method-assign]
    site = make_site(
        Registry(MemoryStorage(), Clock(), RegistrySettings(), authenticator)
    )
    connection = connect(site)
    wrong = "Authorization: " + basic("alice", "guess")["Authorization"]
    connection.send(request_head("GET", "/v2/a/tags/list", wrong))

    status, _, _ = connection.response()

    assert status == 401
    assert len(calls) == 1
