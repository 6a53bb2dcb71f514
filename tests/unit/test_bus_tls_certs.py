"""Tests of making the cluster's certificates: `treescale.bus.certs` and the
``treescale certs`` command that writes them."""

import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from treescale.bus.certs import (
    CertificateError,
    load_ca,
    make_ca,
    make_node_certificate,
)
from treescale.bus.tls import identity_mismatch, load_bus_tls
from treescale.bus.tls_settings import node_identity
from treescale.cli import main
from treescale.config import load

TOPOLOGY = """\
[cluster]
name = "prod"

[[node]]
name = "edge"
id = 1
bus = "10.0.0.1:7100"
roles = ["registry"]
http = "tcp:5000:interface=127.0.0.1"

[[node]]
name = "relay-a"
id = 2
bus = "10.0.0.2:7100"
parent = "edge"

[tls]
ca = "certs/ca.pem"
cert = "certs/{node}.pem"
key = "certs/{node}.key"
"""

NODES = ("edge", "relay-a")
FILES = ("ca.pem", "ca.key", "edge.pem", "edge.key", "relay-a.pem", "relay-a.key")


@pytest.fixture
def topology(tmp_path: Path) -> Path:
    """A two-node topology file with a [tls] table, in `tmp_path`."""
    path = tmp_path / "tree.toml"
    path.write_text(TOPOLOGY)
    return path


def certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def days_valid(cert: x509.Certificate) -> float:
    span = cert.not_valid_after_utc - cert.not_valid_before_utc
    return span / datetime.timedelta(days=1)


# The certificates themselves.


def test_ca_signs_certificates_only() -> None:
    """The CA is an EC P-256 CA that may sign node certificates, no deeper chain."""
    ca = make_ca("prod")

    constraints = ca.certificate.extensions.get_extension_for_class(
        x509.BasicConstraints
    )
    usage = ca.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert constraints.critical and constraints.value.ca
    assert constraints.value.path_length == 0
    assert usage.key_cert_sign and not usage.digital_signature
    assert isinstance(ca.key.curve, ec.SECP256R1)
    assert round(days_valid(ca.certificate)) == 3650


def test_node_certificate_names_its_node_for_both_ends_of_a_link() -> None:
    """A node certificate carries its DNS-ID, serves as client and server, is no
    CA, and is signed by the CA."""
    ca = make_ca("prod")
    own = make_node_certificate(ca, "prod", "relay-a")

    names = own.certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName)
    usages = own.certificate.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage
    ).value
    assert names == ["relay-a.prod.treescale"]
    assert identity_mismatch(own.certificate, node_identity("prod", "relay-a")) is None
    assert set(usages) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    assert not own.certificate.extensions.get_extension_for_class(
        x509.BasicConstraints
    ).value.ca
    own.certificate.verify_directly_issued_by(ca.certificate)
    assert isinstance(own.key.curve, ec.SECP256R1)
    assert round(days_valid(own.certificate)) == 365


def test_node_certificate_ends_no_later_than_its_ca() -> None:
    """A node certificate asked for longer than its CA lives ends with the CA."""
    ca = make_ca("prod", days=30)
    own = make_node_certificate(ca, "prod", "edge", days=365)

    assert own.certificate.not_valid_after_utc == ca.certificate.not_valid_after_utc


def test_certificate_names_another_node_is_a_mismatch() -> None:
    """relay-a's certificate does not prove edge, and says what it names."""
    own = make_node_certificate(make_ca("prod"), "prod", "relay-a")

    why = identity_mismatch(own.certificate, node_identity("prod", "edge"))

    assert (
        why == "its certificate names relay-a.prod.treescale, not edge.prod.treescale"
    )


def test_load_ca_refuses_a_node_certificate_or_a_foreign_key() -> None:
    """A CA read back must be a CA, with its own key."""
    ca = make_ca("prod")
    own = make_node_certificate(ca, "prod", "edge")

    assert load_ca(ca.certificate_pem, ca.key_pem).certificate == ca.certificate
    with pytest.raises(CertificateError, match="not a CA"):
        load_ca(own.certificate_pem, own.key_pem)
    with pytest.raises(CertificateError, match="does not belong"):
        load_ca(ca.certificate_pem, own.key_pem)
    with pytest.raises(CertificateError, match="cannot read"):
        load_ca(b"garbage", ca.key_pem)


# The command.


