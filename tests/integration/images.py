"""Real OCI images for the integration tests: built with umoci, moved with skopeo.

The image is made of files already on this machine, a few directory trees per layer,
so its layers are real gzip streams of real content: Python sources, documentation
and translations, shared libraries. What is installed differs between machines, so
the builder takes whichever source trees exist and keeps adding layers until the
compressed layers reach the size asked for. `read_image` turns an OCI layout back
into the digests a test compares after a round trip through a registry, and `Skopeo`
runs that round trip with a real client, isolated from the machine's own settings.

`build_runnable_image` makes the one image here a container can run: a static
busybox as its shell, and a message file in a layer of its own that the image's
command prints, so a container's output proves both layers and the config came back.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .cluster import Account

MiB = 1024 * 1024

# umoci writes gzip layers; real file trees shrink two to five times. The raw budget
# of a layer is its share of the compressed bytes still missing, times this.
RAW_PER_COMPRESSED = 3

# A single huge file would fill a layer alone; the cap keeps each layer varied.
LARGEST_FILE = 8 * MiB

MAX_LAYERS = 8


class ImageBuildError(Exception):
    """The machine lacks the tools or the files to build the image asked for."""


class SkopeoError(Exception):
    """A skopeo command that should have worked exited with an error.

    `stderr` is what skopeo itself said, apart from the command line.
    """

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


@dataclass(frozen=True)
class Descriptor:
    """One blob an OCI manifest or index points at."""

    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class OciImage:
    """One tagged image of an OCI layout, as the digests a registry must keep."""

    layout: Path
    tag: str
    manifest: Descriptor
    manifest_bytes: bytes
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @property
    def layers_size(self) -> int:
        """Compressed bytes of every layer together."""
        return sum(layer.size for layer in self.layers)

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """Manifest, config and layers: every blob a pull must bring back."""
        return (self.manifest, self.config, *self.layers)

    @property
    def content_digests(self) -> tuple[str, ...]:
        """Digests of the config and layers: the blobs a push uploads first."""
        return (self.config.digest, *(layer.digest for layer in self.layers))


@dataclass(frozen=True)
class LayerSource:
    """Directory trees whose files make up one layer; missing ones are skipped."""

    comment: str
    roots: tuple[Path, ...]


def blob_path(layout: Path, digest: str) -> Path:
    """Where an OCI layout keeps the blob named by `digest`."""
    algorithm, _, encoded = digest.partition(":")
    return layout / "blobs" / algorithm / encoded


def sha256_digest(data: bytes) -> str:
    """The digest, in the spec's form, of some bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """The digest, in the spec's form, of a file read in bounded pieces."""
    hasher = hashlib.sha256()
    with path.open("rb") as stream:
        while piece := stream.read(MiB):
            hasher.update(piece)
    return "sha256:" + hasher.hexdigest()


def mismatched_blobs(image: OciImage) -> list[str]:
    """Digests of the image's blobs whose bytes in the layout hash to something else."""
    return [
        blob.digest
        for blob in image.blobs
        if sha256_file(blob_path(image.layout, blob.digest)) != blob.digest
    ]


def _descriptor(entry: dict[str, object], fallback_type: str) -> Descriptor:
    """A descriptor from its JSON object; umoci's manifests may omit the media type."""
    return Descriptor(
        digest=str(entry["digest"]),
        size=int(str(entry["size"])),
        media_type=str(entry.get("mediaType", fallback_type)),
    )


def _tagged_manifest(layout: Path, tag: str) -> Descriptor:
    """The manifest descriptor that the layout's index names `tag`."""
    index = json.loads((layout / "index.json").read_text())
    for entry in index.get("manifests", []):
        annotations = entry.get("annotations", {})
        if annotations.get("org.opencontainers.image.ref.name") == tag:
            return _descriptor(entry, "application/vnd.oci.image.manifest.v1+json")
    raise LookupError(f"{layout} has no manifest tagged {tag!r}")


def read_image(layout: Path, tag: str) -> OciImage:
    """The manifest, config and layer digests of `tag` in an OCI layout."""
    manifest = _tagged_manifest(layout, tag)
    manifest_bytes = blob_path(layout, manifest.digest).read_bytes()
    body = json.loads(manifest_bytes)

    config = _descriptor(body["config"], "application/vnd.oci.image.config.v1+json")
    layers = tuple(
        _descriptor(layer, "application/vnd.oci.image.layer.v1.tar+gzip")
        for layer in body["layers"]
    )
    return OciImage(layout, tag, manifest, manifest_bytes, config, layers)


