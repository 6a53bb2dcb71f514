"""Tests of the status document and the status page resource."""

from pathlib import Path

from twisted.web.test.requesthelper import DummyRequest

from treescale.config import load
from treescale.web.page import StatusPage, page_html
from treescale.web.status import tree_status

LOCAL = Path(__file__).resolve().parents[2] / "conf" / "local.toml"


def test_every_node_is_listed_with_its_place_and_state() -> None:
    """The document lists each node of the file, parent and roles included, up
    where the bus reaches it and down where it does not."""
    topology = load(LOCAL)

    status = tree_status(topology, "registry", lambda name: name != "relay-b")

    states = {node["name"]: node["state"] for node in status["tree"]}
    assert states == {
        "registry": "up",
        "relay-a": "up",
        "relay-b": "down",
        "relay-c": "up",
    }
    assert (status["relays"], status["relays_up"]) == (3, 2)
    relay_a = next(node for node in status["tree"] if node["name"] == "relay-a")
    assert relay_a["parent"] == "registry"
    assert relay_a["roles"] == ("store",)


def test_reported_figures_are_kept_and_bad_ones_dropped() -> None:
    """Chunk counts and bytes a relay reported show; anything not a count is null."""
    topology = load(LOCAL)
    figures = {"relay-a": {"chunks": 12, "bytes": 4096}, "relay-b": {"chunks": -1}}

    status = tree_status(topology, "registry", lambda name: True, figures)

    by_name = {node["name"]: node for node in status["tree"]}
    assert (by_name["relay-a"]["chunks"], by_name["relay-a"]["bytes"]) == (12, 4096)
    assert by_name["relay-b"]["chunks"] is None
    assert by_name["relay-c"]["bytes"] is None


def test_page_is_html_that_reads_the_status_document() -> None:
    """The page is served as HTML, never cached, and fetches the status JSON."""
    request = DummyRequest([b""])

    body = StatusPage().render_GET(request)  # type: ignore[arg-type]

    assert request.responseHeaders.getRawHeaders(b"content-type") == [
        b"text/html; charset=utf-8"
    ]
    assert b'fetch("/_treescale/status"' in body
    assert b"const REFRESH_MS = 5 * 1000" in page_html(5)