def test_certs_writes_the_ca_and_a_certificate_per_node(
    topology: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``treescale certs`` writes every file the [tls] table names, keys 0600, and
    says what it wrote; each node's files load as its bus credentials."""
    out = tmp_path / "certs"

    assert main(["certs", str(topology), "--out", str(out)]) == 0

    assert sorted(path.name for path in out.iterdir()) == sorted(FILES)
    for name in FILES:
        mode = stat.S_IMODE((out / name).stat().st_mode)
        if name.endswith(".key"):
            assert mode == 0o600, name
        else:
            assert mode & 0o600 == 0o600 and mode & 0o022 == 0, name
    printed = capsys.readouterr().out
    for name in FILES:
        assert f"wrote {out / name} " in printed
    assert "keep it off the nodes" in printed
    tree = load(topology)
    assert tree.tls is not None
    for node in NODES:
        load_bus_tls(tree, node, tree.tls.files_for(node))


def test_certs_refuses_to_replace_files(
    topology: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second run without --force exits 1, names the files, and changes none."""
    out = tmp_path / "certs"
    main(["certs", str(topology), "--out", str(out)])
    before = {name: (out / name).read_bytes() for name in FILES}
    capsys.readouterr()

    assert main(["certs", str(topology), "--out", str(out)]) == 1

    error = capsys.readouterr().err
    assert "--force" in error
    assert str(out / "ca.key") in error
    assert {name: (out / name).read_bytes() for name in FILES} == before


def test_force_replaces_files_and_tightens_a_loose_key(
    topology: Path, tmp_path: Path
) -> None:
    """With --force every file is new, and a key left readable by others is
    0600 again."""
    out = tmp_path / "certs"
    main(["certs", str(topology), "--out", str(out)])
    old_ca = (out / "ca.pem").read_bytes()
    (out / "edge.key").chmod(0o644)

    assert main(["certs", str(topology), "--out", str(out), "--force"]) == 0

    assert (out / "ca.pem").read_bytes() != old_ca
    assert stat.S_IMODE((out / "edge.key").stat().st_mode) == 0o600
    assert not [path for path in out.iterdir() if path.name.startswith(".")]


def test_reuse_ca_signs_a_new_node_with_the_ca_in_place(
    topology: Path, tmp_path: Path
) -> None:
    """--reuse-ca --node writes one node's files, signed by the CA already there,
    and leaves every other file as it was."""
    out = tmp_path / "certs"
    main(["certs", str(topology), "--out", str(out)])
    (out / "relay-a.pem").unlink()
    (out / "relay-a.key").unlink()
    kept = {name: (out / name).read_bytes() for name in FILES[:4]}

    command = ["certs", str(topology), "--out", str(out), "--reuse-ca"]
    assert main([*command, "--node", "relay-a"]) == 0

    assert {name: (out / name).read_bytes() for name in FILES[:4]} == kept
    new = certificate(out / "relay-a.pem")
    new.verify_directly_issued_by(certificate(out / "ca.pem"))


def test_reuse_ca_without_a_ca_is_refused(
    topology: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--reuse-ca in a folder without a CA exits 1 and writes nothing."""
    out = tmp_path / "empty"

    assert main(["certs", str(topology), "--out", str(out), "--reuse-ca"]) == 1

    assert "cannot read" in capsys.readouterr().err
    assert not out.exists()


def test_days_are_settings(topology: Path, tmp_path: Path) -> None:
    """--ca-days and --node-days set how long each certificate lives."""
    out = tmp_path / "certs"

    command = ["certs", str(topology), "--out", str(out)]
    assert main([*command, "--ca-days", "100", "--node-days", "7"]) == 0

    assert round(days_valid(certificate(out / "ca.pem"))) == 100
    assert round(days_valid(certificate(out / "edge.pem"))) == 7


@pytest.mark.parametrize("days", ["0", "-3", "soon"])
def test_bad_days_are_a_usage_error(topology: Path, tmp_path: Path, days: str) -> None:
    """A number of days that is not positive is refused by the command line."""
    with pytest.raises(SystemExit) as exited:
        main(["certs", str(topology), "--out", str(tmp_path), "--node-days", days])

    assert exited.value.code == 2


def test_unknown_node_is_a_topology_error(
    topology: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--node with a name the file lacks exits 2 naming it, writing nothing."""
    out = tmp_path / "certs"

    assert main(["certs", str(topology), "--out", str(out), "--node", "nope"]) == 2

    assert "'nope'" in capsys.readouterr().err
    assert not out.exists()


def test_names_no_certificate_can_carry_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A topology without [tls] whose node name cannot be a DNS label is refused
    before anything is written."""
    path = tmp_path / "tree.toml"
    path.write_text(TOPOLOGY.split("[tls]")[0].replace('"relay-a"', '"relay_a"'))
    out = tmp_path / "certs"

    assert main(["certs", str(path), "--out", str(out)]) == 2

    assert "'relay_a'" in capsys.readouterr().err
    assert not out.exists()


def test_a_subcommand_is_required() -> None:
    """``treescale`` alone is a usage error."""
    with pytest.raises(SystemExit) as exited:
        main([])

    assert exited.value.code == 2


def test_keys_are_unencrypted_pkcs8(topology: Path, tmp_path: Path) -> None:
    """A node reads its key unattended: PKCS#8 PEM without a passphrase."""
    out = tmp_path / "certs"
    main(["certs", str(topology), "--out", str(out)])

    text = (out / "edge.key").read_bytes()

    assert text.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(text, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
