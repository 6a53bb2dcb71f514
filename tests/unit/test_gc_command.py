"""Tests of ``treescale gc`` and the registry node's ``/_treescale/gc`` endpoint."""

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from treescale.cli import main
from treescale.gc.endpoint import GcResource
from treescale.gc.settings import GcSettings

REPORT = {
    "dry_run": True,
    "blobs": ["sha256:" + "a" * 64],
    "blob_bytes": 10,
    "chunks": 2,
    "chunk_bytes": 20,
    "sessions": [],
    "tombstones": 0,
    "errors": [],
}


class _Node(http.server.BaseHTTPRequestHandler):
    """Answers POST /_treescale/gc with the class's status and document."""

    status = 200
    document: Any = REPORT
    paths: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        type(self).paths.append(self.path)
        body = json.dumps(self.document).encode()
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def node() -> Iterator[tuple[str, type[_Node]]]:
    handler = type("Handler", (_Node,), {"paths": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_dry_run_prints_what_would_go(
    node: tuple[str, type[_Node]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, handler = node

    assert main(["gc", "--url", url, "--dry-run"]) == 0

    assert handler.paths == ["/_treescale/gc?dry_run=1"]
    out = capsys.readouterr().out
    assert "1 blobs (10 bytes), 2 chunk files: would free 20 bytes" in out


def test_errors_in_the_report_exit_1(
    node: tuple[str, type[_Node]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, handler = node
    handler.document = {**REPORT, "dry_run": False, "errors": ["relay-b: timeout"]}

    assert main(["gc", "--url", url]) == 1

    out = capsys.readouterr().out
    assert "freed 20 bytes" in out and "error: relay-b: timeout" in out


def test_a_refusal_is_named(
    node: tuple[str, type[_Node]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, handler = node
    handler.status, handler.document = 409, {"error": "a collection is running"}

    assert main(["gc", "--url", url]) == 1

    assert "409: a collection is running" in capsys.readouterr().err


def gc_request(host: str) -> DummyRequest:
    request = DummyRequest([b"_treescale", b"gc"])
    request.method = b"POST"
    request.client = IPv4Address("TCP", host, 40000)
    return request


def test_endpoint_refuses_clients_of_other_hosts() -> None:
    """Without an administrator login, only a local client may run a collection."""
    resource = GcResource(object(), Clock(), GcSettings(), 3600.0)
    request = gc_request("10.1.2.3")

    body = resource.render_POST(request)  # type: ignore[arg-type]

    assert request.responseCode == 403
    assert isinstance(body, bytes) and b"only a local client" in body
    assert not resource.running


def test_endpoint_runs_one_collection_at_a_time() -> None:
    resource = GcResource(object(), Clock(), GcSettings(), 3600.0)
    resource.running = True
    request = gc_request("127.0.0.1")

    resource.render_POST(request)  # type: ignore[arg-type]

    assert request.responseCode == 409
