"""Start-up of the node program: operator mistakes stop it with one clear line."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.cluster import (
    REPO_ROOT,
    TWISTD,
    child_environment,
    write_topology,
)
from treescale.config import load

pytestmark = pytest.mark.integration

START_TIMEOUT = 30.0


def run_node(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``twistd -n treescale-node ARGS`` to its end (it must end by itself)."""
    command = [sys.executable, *TWISTD, "-n", "--pidfile=", "treescale-node", *args]
    return subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=child_environment(),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=False,
    )


def test_bad_topology_stops_start_up_naming_file_node_and_field(
    tmp_path: Path,
) -> None:
    """A topology with an unknown parent exits 2 with one line naming all three."""
    topology = tmp_path / "bad.toml"
    topology.write_text(
        '[[node]]\nname = "edge"\nid = 1\nbus = "127.0.0.1:1"\n'
        'roles = ["registry"]\nhttp = "tcp:1:interface=127.0.0.1"\n\n'
        '[[node]]\nname = "relay"\nid = 2\nbus = "127.0.0.1:2"\nparent = "nobody"\n'
    )

    result = run_node("--config", str(topology))

    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "treescale-node:" in line]
    assert len(lines) == 1
    assert str(topology) in lines[0]
    assert "'relay'" in lines[0]
    assert "'parent'" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_unknown_node_name_is_refused(tmp_path: Path) -> None:
    """--node with a name the file lacks exits 2 and says which name."""
    topology = write_topology(tmp_path)

    result = run_node("--config", str(topology.path), "--node", "relay-zz")

    assert result.returncode == 2
    assert "'relay-zz'" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_busy_port_stops_start_up_with_one_line(tmp_path: Path) -> None:
    """A bus port already taken stops start-up with one line naming the address."""
    topology = write_topology(tmp_path)
    taken = topology.bus_ports["relay-a"]
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", taken))
        holder.listen()

        result = run_node("--config", str(topology.path), "--node", "relay-a")

    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{taken}" in output
    assert "Traceback" not in output


def test_https_endpoint_without_its_certificate(tmp_path: Path) -> None:
    """An ``ssl:`` endpoint whose certificate file is missing lets the other nodes
    start (only the registry's own host holds it) and stops the registry node with
    one line naming the field."""
    topology = write_topology(tmp_path)
    missing = tmp_path / "missing.pem"
    text = topology.path.read_text()
    http = f"tcp:{topology.http_port}:interface=127.0.0.1"
    ssl = f"ssl:{topology.http_port}:interface=127.0.0.1:privateKey={missing}"
    topology.path.write_text(text.replace(http, ssl))

    assert load(topology.path).node("registry").http == ssl
    registry = run_node("--config", str(topology.path), "--node", "registry")

    output = registry.stdout + registry.stderr
    assert registry.returncode == 2
    assert "field 'http'" in output and str(missing) in output
    assert "Traceback" not in output
