"""Tests of the bus's TLS settings: the ``[tls]`` table, the plain-bus rule, and the
checks a node makes of its own certificate files before it starts."""

import datetime
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent

from treescale.bus.certs import Issued, make_ca, make_node_certificate
from treescale.bus.node import BusNode
from treescale.bus.tls import TlsUnusable, load_bus_tls, plain_bus_refusal
from treescale.bus.tls_settings import TlsFiles, TlsSettings, node_identity
from treescale.config import ConfigError, Topology, is_loopback_host, load, parse
from treescale.service import make_bus_tls

SOURCE = Path("/etc/treescale/tree.toml")


def document(
    *, tls: object = None, cluster: dict[str, Any] | None = None, **buses: str
) -> dict[str, Any]:
    """A valid topology document; `buses` overrides a node's bus address, `tls`
    adds a ``[tls]`` table, `cluster` adds fields to ``[cluster]``."""
    addresses = {"edge": "127.0.0.1:7100", "r1": "127.0.0.1:7101", **buses}
    raw: dict[str, Any] = {
        "cluster": {"name": "prod", **(cluster or {})},
        "node": [
            {
                "name": "edge",
                "id": 1,
                "bus": addresses["edge"],
                "roles": ["registry"],
                "http": "tcp:5000:interface=127.0.0.1",
            },
            {"name": "r1", "id": 2, "bus": addresses["r1"], "parent": "edge"},
        ],
    }
    if tls is not None:
        raw["tls"] = tls
    return raw


TLS_TABLE = {
    "ca": "certs/ca.pem",
    "cert": "certs/{node}.pem",
    "key": "certs/{node}.key",
}


def refused(raw: dict[str, Any]) -> ConfigError:
    """The error parsing `raw` raises."""
    with pytest.raises(ConfigError) as caught:
        parse(raw, SOURCE)
    return caught.value


# The [tls] table.


def test_without_tls_table_the_bus_has_no_tls() -> None:
    """A file without [tls] leaves the bus plain, and the escape hatch off."""
    topology = parse(document(), SOURCE)

    assert topology.tls is None
    assert topology.insecure_plain_bus is False


def test_tls_paths_are_relative_to_the_topology_file() -> None:
    """Relative paths are read from the topology file's folder; {node} is filled
    in per node."""
    topology = parse(document(tls=TLS_TABLE), SOURCE)

    assert topology.tls is not None
    assert topology.tls.files_for("r1") == TlsFiles(
        ca=Path("/etc/treescale/certs/ca.pem"),
        cert=Path("/etc/treescale/certs/r1.pem"),
        key=Path("/etc/treescale/certs/r1.key"),
    )


def test_absolute_tls_paths_are_kept() -> None:
    """An absolute path stays as written, even without {node} (one file per host)."""
    table = {"ca": "/pki/ca.pem", "cert": "/pki/node.pem", "key": "/pki/node.key"}
    topology = parse(document(tls=table), SOURCE)

    assert topology.tls == TlsSettings(
        ca=Path("/pki/ca.pem"), cert="/pki/node.pem", key="/pki/node.key"
    )


@pytest.mark.parametrize(
    ("table", "field", "why"),
    [
        ({"ca": "a", "cert": "b"}, "tls.key", "needs ca, cert and key"),
        ({**TLS_TABLE, "crt": "x"}, "tls.crt", "did you mean 'cert'?"),
        ({**TLS_TABLE, "ca": ""}, "tls.ca", "non-empty path"),
        ({**TLS_TABLE, "key": 7}, "tls.key", "non-empty path"),
        ({**TLS_TABLE, "cert": "certs/{name}.pem"}, "tls.cert", "only {node}"),
        ({**TLS_TABLE, "ca": "certs/{node}.pem"}, "tls.ca", "no {...}"),
    ],
)
def test_bad_tls_table_is_named(table: object, field: str, why: str) -> None:
    """Every mistake in [tls] is refused naming the file and the field."""
    error = refused(document(tls=table))

    assert error.field == field
    assert str(SOURCE) in str(error)
    assert why in str(error)


def test_tls_that_is_not_a_table_is_refused() -> None:
    """``tls = "yes"`` is refused as not a table."""
    error = refused(document(tls="yes"))

    assert error.field == "tls"


@pytest.mark.parametrize("name", ["Relay", "r_1", "r.1", "-r", "r" * 64])
def test_with_tls_a_node_name_must_be_one_dns_label(name: str) -> None:
    """With [tls], a node name that no DNS-ID could carry is refused by name."""
    raw = document(tls=TLS_TABLE)
    raw["node"][1]["name"] = name

    error = refused(raw)

    assert error.node == name
    assert error.field == "name"


