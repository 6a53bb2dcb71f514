"""What is garbage: pure decisions over what the collector read, no I/O.

The design, in short:

- Roots are every live ``link/<repo>/<digest>`` record and every live
  ``manifest/<repo>/<digest>`` record. A manifest keeps alive its own blob and what
  its bytes reference (config, layers, child manifests), so unlinking a layer an
  existing manifest still uses never breaks the manifest.
- A blob (its ``recipe/<digest>`` record) is garbage when no root names it and its
  newest write is older than the grace period. Pushing a blob again writes its
  recipe again, so a blob being pushed always looks young.
- A chunk is garbage when no surviving recipe and no live upload session names it
  and its file is older than the grace period. An upload writes chunks before any
  recipe; every chunk put renames a fresh file into place, so a push reusing an old
  chunk makes it young again.
- An upload session idle past the registry's upload idle timeout is expired: its
  record goes, and its chunks with it once nothing else names them.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from treescale.registry.errors import ApiError
from treescale.registry.manifests import parse_manifest
from treescale.registry.saved_uploads import SessionRecord
from treescale.store.blobs import UploadState


def digest_of_key(key: str, prefix: str) -> str | None:
    """The digest a ``link/`` or ``manifest/`` key ends with (``<repo>/<digest>``)."""
    rest = key.removeprefix(prefix)
    _, _, digest = rest.rpartition("/")
    return digest if ":" in digest else None


def manifest_references(data: bytes, media_type: str) -> set[str]:
    """The digests a manifest's bytes keep alive: config, layers and children.

    The subject is not among them: the spec lets a referrer outlive its subject.
    Bytes that do not parse keep nothing alive but themselves.
    """
    try:
        manifest = parse_manifest(data, media_type, max_size=len(data) + 1)
    except (ApiError, ValueError):
        return set()
    return {d.digest for d in manifest.blobs} | {d.digest for d in manifest.manifests}


def session_expired(record: SessionRecord, now: float, idle_timeout: float) -> bool:
    """Whether an upload session has gone unused past the idle timeout."""
    return now - record.last_activity > idle_timeout


def session_chunks(record: SessionRecord) -> set[str]:
    """The chunks a session's saved upload names (none before its first save)."""
    if record.upload is None:
        return set()
    try:
        state = UploadState.decode(record.upload)
    except ValueError:
        return set()
    chunks = {chunk.digest for chunk in state.chunks}
    if state.tail is not None:
        chunks.add(state.tail.digest)
    return chunks


def recipe_is_garbage(
    digest: str, written_ms: int, live_blobs: set[str], now: float, grace: float
) -> bool:
    """Whether a recipe no root names and last written before the grace period."""
    return digest not in live_blobs and written_ms < (now - grace) * 1000


def chunks_to_sweep(
    page: Iterable[tuple[str, int, float]], live_chunks: set[str], grace: float
) -> list[tuple[str, int]]:
    """The chunks of a relay's page (digest, size, age) that may go, with sizes."""
    return [
        (digest, size)
        for digest, size, age in page
        if digest not in live_chunks and age > grace
    ]


@dataclass
class GcReport:
    """What one collection found and, unless a dry run, removed."""

    dry_run: bool
    blobs: list[str] = field(default_factory=list)
    blob_bytes: int = 0
    chunks: int = 0
    chunk_bytes: int = 0
    sessions: list[str] = field(default_factory=list)
    tombstones: int = 0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        """The report as an operator's tools read it."""
        return json.dumps(
            {
                "dry_run": self.dry_run,
                "blobs": self.blobs,
                "blob_bytes": self.blob_bytes,
                "chunks": self.chunks,
                "chunk_bytes": self.chunk_bytes,
                "sessions": self.sessions,
                "tombstones": self.tombstones,
                "errors": self.errors,
            },
            indent=2,
        )

    def summary(self) -> str:
        """One line for a terminal."""
        verb = "would free" if self.dry_run else "freed"
        return (
            f"{len(self.blobs)} blobs ({self.blob_bytes} bytes), {self.chunks} chunks: "
            f"{verb} {self.chunk_bytes} bytes; {len(self.sessions)} upload sessions "
            f"expired; {self.tombstones} tombstones purged; {len(self.errors)} errors"
        )
