"""The registry node's status page, rendered by headless Chromium on a real tree.

A relay is stopped; the page, which draws the tree from ``/_treescale/status`` with
its own script, must show that relay down and the others up, both in its DOM and in
the picture itself (one red circle, three green ones).
"""

import re
from pathlib import Path

import pytest

from .browser import pixels_near, rendered_dom, screenshot
from .cluster import Cluster, wait_for

pytestmark = pytest.mark.integration

UP_GREEN = (0x2E, 0x7D, 0x32)
DOWN_RED = (0xC6, 0x28, 0x28)

# A node's circle (radius 22) is about 1,500 pixels; the legend's dots and the dashed
# edge of a down node add a few hundred.
ONE_CIRCLE = 1000
TWO_CIRCLES = 2800

NODE_STATE = re.compile(r'data-name="([^"]+)" data-state="([^"]+)"')


def page_url(cluster: Cluster) -> str:
    return f"http://{cluster.address}/_treescale/"


def drawn_dom(url: str, attempts: int = 3) -> str:
    """The page's DOM once its script has drawn the tree.

    On a loaded machine chromium's script budget can run out before the status
    document arrives; a page with nothing drawn is rendered again.
    """
    dom = ""
    for _ in range(attempts):
        dom = rendered_dom(url)
        if NODE_STATE.search(dom):
            break
    return dom


def test_status_document_carries_repair_progress(cluster: Cluster) -> None:
    """The status JSON names every relay's scrub state (or null before its first
    report) beside the tree."""
    status = cluster.status()

    repair = status["repair"]
    assert isinstance(repair, dict)
    assert set(repair["relays"]) == set(cluster.relays)


def test_page_draws_each_node_in_its_state(cluster: Cluster, tmp_path: Path) -> None:
    """With relay-b stopped, the drawn tree has it down and every other node up."""
    cluster.stop_node("relay-b")
    cluster.wait_for_relays(2)

    dom = drawn_dom(page_url(cluster))
    shot = screenshot(page_url(cluster), tmp_path / "status.png")

    assert dict(NODE_STATE.findall(dom)) == {
        "registry": "up",
        "relay-a": "up",
        "relay-b": "down",
        "relay-c": "up",
    }
    assert "2 of 3 relays up" in dom
    red, green = pixels_near(shot, DOWN_RED), pixels_near(shot, UP_GREEN)
    assert ONE_CIRCLE < red < TWO_CIRCLES, red
    assert green > 3 * ONE_CIRCLE, green


RATE_TEXT = re.compile(r'data-link="(relay-[abc])"[^>]*>\u2193 [0-9.]+ [KMGT]?i?B/s')


def test_page_shows_link_rates_and_rebalance_progress(cluster: Cluster) -> None:
    """Each of the registry's links is labelled with its rate once two samples
    are taken, and the relays' rebalance shows as a bar with its figures."""

    def reported() -> bool:
        status = cluster.status()
        rebalance = status.get("rebalance")
        published = isinstance(rebalance, dict) and all(
            rebalance["relays"].get(relay) is not None for relay in cluster.relays
        )
        rates = status.get("link_rates")
        return published and isinstance(rates, dict) and len(rates) == 3

    wait_for(reported, "link rates and every relay's rebalance status", 30.0)

    dom = drawn_dom(page_url(cluster))

    assert set(RATE_TEXT.findall(dom)) == set(cluster.relays)
    assert "<progress" in dom
    assert "rebalance: nothing left to move" in dom
    assert "topology version 1" in dom
