"""Tests of the [auth] table: what it reads, and every mistake named by its field."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from tests.unit.test_auth_helpers import (
    ec_key,
    rsa_key,
    settings,
    write_htpasswd,
    write_private,
    write_public,
)
from treescale.auth.settings import (
    DEFAULT_TOKEN_TTL,
    MAX_TOKEN_TTL,
    MIN_TOKEN_TTL,
    AuthSettings,
    Rule,
    TrustedIssuer,
    check_auth_files,
    parse_auth,
)
from treescale.config import ConfigError


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A topology folder with an htpasswd file and an external issuer's key."""
    write_htpasswd(tmp_path / "htpasswd", {"alice": "a"})
    write_public(tmp_path / "corp-auth.pem", ec_key())
    return tmp_path


def refused(folder: Path, **table: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        settings(folder, **table)
    return caught.value


def test_defaults_leave_everything_open(folder: Path) -> None:
    """An empty table is mode none, with the documented defaults."""
    parsed = settings(folder)
    assert parsed.mode == "none"
    assert parsed.htpasswd is None
    assert parsed.token_ttl == DEFAULT_TOKEN_TTL
    assert parsed.token_key == folder / "token-key.pem"
    assert parsed.rules == ()


def test_the_documented_example(folder: Path) -> None:
    """The example of the settings parses into the values it states."""
    parsed = settings(
        folder,
        mode="token",
        htpasswd="htpasswd",
        realm="treescale",
        anonymous_pull=False,
        token_service="treescale",
        token_issuer="treescale",
        token_key="token-key.pem",
        token_realm="",
        token_ttl=300,
        trusted_issuer=[{"issuer": "corp-auth", "public_key": "corp-auth.pem"}],
        groups={"devs": ["alice", "bob"]},
        rule=[
            {
                "repositories": ["team/*"],
                "users": ["carol"],
                "groups": ["devs"],
                "actions": ["pull", "push"],
            }
        ],
    )
    assert parsed == AuthSettings(
        mode="token",
        htpasswd=folder / "htpasswd",
        token_key=folder / "token-key.pem",
        trusted_issuers=(TrustedIssuer("corp-auth", folder / "corp-auth.pem"),),
        groups={"devs": frozenset({"alice", "bob"})},
        rules=(
            Rule(
                ("team/*",),
                frozenset({"carol"}),
                frozenset({"devs"}),
                frozenset({"pull", "push"}),
            ),
        ),
    )
    assert not (folder / "token-key.pem").exists()


def test_star_action_expands(folder: Path) -> None:
    """A rule's '*' action stands for pull, push and delete."""
    parsed = settings(
        folder, rule=[{"repositories": ["**"], "users": ["*"], "actions": ["*"]}]
    )
    assert parsed.rules[0].actions == {"pull", "push", "delete"}


def test_absolute_paths_stay(
    folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """An absolute path is taken as written, not joined to the folder."""
    elsewhere = write_htpasswd(tmp_path_factory.mktemp("etc") / "users", {"b": "b"})
    parsed = settings(folder, mode="basic", htpasswd=str(elsewhere))
    assert parsed.htpasswd == elsewhere


@pytest.mark.parametrize(
    ("table", "field", "hint"),
    [
        (
            {"anonymus_pull": True},
            "auth.anonymus_pull",
            "did you mean 'anonymous_pull'",
        ),
        ({"token_tll": 60}, "auth.token_tll", "did you mean 'token_ttl'"),
        (
            {"rule": [{"repositories": ["a"], "users": ["u"], "action": ["pull"]}]},
            "auth.rule.action",
            "did you mean 'actions'",
        ),
        (
            {"trusted_issuer": [{"issuer": "x", "publickey": "k.pem"}]},
            "auth.trusted_issuer.publickey",
            "did you mean 'public_key'",
        ),
    ],
)
def test_unknown_fields(
    folder: Path, table: dict[str, Any], field: str, hint: str
) -> None:
    """An unknown field is refused by name, with the closest known one."""
    error = refused(folder, **table)
    assert error.field == field
    assert hint in str(error)
    assert str(folder / "topology.toml") in str(error)


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({"mode": 1}, "auth.mode"),
        ({"mode": "Basic"}, "auth.mode"),
        ({"mode": "ldap"}, "auth.mode"),
        ({"anonymous_pull": "yes"}, "auth.anonymous_pull"),
        ({"realm": ""}, "auth.realm"),
        ({"realm": 5}, "auth.realm"),
        ({"token_ttl": "300"}, "auth.token_ttl"),
        ({"token_ttl": True}, "auth.token_ttl"),
        ({"token_ttl": 1.5}, "auth.token_ttl"),
        ({"token_ttl": MIN_TOKEN_TTL - 1}, "auth.token_ttl"),
        ({"token_ttl": MAX_TOKEN_TTL + 1}, "auth.token_ttl"),
        ({"token_realm": "auth.example/token"}, "auth.token_realm"),
        ({"token_service": ""}, "auth.token_service"),
        ({"groups": ["devs"]}, "auth.groups"),
        ({"groups": {"devs": "alice"}}, "auth.groups.devs"),
        ({"groups": {"devs": ["alice", 3]}}, "auth.groups.devs"),
        ({"rule": {"repositories": ["a"]}}, "auth.rule"),
        ({"rule": ["a"]}, "auth.rule"),
        ({"trusted_issuer": {"issuer": "x"}}, "auth.trusted_issuer"),
        (
            {"trusted_issuer": [{"public_key": "corp-auth.pem"}]},
            "auth.trusted_issuer.issuer",
        ),
    ],
)
def test_wrong_values(folder: Path, table: dict[str, Any], field: str) -> None:
    """A value of the wrong type or out of range is refused by its field."""
    assert refused(folder, **table).field == field