def layer_sources() -> tuple[LayerSource, ...]:
    """The trees layers are cut from, in order; the last one feeds any extra layer."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    usr = Path("/usr")
    return (
        LayerSource(
            "python standard library",
            (stdlib, *sorted(usr.glob("lib/python3*"))),
        ),
        LayerSource(
            "documentation and translations",
            tuple(usr / "share" / name for name in ("doc", "locale", "man", "i18n")),
        ),
        LayerSource(
            "shared libraries and programs",
            (usr / "lib" / multiarch, usr / "bin", usr / "sbin", usr / "libexec"),
        ),
        LayerSource(
            "more of /usr",
            (usr / "share", usr / "lib", usr / "local", Path("/opt")),
        ),
    )


def _regular_files(root: Path) -> Iterator[Path]:
    """Regular files under `root` in a stable order, never following a symlink."""
    for directory, subdirectories, names in os.walk(root):
        subdirectories.sort()
        for name in sorted(names):
            path = Path(directory) / name
            if path.is_file() and not path.is_symlink():
                yield path


def copy_files(
    roots: Sequence[Path], rootfs: Path, budget: int, copied: set[Path]
) -> int:
    """Copy files from `roots` into `rootfs` at their own paths, up to `budget` bytes.

    Files copied for an earlier layer, and files that cannot be read, are skipped.
    Returns the bytes copied.
    """
    total = 0
    for root in roots:
        if not root.is_dir():
            continue

        for source in _regular_files(root):
            if total >= budget:
                return total
            if source in copied:
                continue

            try:
                size = source.stat().st_size
                if size > LARGEST_FILE:
                    continue
                target = rootfs / source.relative_to("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
            except OSError:
                continue

            copied.add(source)
            total += size
    return total


def _umoci(*arguments: str) -> None:
    """Run one umoci command; its error output becomes the exception's message."""
    if shutil.which("umoci") is None:
        raise ImageBuildError("umoci is not installed")

    result = subprocess.run(
        ["umoci", *arguments], capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        raise ImageBuildError(f"umoci {' '.join(arguments)}: {result.stderr.strip()}")


def _raw_budget(missing: int, layers_left: int, smallest: int) -> int:
    """Raw bytes to copy for the next layer, given the compressed bytes still missing.

    A layer aims at its share of what is missing, and never below `smallest`, so the
    last of the layers asked for is not a sliver when the first ones came out large.
    """
    share = -(-max(missing, 0) // max(layers_left, 1))
    return max(share, smallest) * RAW_PER_COMPRESSED


def build_image(
    workdir: Path, tag: str, *, min_layers: int = 3, min_size: int = 40 * MiB
) -> OciImage:
    """Build an image of at least `min_layers` layers and `min_size` compressed bytes.

    The OCI layout goes to ``workdir/layout``; the unpacked bundle it was made from
    is removed afterwards.
    """
    layout = workdir / "layout"
    bundle = workdir / "bundle"
    image_ref = f"{layout}:{tag}"
    rootless = ["--rootless"] if os.geteuid() != 0 else []

    _umoci("init", "--layout", str(layout))
    _umoci("new", "--image", image_ref)
    _umoci("unpack", *rootless, "--image", image_ref, str(bundle))

    sources = layer_sources()
    smallest_layer = min_size // (2 * max(min_layers, 1))
    copied: set[Path] = set()
    image = read_image(layout, tag)
    for attempt in range(MAX_LAYERS):
        built = len(image.layers)
        if built >= min_layers and image.layers_size >= min_size:
            break

        source = sources[min(attempt, len(sources) - 1)]
        budget = _raw_budget(
            min_size - image.layers_size, min_layers - built, smallest_layer
        )
        if copy_files(source.roots, bundle / "rootfs", budget, copied) == 0:
            continue

        _umoci(
            "repack",
            "--refresh-bundle",
            "--history.comment",
            source.comment,
            "--image",
            image_ref,
            str(bundle),
        )
        image = read_image(layout, tag)

    shutil.rmtree(bundle)
    _umoci("gc", "--layout", str(layout))

    if len(image.layers) < min_layers or image.layers_size < min_size:
        raise ImageBuildError(
            f"only {len(image.layers)} layers of {image.layers_size} bytes could be "
            f"built from this machine's files (wanted {min_layers} of {min_size})"
        )
    return image


# Debian's busybox-static: one static binary, so the image needs no libraries.
STATIC_BUSYBOX = Path("/usr/bin/busybox")

# Where a runnable image keeps the line its command prints.
MESSAGE_PATH = Path("etc/treescale/message")

# The image's command: shell builtins only, as only /bin/sh links to busybox.
PRINT_MESSAGE = ("/bin/sh", "-c", f'read -r line < /{MESSAGE_PATH} && echo "$line"')


def _is_static_executable(path: Path) -> bool:
    """Whether `path` is an ELF file naming no dynamic loader, as a static one does."""
    try:
        header = path.read_bytes()[:4096]
    except OSError:
        return False
    return header.startswith(b"\x7fELF") and b"/ld-linux" not in header


def build_runnable_image(workdir: Path, tag: str, message: str) -> OciImage:
    """Build a two-layer image whose command prints `message` and exits.

    The first layer holds ``/bin/busybox`` and ``/bin/sh`` linking to it, the
    second the message file; the OCI layout goes to ``workdir/layout``.
    """
    if not _is_static_executable(STATIC_BUSYBOX):
        raise ImageBuildError(
            f"{STATIC_BUSYBOX} is not a static busybox (scripts/install adds one)"
        )

    layout = workdir / "layout"
    bundle = workdir / "bundle"
    image_ref = f"{layout}:{tag}"
    rootless = ["--rootless"] if os.geteuid() != 0 else []
    _umoci("init", "--layout", str(layout))
    _umoci("new", "--image", image_ref)
    _umoci("unpack", *rootless, "--image", image_ref, str(bundle))

    binaries = bundle / "rootfs" / "bin"
    binaries.mkdir(parents=True, exist_ok=True)
    shutil.copy2(STATIC_BUSYBOX, binaries / "busybox")
    (binaries / "sh").symlink_to("busybox")
    _repack(image_ref, bundle, "static busybox as /bin/sh")

    message_file = bundle / "rootfs" / MESSAGE_PATH
    message_file.parent.mkdir(parents=True, exist_ok=True)
    message_file.write_text(message + "\n")
    _repack(image_ref, bundle, "the message the image prints")

    command = [f"--config.cmd={part}" for part in PRINT_MESSAGE]
    _umoci("config", *command, "--image", image_ref)
    shutil.rmtree(bundle)
    _umoci("gc", "--layout", str(layout))
    return read_image(layout, tag)


def _repack(image_ref: str, bundle: Path, comment: str) -> None:
    """Add what changed in the bundle since the last layer as one new layer."""
    _umoci(
        "repack",
        "--refresh-bundle",
        "--history.comment",
        comment,
        "--image",
        image_ref,
        str(bundle),
    )


# skopeo remembers, machine-wide for root, which registries already hold which blobs,
# and then skips their uploads.
ROOT_BLOB_INFO_CACHE = Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb")

INSECURE_POLICY = {"default": [{"type": "insecureAcceptAnything"}]}


@dataclass(frozen=True)
class Skopeo:
    """skopeo over plain HTTP on loopback, with its own policy, settings and home.

    Nothing of the machine's container configuration (registries, mirrors,
    credentials, signature stores) reaches the client, so only the registry under
    test decides what a command sees. With an `account`, every command that talks
    to a registry signs in with it (``--creds``); without one, none does.
    """

    home: Path
    account: Account | None = None

    @classmethod
    def in_directory(cls, home: Path) -> "Skopeo":
        """A client whose every setting file lives under `home`."""
        (home / "registries.d").mkdir(parents=True, exist_ok=True)
        (home / "tmp").mkdir(exist_ok=True)
        (home / "policy.json").write_text(json.dumps(INSECURE_POLICY))
        (home / "registries.conf").write_text("")
        (home / "auth.json").write_text("{}")
        return cls(home)

    def signed_in(self, account: Account | None) -> "Skopeo":
        """The same client, signing in with `account` (or with nothing, if None)."""
        return replace(self, account=account)

    def _creds(self, option: str) -> list[str]:
        """`option` with the account's ``user:password``; nothing if anonymous."""
        return [] if self.account is None else [f"{option}={self.account.creds}"]

    def environment(self) -> dict[str, str]:
        """The variables skopeo runs with: no proxies, every path under home."""
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.lower().endswith("_proxy")
        }
        environment.update(
            HOME=str(self.home),
            XDG_DATA_HOME=str(self.home / "data"),
            XDG_CONFIG_HOME=str(self.home / "config"),
            XDG_RUNTIME_DIR=str(self.home / "run"),
            CONTAINERS_REGISTRIES_CONF=str(self.home / "registries.conf"),
            REGISTRY_AUTH_FILE=str(self.home / "auth.json"),
        )
        return environment

    def run(
        self, *arguments: str, timeout: float = 300
    ) -> "subprocess.CompletedProcess[bytes]":
        """Run one skopeo command and return what it did, whatever its exit code."""
        command = [
            "skopeo",
            "--policy",
            str(self.home / "policy.json"),
            "--registries.d",
            str(self.home / "registries.d"),
            "--tmpdir",
            str(self.home / "tmp"),
            *arguments,
        ]
        return subprocess.run(
            command, capture_output=True, env=self.environment(), timeout=timeout
        )

    def check(self, *arguments: str) -> bytes:
        """Run one skopeo command that must succeed; its standard output."""
        result = self.run(*arguments)
        if result.returncode != 0:
            error = result.stderr.decode(errors="replace").strip()
            raise SkopeoError(f"skopeo {' '.join(arguments)}: {error}", error)
        return result.stdout

    def push(self, image: OciImage, reference: str) -> None:
        """Copy `image` to ``docker://reference``, uploading every blob."""
        forget_uploads()
        self.check(
            "copy",
            "--dest-tls-verify=false",
            *self._creds("--dest-creds"),
            f"oci:{image.layout}:{image.tag}",
            f"docker://{reference}",
        )

    def pull(self, reference: str, layout: Path, tag: str) -> OciImage:
        """Copy ``docker://reference`` into a new OCI layout and read it back."""
        self.check(
            "copy",
            "--src-tls-verify=false",
            *self._creds("--src-creds"),
            f"docker://{reference}",
            f"oci:{layout}:{tag}",
        )
        return read_image(layout, tag)

    def inspect_raw(self, reference: str) -> bytes:
        """The manifest bytes the registry serves for `reference`."""
        return self.check(
            "inspect",
            "--raw",
            "--tls-verify=false",
            *self._creds("--creds"),
            f"docker://{reference}",
        )

    def inspect(self, reference: str) -> dict[str, object]:
        """skopeo's summary of an image: its digest, layers, tags, config fields."""
        answer = json.loads(
            self.check(
                "inspect",
                "--tls-verify=false",
                *self._creds("--creds"),
                f"docker://{reference}",
            )
        )
        if not isinstance(answer, dict):
            raise SkopeoError(f"skopeo inspect gave no JSON object: {answer!r}")
        return answer

    def list_tags(self, repository: str) -> list[str]:
        """The tags the registry lists for `repository` (``host:port/name``)."""
        answer = json.loads(
            self.check(
                "list-tags",
                "--tls-verify=false",
                *self._creds("--creds"),
                f"docker://{repository}",
            )
        )
        return [str(tag) for tag in answer.get("Tags") or []]

    def delete(self, reference: str) -> None:
        """Delete the manifest `reference` names, and so every tag on it."""
        self.check(
            "delete",
            "--tls-verify=false",
            *self._creds("--creds"),
            f"docker://{reference}",
        )


def forget_uploads() -> None:
    """Make skopeo forget which blobs registries hold, so a push uploads them all.

    skopeo run by a user other than root keeps this under its XDG_DATA_HOME, which
    `Skopeo` points at its own home; root's is machine-wide.
    """
    # Shortcoming: root's cache is shared by every skopeo on the machine; removing it
    # costs them only uploads they could have skipped, but it is not ours alone.
    if os.geteuid() == 0:
        ROOT_BLOB_INFO_CACHE.unlink(missing_ok=True)
