"""Tests of ``treescale check``: real topology files, checked as a node checks
them, and a summary of what they describe."""

from pathlib import Path

import pytest

from treescale.cli import main

CONF = Path(__file__).resolve().parents[2] / "conf"


def summary_of(out: str) -> dict[str, str]:
    """The summary's lines by their first word."""
    lines = out.splitlines()[1:]
    return {line.split()[0]: line.split(maxsplit=1)[1] for line in lines}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


NODES = """
[[node]]
name = "edge"
id = 1
bus = "127.0.0.1:7100"
roles = ["registry"]
http = "tcp:5000:interface=127.0.0.1"

[[node]]
name = "hub"
id = 2
bus = "127.0.0.1:7101"
parent = "edge"
domain = "rack-1"

[[node]]
name = "leaf"
id = 3
bus = "127.0.0.1:7102"
parent = "hub"
domain = "rack-2"
"""


def test_shipped_default_is_summarised(capsys: pytest.CaptureFixture[str]) -> None:
    """conf/local.toml is valid: one registry, three stores one level down, two
    copies a chunk, three a record, a loopback bus and no logins."""
    assert main(["check", str(CONF / "local.toml")]) == 0

    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{CONF / 'local.toml'}: valid"
    summary = summary_of(out)
    assert summary["nodes"] == (
        "4: 1 registry (registry); 3 store (relay-a, relay-b, relay-c)"
    )
    assert summary["tree"].startswith("root registry, depth 1")
    assert summary["copies"] == (
        "2 per chunk, 3 per record (reads and writes need 2 of them)"
    )
    assert summary["ready"] == "a registry node needs 2 of 3 store relays"
    assert summary["chunks"].startswith("4.0 MiB, window 8, buffer 64")
    assert summary["chunks"].endswith("3 per relay for a download")
    assert summary["bus"] == "plain TCP, every bus address on loopback"
    assert summary["logins"] == "none: every request is let in"


def test_tls_example_reports_mutual_tls(capsys: pytest.CaptureFixture[str]) -> None:
    """The TLS example is valid off loopback because it has [tls]."""
    assert main(["check", str(CONF / "tls-example.toml")]) == 0

    assert summary_of(capsys.readouterr().out)["bus"].startswith("mutual TLS, CA ")


def test_depth_and_cut_down_copies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A relay under a relay is depth 2; with two stores the default copies are
    cut down to two per record."""
    path = write(tmp_path / "t.toml", "[cluster]\nname = 'deep'\n" + NODES)

    assert main(["check", str(path)]) == 0

    summary = summary_of(capsys.readouterr().out)
    assert summary["tree"] == "root edge, depth 2 (2 levels below the root)"
    assert summary["copies"].startswith("2 per chunk, 2 per record")
    assert summary["nodes"] == "3: 1 registry (edge); 2 store (hub, leaf)"


def test_logins_name_the_users_file_and_whether_it_is_here(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Basic mode names its htpasswd file, and says so when it is not on this
    machine (registry nodes check it as they start)."""
    auth = '\n[auth]\nmode = "basic"\nhtpasswd = "users"\nanonymous_pull = true\n'
    path = write(tmp_path / "t.toml", NODES + auth)

    assert main(["check", str(path)]) == 0
    missing = summary_of(capsys.readouterr().out)["logins"]
    (tmp_path / "users").write_text("", encoding="utf-8")
    assert main(["check", str(path)]) == 0
    present = summary_of(capsys.readouterr().out)["logins"]

    assert missing == (
        f"basic, users in {tmp_path / 'users'} (not on this machine), no rules: "
        "every user may do everything, anonymous pull"
    )
    assert "(not on this machine)" not in present


def test_an_invalid_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistake gives the loader's one-line error naming file, node and field."""
    path = write(tmp_path / "t.toml", NODES.replace('parent = "hub"', 'parent = "x"'))

    assert main(["check", str(path)]) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"treescale: {path}: node 'leaf': field 'parent': 'x' is not a node of "
        "this file\n"
    )


def test_a_plain_bus_off_loopback_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file nodes would refuse to start with (a plain bus off loopback) fails
    the check too."""
    path = write(tmp_path / "t.toml", NODES.replace("127.0.0.1:7102", "10.0.0.2:7102"))

    assert main(["check", str(path)]) == 2

    err = capsys.readouterr().err
    assert "node 'leaf': field 'bus'" in err
    assert "add [tls]" in err


def test_a_missing_file_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file that is not there is a topology error, not a traceback."""
    assert main(["check", str(tmp_path / "absent.toml")]) == 2

    assert "cannot read the file" in capsys.readouterr().err


def test_version_and_draining_relays_are_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The summary names the topology's version and the relays that drain."""
    text = "[cluster]\nversion = 7\n" + NODES.replace(
        'domain = "rack-2"', 'domain = "rack-2"\ndrain = true'
    )

    assert main(["check", str(write(tmp_path / "t.toml", text))]) == 0

    summary = summary_of(capsys.readouterr().out)
    assert "topology version 7" in summary["cluster"]
    assert summary["draining"].startswith("leaf: no new chunks")