def test_ttl_bounds_accepted(folder: Path) -> None:
    """The bounds of the token lifetime are themselves allowed."""
    assert settings(folder, token_ttl=MIN_TOKEN_TTL).token_ttl == MIN_TOKEN_TTL
    assert settings(folder, token_ttl=MAX_TOKEN_TTL).token_ttl == MAX_TOKEN_TTL


def test_not_a_table(folder: Path) -> None:
    """An [auth] that is not a table is refused as such."""
    with pytest.raises(ConfigError) as caught:
        from treescale.auth.settings import parse_auth

        parse_auth(["mode"], folder / "topology.toml")  # type: ignore[arg-type]
    assert caught.value.field == "auth"


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ({"repositories": [], "users": ["u"], "actions": ["pull"]}, "pattern"),
        ({"users": ["u"], "actions": ["pull"]}, "list"),
        ({"repositories": ["a"], "actions": ["pull"]}, "user or group"),
        ({"repositories": ["a"], "users": ["u"], "actions": []}, "action"),
        ({"repositories": ["a"], "users": ["u"], "actions": ["pul"]}, "'pull'"),
        (
            {"repositories": ["a"], "users": ["u"], "actions": ["read"]},
            "unknown action",
        ),
        ({"repositories": ["a"], "users": [""], "actions": ["pull"]}, "non-empty"),
    ],
)
def test_bad_rules(folder: Path, rule: dict[str, Any], why: str) -> None:
    """A rule that grants nothing sensible is refused, saying which rule."""
    ok = {"repositories": ["x"], "users": ["u"], "actions": ["pull"]}
    error = refused(folder, rule=[ok, rule])
    assert error.field is not None and error.field.startswith("auth.rule.")
    assert why in str(error)


def test_rule_names_unknown_group(folder: Path) -> None:
    """A rule naming a group that is not defined is refused, with a hint."""
    error = refused(
        folder,
        groups={"devs": ["alice"]},
        rule=[{"repositories": ["a"], "groups": ["dev"], "actions": ["pull"]}],
    )
    assert error.field == "auth.rule.groups"
    assert "rule #1" in str(error)
    assert "did you mean 'devs'" in str(error)


def test_basic_needs_htpasswd(folder: Path) -> None:
    """Basic mode without an htpasswd file is refused."""
    assert refused(folder, mode="basic").field == "auth.htpasswd"


def test_missing_htpasswd_file(folder: Path) -> None:
    """An htpasswd file that does not exist is refused, naming the path."""
    error = refused(folder, mode="basic", htpasswd="nope")
    assert error.field == "auth.htpasswd"
    assert str(folder / "nope") in str(error)


def test_htpasswd_with_another_hash(folder: Path) -> None:
    """A non-bcrypt line is refused with file and line, and the hash kept out."""
    path = folder / "md5.htpasswd"
    path.write_text("# users\nbob:$apr1$abcdefgh$0123456789abcdefghijkl\n")
    error = refused(folder, mode="basic", htpasswd="md5.htpasswd")
    assert error.field == "auth.htpasswd"
    assert f"{path}: line 2" in str(error)
    assert "abcdefgh" not in str(error)


def test_token_mode_may_go_without_htpasswd(folder: Path) -> None:
    """Token mode with only external issuers needs no users file."""
    parsed = settings(
        folder,
        mode="token",
        trusted_issuer=[{"issuer": "corp-auth", "public_key": "corp-auth.pem"}],
    )
    assert parsed.htpasswd is None


