"""Tests of ``treescale rebalance`` and of the rebalance lines of ``treescale
status``: a real HTTP server on loopback plays the registry node (the fake of
`test_cli_status`), answering with status documents built from the code's own."""

import io
import json
from collections.abc import Mapping

import pytest

from tests.unit import test_cli_status as fake_node
from treescale.cli import ProgressBar, main, parse_status, rebalance_fraction
from treescale.config import load
from treescale.store.rebalance import IDLE, RUNNING, RebalanceCounts
from treescale.topology_change import placement_digest
from treescale.web.status import tree_status

Answers = fake_node.Answers
node = fake_node.node
TOPOLOGY = load(fake_node.LOCAL_TOML)
PLACEMENT = placement_digest(TOPOLOGY)
RELAYS = ("relay-a", "relay-b", "relay-c")
EVERYONE = {"registry", *RELAYS}


def relay_status(
    state: str = IDLE,
    placement: str = PLACEMENT,
    moved: int = 0,
    left: int = 0,
    records_left: int = 0,
) -> dict[str, object]:
    """One relay's published rebalance status, as the rebalancer shapes it."""
    counts = RebalanceCounts(
        chunks_misplaced=moved + left,
        bytes_misplaced=(moved + left) * 1000,
        chunks_moved=moved,
        bytes_moved=moved * 1000,
        records_misplaced=records_left,
    )
    return {"state": state, "placement": placement, "age": 2.0, **counts.to_json()}


def document(relays: Mapping[str, dict[str, object] | None]) -> bytes:
    """The registry's status document with these relays' rebalance statuses."""
    status = tree_status(TOPOLOGY, "registry", lambda name: name in EVERYONE)
    status["links"] = sorted(RELAYS)
    status["rebalance"] = {"relays": dict(relays), "total": {}}
    return json.dumps(status).encode()


def serve(answers: Answers, relays: Mapping[str, dict[str, object] | None]) -> None:
    answers.pages["/_treescale/status"] = (200, document(relays))
    ready = {"ready": True, "relays_up": 3, "relays_needed": 2}
    answers.pages["/readyz"] = (200, json.dumps(ready).encode())


DONE = {name: relay_status() for name in RELAYS}
WORKING = {
    "relay-a": relay_status(RUNNING, moved=3, left=5),
    "relay-b": relay_status(placement="0123456789abcdef"),
    "relay-c": None,
}


def test_done_rebalance_exits_0(
    node: tuple[str, Answers], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every relay idle for the node's placement with nothing left: exit 0."""
    url, answers = node
    serve(answers, DONE)

    assert main(["rebalance", "--url", url]) == 0

    out = capsys.readouterr().out
    assert f"rebalance done: every relay holds what placement {PLACEMENT}" in out


def test_unfinished_rebalance_shows_each_relay_and_exits_1(
    node: tuple[str, Answers], capsys: pytest.CaptureFixture[str]
) -> None:
    """A relay with chunks left, one on an older placement and one silent are
    each shown for what they are, and the exit status is 1."""
    url, answers = node
    serve(answers, WORKING)

    assert main(["rebalance", "--url", url]) == 1

    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines if "relay-" in line}
    assert rows["relay-a"][:5] == ["relay-a", "running", "current", "3", "5"]
    assert rows["relay-b"][2] == "0123456789abcdef"
    assert rows["relay-c"][1] == "unknown"
    assert lines[0].startswith("rebalance 5 chunks (4.9 KiB) and 0 records left")
    assert "still working: relay-a, relay-b, relay-c" in lines[0]


def test_wait_returns_0_once_every_relay_is_done(
    node: tuple[str, Answers],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With --wait the node is asked again until the rebalance is done; plain
    progress lines are printed when not on a terminal."""
    url, answers = node
    serve(answers, WORKING)
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 2:
            serve(answers, DONE)

    monkeypatch.setattr("treescale.cli.sleep", pause)

    assert main(["rebalance", "--wait", "--url", url]) == 0

    out = capsys.readouterr().out
    assert answers.asked.count("/_treescale/status") == 3
    assert out.count("5 chunks and 0 records left, 3 relays working") == 1
    assert "rebalance done" in out


def test_wait_that_times_out_exits_1_saying_what_is_left(
    node: tuple[str, Answers], capsys: pytest.CaptureFixture[str]
) -> None:
    """A rebalance not done by --timeout: exit 1, and the message says so."""
    url, answers = node
    serve(answers, WORKING)

    assert main(["rebalance", "--wait", "--timeout", "0.3", "--url", url]) == 1

    err = capsys.readouterr().err
    assert err.startswith("treescale rebalance: not done within 0.3 s: rebalance 5")


def test_wait_survives_a_node_that_does_not_answer_once(
    node: tuple[str, Answers],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A poll the node answers with an error is not the end of the wait."""
    url, answers = node
    answers.pages["/_treescale/status"] = (503, b"{}")
    monkeypatch.setattr("treescale.cli.sleep", lambda _: serve(answers, DONE))

    assert main(["rebalance", "--wait", "--url", url]) == 0
    assert "answered 503" in capsys.readouterr().out


def test_status_shows_rebalance_progress(
    node: tuple[str, Answers], capsys: pytest.CaptureFixture[str]
) -> None:
    """``treescale status`` has a rebalance line, and a table while one is under
    way."""
    url, answers = node
    serve(answers, WORKING)

    assert main(["status", "--url", url]) == 0

    out = capsys.readouterr().out
    assert "rebalance 5 chunks (4.9 KiB) and 0 records left, 3 chunks moved" in out
    assert any(line.startswith("REBALANCE ") for line in out.splitlines())


def test_status_of_a_done_rebalance_is_one_line(
    node: tuple[str, Answers], capsys: pytest.CaptureFixture[str]
) -> None:
    """With nothing left there is no rebalance table."""
    url, answers = node
    serve(answers, DONE)

    main(["status", "--url", url])

    out = capsys.readouterr().out
    assert "rebalance done" in out
    assert "REBALANCE " not in out


def test_progress_is_moved_bytes_over_the_whole() -> None:
    """The fraction counts the relays on the node's placement only."""
    status = parse_status(document(WORKING), "here")

    assert rebalance_fraction(status) == pytest.approx(3 / 8)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_redraws_one_line_on_a_terminal() -> None:
    """On a terminal each update rewrites the same line; the end leaves it."""
    screen = Terminal()
    bar = ProgressBar(screen)

    bar.show(0.25, "a")
    bar.show(0.5, "b")
    bar.end(1.0, "done")

    text = screen.getvalue()
    assert text.count("\r") == 3 and text.endswith("done\n")
    assert "[" + "#" * 15 + "-" * 15 + "]   50%  b" in text


def test_progress_lines_elsewhere_only_when_they_change() -> None:
    """Off a terminal a line is written per change, never a carriage return."""
    out = io.StringIO()
    bar = ProgressBar(out)

    bar.show(None, "waiting")
    bar.show(None, "waiting")
    bar.show(0.5, "half")

    assert out.getvalue().splitlines() == [
        "[" + "?" * 30 + "]  ---%  waiting",
        "[" + "#" * 15 + "-" * 15 + "]   50%  half",
    ]
