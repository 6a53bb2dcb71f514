"""Tests of ``treescale status``: a real HTTP server on loopback plays the registry
node, answering with documents built by the code that builds the node's own."""

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from treescale.cli import (
    NodeView,
    ReadyView,
    StatusView,
    main,
    render_status,
    replica_health,
)
from treescale.config import Topology, load
from treescale.store.repair import ScrubCounts
from treescale.web.status import tree_status

LOCAL_TOML = Path(__file__).resolve().parents[2] / "conf" / "local.toml"


@dataclass
class Answers:
    """What the fake node answers: a status code and a body per path."""

    pages: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    delay: float = 0.0
    asked: list[str] = field(default_factory=list)


class _Handler(http.server.BaseHTTPRequestHandler):
    answers: Answers

    def do_GET(self) -> None:
        self.answers.asked.append(self.path)
        time.sleep(self.answers.delay)
        status, body = self.answers.pages.get(self.path, (404, b"{}"))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def node() -> Iterator[tuple[str, Answers]]:
    """A loopback HTTP server on a free port, and what it answers."""
    answers = Answers()
    handler = type("Handler", (_Handler,), {"answers": answers})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", answers
    finally:
        server.shutdown()
        server.server_close()


def serve_tree(
    answers: Answers,
    topology: Topology,
    up: set[str],
    links: set[str],
    figures: dict[str, dict[str, int]] | None = None,
    needed: int = 2,
    in_memory: set[str] | None = None,
) -> None:
    """Answer as the registry node of `topology` does with `up` reachable."""
    status = tree_status(topology, "registry", lambda name: name in up, figures)
    status["links"] = sorted(links)
    if in_memory is not None:
        status["links_in_memory"] = sorted(in_memory)
    answers.pages["/_treescale/status"] = (200, json.dumps(status).encode())
    relays_up = status["relays_up"]
    ready = {"ready": relays_up >= needed, "relays_up": relays_up}
    ready["relays_needed"] = needed
    code = 200 if relays_up >= needed else 503
    answers.pages["/readyz"] = (code, json.dumps(ready).encode())


def test_ready_tree_prints_every_node_and_exits_0(
    node: tuple[str, Answers], capsys: pytest.CaptureFixture[str]
) -> None:
    """A ready node's tree is printed indented under its root, exit status 0."""
    url, answers = node
    everyone = {"registry", "relay-a", "relay-b", "relay-c"}
    serve_tree(answers, load(LOCAL_TOML), everyone, everyone - {"registry"})

    assert main(["status", "--url", url]) == 0

    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"cluster local, as node registry at {url} sees it"
    rows = {line.split()[0]: line for line in lines if line.startswith(("r", " "))}
    assert lines[3].startswith("registry ")
    assert lines[4].startswith("  relay-a ")
    assert rows["registry"].split()[4:6] == ["up", "self"]
    assert rows["relay-b"].split()[4:6] == ["up", "direct"]
    assert "relays    3 of 3 up" in out
    assert "healthy" in out
    assert "ready     yes (3 relays reached, 2 needed)" in out
    assert answers.asked == ["/_treescale/status", "/readyz"]


def test_a_node_of_the_same_process_shows_its_link_in_memory(
    node: tuple[str, Answers], capsys: pytest.CaptureFixture[str]
) -> None:
    """A relay the registry node links in memory (the embedded default's) shows
    ``memory``; one in another process ``direct``."""
    url, answers = node
    everyone = {"registry", "relay-a", "relay-b", "relay-c"}
    relays = everyone - {"registry"}
    serve_tree(answers, load(LOCAL_TOML), everyone, relays, in_memory={"relay-a"})

    assert main(["status", "--url", url]) == 0

    links = {
        line.split()[0]: line.split()[5]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("  relay-")
    }
    assert links == {"relay-a": "memory", "relay-b": "direct", "relay-c": "direct"}


def test_not_ready_exits_1_and_says_which_relays_are_down(
    node: tuple[str, Answers], capsys: pytest.CaptureFixture[str]
) -> None:
    """With too few relays up the node is not ready: the tree shows them down and
    the exit status is 1."""
    url, answers = node
    serve_tree(answers, load(LOCAL_TOML), {"registry", "relay-a"}, {"relay-a"})

    assert main(["tree", "--url", url]) == 1

    out = capsys.readouterr().out
    states = {
        line.split()[0]: line.split()[4:6]
        for line in out.splitlines()
        if "relay-" in line
    }
    assert states == {
        "relay-a": ["up", "direct"],
        "relay-b": ["down", "-"],
        "relay-c": ["down", "-"],
    }
    assert "at risk: 2 relays down" in out
    assert "ready     NO (1 relays reached, 2 needed)" in out