def test_without_tls_node_names_keep_their_old_rules() -> None:
    """Without [tls], a name with '_' and '.' is still accepted."""
    raw = document()
    raw["node"][1]["name"] = "Relay_1.a"

    assert parse(raw, SOURCE).nodes[1].name == "Relay_1.a"


def test_with_tls_the_cluster_name_must_be_one_dns_label() -> None:
    """With [tls], a cluster name with a space is refused in cluster.name."""
    error = refused(document(tls=TLS_TABLE, cluster={"name": "my tree"}))

    assert error.field == "cluster.name"


def test_node_identity_names_node_and_cluster() -> None:
    """A node's DNS-ID is <node>.<cluster>.treescale."""
    assert node_identity("prod", "r1") == "r1.prod.treescale"


def test_insecure_plain_bus_must_be_a_boolean() -> None:
    """``insecure_plain_bus = "yes"`` is refused."""
    error = refused(document(cluster={"insecure_plain_bus": "yes"}))

    assert error.field == "cluster.insecure_plain_bus"


def test_insecure_plain_bus_and_tls_exclude_each_other() -> None:
    """A file cannot ask for TLS and for a plain bus at once."""
    error = refused(document(tls=TLS_TABLE, cluster={"insecure_plain_bus": True}))

    assert error.field == "cluster.insecure_plain_bus"
    assert "[tls]" in str(error)


# The plain-bus rule.


def test_plain_bus_on_loopback_only_is_allowed() -> None:
    """The embedded default's shape (every bus on loopback) may run plain TCP."""
    raw = document(edge="localhost:7100", r1="[::1]:7101")

    assert plain_bus_refusal(parse(raw, SOURCE)) is None


@pytest.mark.parametrize("address", ["10.0.0.7:7101", "relay.example:7101"])
def test_plain_bus_off_loopback_is_refused_naming_the_node(address: str) -> None:
    """One bus address off loopback (an address or any host name) makes a plain
    bus refuse to start, naming the node and its bus field."""
    why = plain_bus_refusal(parse(document(r1=address), SOURCE))

    assert why is not None
    assert why.startswith(f"{SOURCE}: node 'r1': field 'bus': {address} ")
    assert "[tls]" in why


def test_off_loopback_is_allowed_with_tls_or_the_escape_hatch() -> None:
    """With [tls], or with insecure_plain_bus set, any address may start."""
    with_tls = document(tls=TLS_TABLE, r1="10.0.0.7:7101")
    hatch = document(cluster={"insecure_plain_bus": True}, r1="10.0.0.7:7101")

    assert plain_bus_refusal(parse(with_tls, SOURCE)) is None
    assert plain_bus_refusal(parse(hatch, SOURCE)) is None


def test_loopback_is_judged_by_the_text_alone() -> None:
    """Loopback means 127.0.0.0/8, ::1 or "localhost"; any other name is not."""
    assert is_loopback_host("127.3.2.1")
    assert is_loopback_host("::1")
    assert is_loopback_host("localhost")
    assert not is_loopback_host("0.0.0.0")
    assert not is_loopback_host("localhost.example")


def test_plain_bus_node_off_loopback_warns_as_it_listens() -> None:
    """A node of a plain bus listening off loopback (the escape hatch) says at
    start-up that anyone reaching it can join."""
    topology = parse(
        document(cluster={"insecure_plain_bus": True}, edge="10.0.0.7:7100"), SOURCE
    )
    reactor = MemoryReactorClock()  # type: ignore[no-untyped-call]
    node = BusNode(topology, topology.node("edge"), reactor, Clock())

    with capturedLogs() as events:
        node.privilegedStartService()

    text = "\n".join(formatEvent(event) for event in events)
    assert "plain TCP on 10.0.0.7:7100, off loopback: anyone who reaches it" in text
    assert reactor.tcpServers[0][3] == "10.0.0.7"


# A node's own files, checked as it starts.

CA = make_ca("prod")


def write_files(folder: Path, node: str, own: Issued, ca: Issued = CA) -> TlsFiles:
    """Write a CA file and a node's certificate and key; their paths."""
    files = TlsFiles(folder / "ca.pem", folder / f"{node}.pem", folder / f"{node}.key")
    files.ca.write_bytes(ca.certificate_pem)
    files.cert.write_bytes(own.certificate_pem)
    files.key.write_bytes(own.key_pem)
    return files


@pytest.fixture
def tree(tmp_path: Path) -> Topology:
    """A two-node tree with a [tls] table, its file in `tmp_path`."""
    return parse(document(tls=TLS_TABLE), tmp_path / "tree.toml")


def test_good_files_load(tmp_path: Path, tree: Topology) -> None:
    """A certificate of the CA naming the node, with its key, loads."""
    own = make_node_certificate(CA, "prod", "r1")
    tls = load_bus_tls(tree, "r1", write_files(tmp_path, "r1", own))

    assert tls.not_after == own.certificate.not_valid_after_utc