def _write_ed25519(path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda p: p.write_text("not a key"), "neither a PEM public key"),
        (lambda p: write_private(p, ec_key()), "neither a PEM public key"),
        (lambda p: write_public(p, rsa_key(1024)), "too short"),
        (_write_ed25519, "neither an EC nor an RSA key"),
        (lambda p: write_public(p, ec_key(ec.SECP256K1())), "not used"),
        (lambda p: None, "cannot read"),
    ],
)
def test_trusted_key_that_does_not_load(folder: Path, make: Any, why: str) -> None:
    """A trusted issuer whose key cannot be used is refused, saying why."""
    make(folder / "bad.pem")
    error = refused(
        folder, trusted_issuer=[{"issuer": "corp", "public_key": "bad.pem"}]
    )
    assert error.field == "auth.trusted_issuer.public_key"
    assert why in str(error)


def test_trusted_certificate_accepted(folder: Path) -> None:
    """A PEM certificate holding an issuer's key is as good as the bare key."""
    certificate = subprocess.run(
        [
            sys.executable,
            "-c",
            "import datetime,sys\n"
            "from cryptography import x509\n"
            "from cryptography.x509.oid import NameOID\n"
            "from cryptography.hazmat.primitives import hashes, serialization\n"
            "from cryptography.hazmat.primitives.asymmetric import ec\n"
            "k = ec.generate_private_key(ec.SECP384R1())\n"
            "n = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'corp')])\n"
            "t = datetime.datetime(2024, 1, 1)\n"
            "c = (x509.CertificateBuilder().subject_name(n).issuer_name(n)"
            ".public_key(k.public_key()).serial_number(1).not_valid_before(t)"
            ".not_valid_after(t + datetime.timedelta(days=9))"
            ".sign(k, hashes.SHA384()))\n"
            "sys.stdout.write(c.public_bytes(serialization.Encoding.PEM).decode())\n",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (folder / "corp.crt").write_text(certificate)
    parsed = settings(
        folder, trusted_issuer=[{"issuer": "c", "public_key": "corp.crt"}]
    )
    assert parsed.trusted_issuers[0].public_key == folder / "corp.crt"


def test_issuer_listed_twice(folder: Path) -> None:
    """Two entries for one issuer are refused."""
    entry = {"issuer": "corp-auth", "public_key": "corp-auth.pem"}
    error = refused(folder, trusted_issuer=[entry, entry])
    assert error.field == "auth.trusted_issuer.issuer"


def test_trusting_our_own_issuer_name(folder: Path) -> None:
    """A trusted issuer with this registry's own issuer name is refused."""
    error = refused(
        folder,
        mode="token",
        token_issuer="corp-auth",
        trusted_issuer=[{"issuer": "corp-auth", "public_key": "corp-auth.pem"}],
    )
    assert error.field == "auth.trusted_issuer.issuer"


def test_unusable_signing_key(folder: Path) -> None:
    """An existing token_key that is not an EC P-256 private key is refused."""
    write_private(folder / "rsa.pem", rsa_key())
    error = refused(folder, mode="token", token_key="rsa.pem")
    assert error.field == "auth.token_key"
    assert "P-256" in str(error)


def test_signing_key_only_checked_in_token_mode(folder: Path) -> None:
    """In basic mode the token key is not looked at."""
    (folder / "junk.pem").write_text("junk")
    parsed = settings(folder, mode="basic", htpasswd="htpasswd", token_key="junk.pem")
    assert parsed.mode == "basic"


def test_importable_before_the_config_module() -> None:
    """The settings module imports without the topology parser that calls it."""
    code = (
        "import sys\n"
        "import treescale.auth.settings\n"
        "print('treescale.config' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert result.stdout.strip() == "False"


def test_error_is_the_topology_files_error(folder: Path) -> None:
    """The error raised is the one the topology parser raises and exports."""
    import treescale.config

    error = refused(folder, mode="x")
    assert isinstance(error, treescale.config.ConfigError)


def test_hosts_without_a_registry_need_not_hold_the_files(folder: Path) -> None:
    """Parsing without file checks takes paths that do not exist; checking the
    files then names the missing one."""
    source = folder / "topology.toml"
    table = {"mode": "basic", "htpasswd": "missing-htpasswd"}

    parsed = parse_auth(table, source, check_files=False)

    assert parsed.htpasswd == folder / "missing-htpasswd"
    with pytest.raises(ConfigError) as raised:
        check_auth_files(parsed, source)
    assert "auth.htpasswd" in str(raised.value)
    assert "missing-htpasswd" in str(raised.value)
