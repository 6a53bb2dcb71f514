"""``treescale gc`` against a real tree: it runs on the registry node while it
serves, keeps everything a live tag or link needs, and leaves fresh garbage alone
for the grace period (what it deletes past grace is proved in tests/unit/test_gc.py).
"""

import hashlib
import json
import os
import urllib.request

import pytest

from .cluster import Cluster, run_treescale

pytestmark = pytest.mark.integration

CONFIG = b"{}"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def call(
    cluster: Cluster, method: str, path: str, body: bytes = b"", **headers: str
) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://{cluster.address}{path}", data=body or None, method=method
    )
    for name, value in headers.items():
        request.add_header(name.replace("_", "-"), value)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as answer:
        return answer.status, answer.read()


def push_image(cluster: Cluster, repo: str, tag: str, layer: bytes) -> str:
    """Push a layer, a config and a manifest naming them; the manifest's digest."""
    for blob in (layer, CONFIG):
        status, _ = call(
            cluster, "POST", f"/v2/{repo}/blobs/uploads/?digest={digest(blob)}", blob
        )
        assert status == 201
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest(CONFIG),
                "size": len(CONFIG),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    status, _ = call(
        cluster,
        "PUT",
        f"/v2/{repo}/manifests/{tag}",
        manifest,
        Content_Type=MANIFEST_TYPE,
    )
    assert status == 201
    return digest(manifest)


def treescale_gc(cluster: Cluster, *arguments: str) -> dict[str, object]:
    """Run the command against the tree's registry node; its JSON report."""
    finished = run_treescale(
        "gc", "--url", f"http://{cluster.address}", "--json", *arguments, timeout=300
    )
    assert finished.returncode == 0, finished.stderr
    report = json.loads(finished.stdout)
    assert isinstance(report, dict)
    return report


def test_gc_keeps_what_is_live_and_fresh_garbage(cluster: Cluster) -> None:
    """A dry run and a real run while the tree serves: the tagged image pulls back
    whole afterwards, and a just-deleted image is not collected within grace."""
    kept_layer, dropped_layer = os.urandom(3 * 1024 * 1024), os.urandom(1024 * 1024)
    push_image(cluster, "gc/kept", "v1", kept_layer)
    dropped = push_image(cluster, "gc/dropped", "v1", dropped_layer)
    assert call(cluster, "DELETE", f"/v2/gc/dropped/manifests/{dropped}")[0] == 202
    path = f"/v2/gc/dropped/blobs/{digest(dropped_layer)}"
    assert call(cluster, "DELETE", path)[0] == 202

    dry = treescale_gc(cluster, "--dry-run")
    real = treescale_gc(cluster)

    assert dry["dry_run"] is True and real["dry_run"] is False
    assert dry["errors"] == [] and real["errors"] == []
    assert digest(dropped_layer) not in real["blobs"]
    status, body = call(cluster, "GET", f"/v2/gc/kept/blobs/{digest(kept_layer)}")
    assert (status, body) == (200, kept_layer)
    assert "garbage collection:" in cluster.log_text("registry")