def unusable(tree: Topology, files: TlsFiles, node: str = "r1") -> str:
    """The reason `load_bus_tls` refuses `files`."""
    with pytest.raises(TlsUnusable) as caught:
        load_bus_tls(tree, node, files)
    return str(caught.value)


def test_missing_file_is_named(tmp_path: Path, tree: Topology) -> None:
    """A CA file that is not there is named with the system's reason."""
    files = write_files(tmp_path, "r1", make_node_certificate(CA, "prod", "r1"))
    files.ca.unlink()

    why = unusable(tree, files)

    assert str(files.ca) in why
    assert "No such file" in why


def test_garbage_certificate_is_refused(tmp_path: Path, tree: Topology) -> None:
    """A certificate file without a PEM certificate is refused by name."""
    files = write_files(tmp_path, "r1", make_node_certificate(CA, "prod", "r1"))
    files.cert.write_text("not a certificate\n")

    assert f"certificate {str(files.cert)!r} holds no PEM certificate" in unusable(
        tree, files
    )


def test_key_of_another_certificate_is_refused(tmp_path: Path, tree: Topology) -> None:
    """A key that does not belong to the certificate is refused."""
    files = write_files(tmp_path, "r1", make_node_certificate(CA, "prod", "r1"))
    other = ec.generate_private_key(ec.SECP256R1())
    files.key.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    assert "does not belong to certificate" in unusable(tree, files)


def test_certificate_of_another_ca_is_refused(tmp_path: Path, tree: Topology) -> None:
    """A certificate the CA file did not sign is refused."""
    other = make_node_certificate(make_ca("prod"), "prod", "r1")
    files = write_files(tmp_path, "r1", other)

    assert "is not signed by the CA" in unusable(tree, files)


def test_certificate_of_another_node_is_refused(tmp_path: Path, tree: Topology) -> None:
    """Node r1 refuses to start with edge's certificate."""
    files = write_files(tmp_path, "r1", make_node_certificate(CA, "prod", "edge"))

    why = unusable(tree, files)

    assert "is not for node 'r1'" in why
    assert "edge.prod.treescale, not r1.prod.treescale" in why


def test_expired_certificate_is_refused(tmp_path: Path, tree: Topology) -> None:
    """A certificate that has ended is refused with its end date."""
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    old = make_node_certificate(CA, "prod", "r1", days=10, not_before=start)
    files = write_files(tmp_path, "r1", old)

    assert "expired on 2020-01-10" in unusable(tree, files)


def test_certificate_not_valid_yet_is_refused(tmp_path: Path, tree: Topology) -> None:
    """A certificate that starts in the future is refused."""
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3)
    files = write_files(
        tmp_path, "r1", make_node_certificate(CA, "prod", "r1", not_before=later)
    )

    assert "is not valid before" in unusable(tree, files)


def test_unusable_files_stop_start_up_with_one_line(
    tmp_path: Path, tree: Topology, capfd: pytest.CaptureFixture[str]
) -> None:
    """A node whose [tls] files cannot be used exits 2 with one line naming the
    topology file, the node and the file."""
    (tmp_path / "certs").mkdir()
    write_files(tmp_path / "certs", "r1", make_node_certificate(CA, "prod", "edge"))

    with pytest.raises(SystemExit) as exited:
        make_bus_tls(tree, tree.node("r1"))

    assert exited.value.code == 2
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"treescale-node: {tree.source}: node 'r1': [tls]: ")
    assert "r1.pem" in lines[0]


def test_certificate_near_its_end_is_warned_about(
    tmp_path: Path, tree: Topology
) -> None:
    """A node starting with a certificate that ends within 30 days says so."""
    (tmp_path / "certs").mkdir()
    write_files(
        tmp_path / "certs", "r1", make_node_certificate(CA, "prod", "r1", days=10)
    )

    with capturedLogs() as events:
        tls = make_bus_tls(tree, tree.node("r1"))

    assert tls is not None
    text = "\n".join(formatEvent(event) for event in events)
    assert "bus certificate of r1 expires in 9 days" in text


EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "tls-example.toml"


def test_shipped_tls_example_loads_and_may_start_off_loopback() -> None:
    """conf/tls-example.toml parses, names files next to itself, and may start
    off loopback only thanks to its [tls] table."""
    topology = load(EXAMPLE)

    assert topology.tls is not None
    files = topology.tls.files_for("relay-a")
    assert files.cert == EXAMPLE.parent / "certs" / "relay-a.pem"
    assert plain_bus_refusal(topology) is None
    stripped = replace(topology, tls=None)
    assert plain_bus_refusal(stripped) is not None