def test_reported_figures_are_shown_in_units(
    node: tuple[str, Answers], capsys: pytest.CaptureFixture[str]
) -> None:
    """Chunk counts and bytes a relay reported appear in its row; others show -."""
    url, answers = node
    everyone = {"registry", "relay-a", "relay-b", "relay-c"}
    figures = {"relay-a": {"chunks": 12, "bytes": 3 * 1024 * 1024 + 512 * 1024}}
    serve_tree(answers, load(LOCAL_TOML), everyone, everyone, figures)

    assert main(["status", "--url", url]) == 0

    out = capsys.readouterr().out
    relay_a = next(line for line in out.splitlines() if "relay-a" in line)
    relay_b = next(line for line in out.splitlines() if "relay-b" in line)
    assert relay_a.split()[-3:] == ["12", "3.5", "MiB"]
    assert relay_b.split()[-2:] == ["-", "-"]
    assert "until the relays report them" not in out


def test_a_node_that_does_not_listen_is_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Nothing listening at the address: exit 1, and the message names the
    address and how to give another."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    assert main(["status", "--url", f"http://127.0.0.1:{port}"]) == 1

    err = capsys.readouterr().err
    assert f"http://127.0.0.1:{port}/_treescale/status" in err
    assert "--url" in err


def test_a_proxy_in_the_environment_is_not_used(
    node: tuple[str, Answers],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The address given is the one asked, whatever proxy the environment names."""
    url, answers = node
    serve_tree(answers, load(LOCAL_TOML), {"registry", "relay-a", "relay-b"}, set())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    for variable in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(variable, dead)

    assert main(["status", "--url", url]) == 0
    assert answers.asked == ["/_treescale/status", "/readyz"]


def test_a_silent_node_times_out(
    node: tuple[str, Answers], capsys: pytest.CaptureFixture[str]
) -> None:
    """A node that does not answer within --timeout is reported, exit status 1."""
    url, answers = node
    answers.delay = 2.0
    started = time.monotonic()

    assert main(["status", "--url", url, "--timeout", "0.2"]) == 1

    assert time.monotonic() - started < 1.5
    assert "timed out" in capsys.readouterr().err


def test_a_server_that_is_not_treescale_is_named(
    node: tuple[str, Answers], capsys: pytest.CaptureFixture[str]
) -> None:
    """A 404 for the status document says the address is not a registry node."""
    url, _ = node

    assert main(["status", "--url", url]) == 1

    assert "answered 404: not a treescale registry node?" in capsys.readouterr().err


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"node": "x"}', b'{"node": 1, "cluster": "c"}'],
    ids=["not json", "a list", "fields missing", "wrong types"],
)
def test_a_broken_status_document_is_refused(
    node: tuple[str, Answers], capsys: pytest.CaptureFixture[str], body: bytes
) -> None:
    """A 200 answer that is not a status document is an error, not a traceback."""
    url, answers = node
    answers.pages["/_treescale/status"] = (200, body)

    assert main(["status", "--url", url]) == 1

    assert "is not a treescale status document" in capsys.readouterr().err


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1:21",
        "127.0.0.1:5000",
        "http://127.0.0.1:5000/v2/",
        "http://127.0.0.1:99999",
        "http://user:pw@127.0.0.1:5000",
    ],
)
def test_bad_urls_are_usage_errors(url: str) -> None:
    """Only an http(s) address of a host and port is taken, checked before any
    connection."""
    with pytest.raises(SystemExit) as caught:
        main(["status", "--url", url])

    assert caught.value.code == 2


def node_view(name: str, parent: str | None, state: str = "up") -> NodeView:
    return NodeView(name, parent, ("store",), name, 1.0, state, None, None)


def test_a_deeper_tree_is_indented_by_depth() -> None:
    """Each level of the tree is indented two more spaces, children under their
    parent in document order; a node whose parent is unknown is drawn as a root."""
    tree = (
        node_view("root", None),
        node_view("mid", "root"),
        node_view("leaf", "mid"),
        node_view("other", "root"),
        node_view("stray", "ghost"),
    )
    status = StatusView("root", "c", 2, 5, 5, frozenset({"mid"}), tree)

    lines = render_status(status, ReadyView(True, 5, 2), "http://127.0.0.1:1")

    table = lines[3:8]
    assert [row.split()[0] for row in table] == [
        "root",
        "mid",
        "leaf",
        "other",
        "stray",
    ]
    assert [len(row) - len(row.lstrip()) for row in table] == [0, 2, 4, 2, 0]
    assert table[1].split()[5] == "direct"
    assert table[2].split()[5] == "-"


def test_replica_health_compares_relays_down_with_copies() -> None:
    """Fewer relays down than copies is degraded but whole; as many is at risk."""
    assert replica_health(3, 3, 2).startswith("healthy")
    assert replica_health(3, 2, 2).startswith("degraded: 1 relay(s) down")
    assert replica_health(3, 1, 2).startswith("at risk")
    assert replica_health(1, 1, 2) == "healthy: every relay up, 1 copies of each chunk"


def scrub_status(
    passes: int, last: ScrubCounts | None, age: float
) -> dict[str, object]:
    """A relay's published scrub status, shaped as the relays publish it."""
    return {
        "state": "waiting",
        "passes": passes,
        "last_pass": None if last is None else last.to_json(),
        "total": (last or ScrubCounts()).to_json(),
        "age": age,
    }


def test_repair_progress_fills_in_figures_and_health(
    node: tuple[str, Answers], capsys: pytest.CaptureFixture[str]
) -> None:
    """Each relay's last scrub pass gives its chunks and bytes when it reported
    none, a row of the scrub table, and the summed repair line."""
    url, answers = node
    everyone = {"registry", "relay-a", "relay-b", "relay-c"}
    serve_tree(answers, load(LOCAL_TOML), everyone, everyone)
    status, body = answers.pages["/_treescale/status"]
    document = json.loads(body)
    document["repair"] = {
        "relays": {
            "relay-a": scrub_status(
                3, ScrubCounts(chunks=7, nbytes=2048, missing=2, copied=2), 4.2
            ),
            "relay-b": scrub_status(1, ScrubCounts(chunks=5, failed=1), 1.0),
            "relay-c": None,
        },
        "total": ScrubCounts().to_json(),
    }
    answers.pages["/_treescale/status"] = (status, json.dumps(document).encode())

    assert main(["status", "--url", url]) == 0

    lines = capsys.readouterr().out.splitlines()
    tree = {line.split()[0]: line.split() for line in lines if "  store  " in line}
    assert tree["relay-a"][-3:] == ["7", "2.0", "KiB"]
    assert tree["relay-b"][-3:] == ["5", "0", "B"]
    assert tree["relay-c"][-2:] == ["-", "-"]
    repairs = lines.index(
        "repairs   last passes of 2 relays: 2 copies missing, 2 made, 1 failed, "
        "0 corrupt"
    )
    assert lines[repairs + 1 : repairs + 3] == [
        "          since they started: 2 copies missing, 2 made, 1 failed, 0 corrupt",
        "          1 relays published no scrub status",
    ]
    scrub = {line.split()[0]: line.split() for line in lines if "waiting" in line}
    assert " ".join(scrub["relay-a"]) == "relay-a waiting 3 7 2 2 0 0 4 s ago"
    assert any(line.startswith("relay-c") and "unknown" in line for line in lines)
    assert any("last scrub pass counted" in line for line in lines)


def test_repair_progress_that_the_node_could_not_read_is_said(
    node: tuple[str, Answers], capsys: pytest.CaptureFixture[str]
) -> None:
    """A null repair part (the relays' records did not answer in time) and a
    malformed relay entry are shown as unknown, not as a failure."""
    url, answers = node
    everyone = {"registry", "relay-a", "relay-b", "relay-c"}
    serve_tree(answers, load(LOCAL_TOML), everyone, everyone)
    status, body = answers.pages["/_treescale/status"]
    document = json.loads(body)

    document["repair"] = None
    answers.pages["/_treescale/status"] = (status, json.dumps(document).encode())
    assert main(["status", "--url", url]) == 0
    unknown = capsys.readouterr().out

    document["repair"] = {"relays": {"relay-a": {"state": 3, "passes": "x"}}}
    answers.pages["/_treescale/status"] = (status, json.dumps(document).encode())
    assert main(["status", "--url", url]) == 0
    malformed = capsys.readouterr().out

    assert "repairs   not known: the node gave no repair progress" in unknown
    assert "repairs   no relay has finished a scrub pass yet" in malformed
    assert any(
        line.startswith("relay-a") and "unknown" in line
        for line in malformed.splitlines()
    )


def test_a_draining_relay_says_so(
    node: tuple[str, Answers], capsys: pytest.CaptureFixture[str]
) -> None:
    """A relay marked drain in the tree shows its state as up,draining."""
    url, answers = node
    tree = load(LOCAL_TOML)
    tree = replace(
        tree,
        nodes=tuple(
            replace(n, drain=True) if n.name == "relay-b" else n for n in tree.nodes
        ),
    )
    everyone = {"registry", "relay-a", "relay-b", "relay-c"}
    serve_tree(answers, tree, everyone, everyone - {"registry"})

    assert main(["status", "--url", url]) == 0

    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines if line.startswith(("r", " "))}
    assert rows["relay-b"].split()[4] == "up,draining"
    assert rows["relay-a"].split()[4] == "up"
