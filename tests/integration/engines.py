"""Container engines for the integration tests: podman, and docker with its daemon.

skopeo talks to a registry the way a library does; these are the engines people run,
and they send what skopeo does not: podman and docker stream every layer in one
``PATCH`` with ``Transfer-Encoding: chunked``, and docker pushes Docker schema 2
manifests and pulls with a ``HEAD`` by tag, then a ``GET`` by digest. Each engine
here keeps its images, settings and credentials under a folder of the test's own,
and dockerd runs as a child of the test with its own data root, exec root and socket,
so nothing of the machine's container set-up takes part. Every wait is bounded, and
stopping dockerd also ends what it started (its containerd).

The module also holds the plain HTTP requests a test makes to see what a registry
answers for a manifest or a blob, never through a proxy.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .cluster import POLL_INTERVAL, stop_process, tail
from .images import INSECURE_POLICY, MiB, OciImage, Skopeo

COMMAND_TIMEOUT = 120.0
DAEMON_TIMEOUT = 30.0
DAEMON_STOP_TIMEOUT = 15.0

# What docker sends as Accept when it asks for a manifest: both Docker schema 2
# types and both OCI ones.
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)

DOCKER_MANIFEST = MANIFEST_TYPES[0]

# dockerd before version 23 writes an identity key to /etc/docker/key.json unless
# its config file names another path; later versions have no such key and refuse
# the setting.
LAST_DOCKERD_WITH_KEY_FILE = 22

PUSHED_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64}) size: \d+")
PULLED_DIGEST = re.compile(r"^Digest: (sha256:[0-9a-f]{64})$", re.MULTILINE)
LOADED_IMAGE = re.compile(r"^Loaded image: (\S+)$", re.MULTILINE)


class EngineError(Exception):
    """A podman or docker command, or dockerd itself, did not do what it should."""


@dataclass(frozen=True)
class LocalImage:
    """An image as an engine's own store describes it after a pull or a load."""

    image_id: str
    repo_digests: tuple[str, ...]
    diff_ids: tuple[str, ...]


def _sha256_name(value: str) -> str:
    """An image id in the spec's digest form; podman prints it without the prefix."""
    return value if value.startswith("sha256:") else f"sha256:{value}"


def local_image(inspected: str) -> LocalImage:
    """The id, repository digests and layer diff ids of one ``inspect`` answer."""
    answers = json.loads(inspected)
    if not isinstance(answers, list) or len(answers) != 1:
        raise EngineError(f"inspect gave {len(answers)} answers, not one")

    answer = answers[0]
    return LocalImage(
        image_id=_sha256_name(str(answer["Id"])),
        repo_digests=tuple(str(name) for name in answer.get("RepoDigests") or []),
        diff_ids=tuple(str(layer) for layer in answer["RootFS"]["Layers"]),
    )


def config_diff_ids(image: OciImage) -> tuple[str, ...]:
    """The uncompressed layer digests that an OCI layout's image config lists."""
    algorithm, _, encoded = image.config.digest.partition(":")
    config = json.loads((image.layout / "blobs" / algorithm / encoded).read_bytes())
    return tuple(str(diff_id) for diff_id in config["rootfs"]["diff_ids"])


def without_proxies() -> dict[str, str]:
    """This process's environment less its proxy settings: traffic stays on loopback."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.lower().endswith("_proxy")
    }


def engine_environment(home: Path, **extra: str) -> dict[str, str]:
    """The environment without proxies, with home and settings under `home`."""
    environment = without_proxies()
    environment.update(
        HOME=str(home),
        TMPDIR=str(home / "tmp"),
        XDG_DATA_HOME=str(home / "data"),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_RUNTIME_DIR=str(home / "run"),
        **extra,
    )
    return environment


def _run(
    command: list[str], environment: Mapping[str, str], timeout: float
) -> "subprocess.CompletedProcess[str]":
    """Run one engine command; what it did, whatever its exit code."""
    if shutil.which(command[0]) is None:
        raise EngineError(f"{command[0]} is not installed (scripts/install adds it)")
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=dict(environment),
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


def _checked(result: "subprocess.CompletedProcess[str]") -> str:
    """The standard output of a command that had to succeed."""
    if result.returncode != 0:
        command = " ".join(str(part) for part in result.args)
        raise EngineError(f"{command}: exit {result.returncode}: {result.stderr}")
    return result.stdout


def _one_match(pattern: re.Pattern[str], output: str, what: str) -> str:
    """The single group of `pattern` in a command's output, or an error naming it."""
    found = pattern.search(output)
    if found is None:
        raise EngineError(f"no {what} in:\n{output}")
    return found.group(1)


@dataclass(frozen=True)
class Podman:
    """podman with its own vfs store, run root, policy and settings under `home`."""

    home: Path

    @classmethod
    def in_directory(cls, home: Path) -> "Podman":
        """A podman whose every setting and image lives under `home`."""
        for name in ("tmp", "data", "config", "run", "libpod"):
            (home / name).mkdir(parents=True, exist_ok=True)
        (home / "policy.json").write_text(json.dumps(INSECURE_POLICY))
        for name in ("registries.conf", "containers.conf"):
            (home / name).write_text("")
        (home / "storage.conf").write_text(
            "[storage]\n"
            'driver = "vfs"\n'
            f"graphroot = {json.dumps(str(home / 'root'))}\n"
            f"runroot = {json.dumps(str(home / 'runroot'))}\n"
        )
        (home / "auth.json").write_text("{}")
        return cls(home)

    def environment(self) -> dict[str, str]:
        """The variables podman runs with: no proxies, no machine settings."""
        return engine_environment(
            self.home,
            CONTAINERS_CONF=str(self.home / "containers.conf"),
            CONTAINERS_STORAGE_CONF=str(self.home / "storage.conf"),
            CONTAINERS_REGISTRIES_CONF=str(self.home / "registries.conf"),
            REGISTRY_AUTH_FILE=str(self.home / "auth.json"),
        )

    def run(self, *arguments: str) -> "subprocess.CompletedProcess[str]":
        """Run one podman command against this store, whatever its exit code."""
        command = [
            "podman",
            "--root",
            str(self.home / "root"),
            "--runroot",
            str(self.home / "runroot"),
            "--tmpdir",
            str(self.home / "libpod"),
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            *arguments,
        ]
        return _run(command, self.environment(), COMMAND_TIMEOUT)

    def check(self, *arguments: str) -> str:
        """Run one podman command that must succeed; its standard output."""
        return _checked(self.run(*arguments))

    def _policy(self) -> str:
        """The option that points pull and push at this podman's own trust policy."""
        return f"--signature-policy={self.home / 'policy.json'}"

    def load_layout(self, image: OciImage) -> str:
        """Copy a tagged image of an OCI layout into the store; its image id."""
        output = self.check("pull", self._policy(), f"oci:{image.layout}:{image.tag}")
        return _sha256_name(output.strip().splitlines()[-1])

    def push(self, image_id: str, reference: str, digest_file: Path) -> str:
        """Push an image of the store to ``docker://reference``; the manifest digest."""
        self.check(
            "push",
            self._policy(),
            "--tls-verify=false",
            f"--digestfile={digest_file}",
            image_id.removeprefix("sha256:"),
            f"docker://{reference}",
        )
        return digest_file.read_text().strip()

    def remove(self, image_id: str) -> None:
        """Remove an image and every name it has from the store."""
        self.check("rmi", "--force", image_id.removeprefix("sha256:"))

    def has_image(self, reference: str) -> bool:
        """Whether the store holds an image by this name or id."""
        result = self.run("image", "exists", reference.removeprefix("sha256:"))
        return result.returncode == 0

    def pull(self, reference: str) -> str:
        """Pull ``reference`` from a registry over plain HTTP; the image id."""
        output = self.check("pull", self._policy(), "--tls-verify=false", reference)
        return _sha256_name(output.strip().splitlines()[-1])

    def inspect(self, reference: str) -> LocalImage:
        """What the store knows of an image by name or id."""
        return local_image(self.check("image", "inspect", reference))


@dataclass(frozen=True)
class Docker:
    """The docker command line, talking to one daemon, with settings of its own."""

    host: str
    home: Path

    def environment(self) -> dict[str, str]:
        """The variables docker runs with: no proxies, no machine settings."""
        return engine_environment(self.home, DOCKER_CONFIG=str(self.home / "config"))

    def run(self, *arguments: str) -> "subprocess.CompletedProcess[str]":
        """Run one docker command against the daemon, whatever its exit code."""
        command = ["docker", "--host", self.host, *arguments]
        return _run(command, self.environment(), COMMAND_TIMEOUT)

    def check(self, *arguments: str) -> str:
        """Run one docker command that must succeed; its standard output."""
        return _checked(self.run(*arguments))

    def load(self, archive: Path) -> str:
        """Load a docker-archive tar into the daemon; the name it was loaded as."""
        output = self.check("load", "--input", str(archive))
        return _one_match(LOADED_IMAGE, output, "loaded image name")

    def tag(self, source: str, target: str) -> None:
        """Give an image of the daemon one more name."""
        self.check("tag", source, target)

    def push(self, reference: str) -> str:
        """Push a named image to its registry; the manifest digest docker reports."""
        return _one_match(PUSHED_DIGEST, self.check("push", reference), "pushed digest")

    def remove(self, *references: str) -> None:
        """Remove images from the daemon by name."""
        self.check("rmi", *references)

    def has_image(self, reference: str) -> bool:
        """Whether the daemon holds an image by this name or id."""
        return self.run("image", "inspect", reference).returncode == 0

    def pull(self, reference: str) -> str:
        """Pull a named image from its registry; the manifest digest docker reports."""
        return _one_match(PULLED_DIGEST, self.check("pull", reference), "pull digest")

    def inspect(self, reference: str) -> LocalImage:
        """What the daemon knows of an image by name or id."""
        return local_image(self.check("image", "inspect", reference))


def write_docker_archive(
    skopeo: Skopeo, image: OciImage, archive: Path, name: str
) -> None:
    """Write a tagged image of an OCI layout as a docker-archive tar named `name`."""
    skopeo.check(
        "copy", f"oci:{image.layout}:{image.tag}", f"docker-archive:{archive}:{name}"
    )


def dockerd_major_version() -> int:
    """The major version of the installed dockerd, from its ``--version`` line."""
    output = _checked(_run(["dockerd", "--version"], os.environ, COMMAND_TIMEOUT))
    found = re.search(r"version (\d+)\.", output)
    if found is None:
        raise EngineError(f"no version in dockerd's answer: {output!r}")
    return int(found.group(1))


@dataclass(frozen=True)
class ProcessIdentity:
    """A process id with its start time, so a reused id is never mistaken for it."""

    pid: int
    start_time: str

    @classmethod
    def of(cls, pid: int) -> "ProcessIdentity | None":
        """The identity of a running process, or None if there is none by that id."""
        start_time = _start_time(pid)
        return None if start_time is None else cls(pid, start_time)

    def is_alive(self) -> bool:
        """Whether this very process still runs."""
        return _start_time(self.pid) == self.start_time


def _start_time(pid: int) -> str | None:
    """The start time of a live process, or None if none runs by that id.

    A zombie counts as gone: it has exited, and waits only for its parent.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces; fields count after it.
    fields = stat.rpartition(")")[2].split()
    return None if fields[0] == "Z" else fields[19]


def descendants(pid: int) -> list[ProcessIdentity]:
    """Every live process below `pid`, children first."""
    found: list[ProcessIdentity] = []
    pending = [pid]
    while pending:
        parent = pending.pop(0)
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                child_ids = [int(word) for word in children.read_text().split()]
            except OSError:
                continue
            for child in child_ids:
                identity = ProcessIdentity.of(child)
                if identity is not None and identity not in found:
                    found.append(identity)
                    pending.append(child)
    return found


def end_process(identity: ProcessIdentity, timeout: float) -> None:
    """Stop one process, by its id, if it still runs: SIGTERM, then SIGKILL."""
    for stop_signal in (signal.SIGTERM, signal.SIGKILL):
        if not identity.is_alive():
            return
        try:
            os.kill(identity.pid, stop_signal)
        except ProcessLookupError:
            return

        deadline = time.monotonic() + timeout
        while identity.is_alive() and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)


class DockerDaemon:
    """dockerd on a unix socket of its own, with no network and vfs storage.

    Its data root and log live in `directory`, kept for a look after a failure;
    its sockets live in a short folder under the system's temporary folder, because
    containerd's socket paths under a deep test folder can pass the length a unix
    socket allows.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.sockets = Path(tempfile.mkdtemp(prefix="ts-docker-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._children: list[ProcessIdentity] = []

    @property
    def socket_path(self) -> Path:
        """The unix socket the daemon's API listens on."""
        return self.sockets / "docker.sock"

    @property
    def host(self) -> str:
        """The daemon's address as docker's ``--host`` takes it."""
        return f"unix://{self.socket_path}"

    @property
    def log_path(self) -> Path:
        """Where the daemon's output goes."""
        return self.directory / "dockerd.log"

    def client(self) -> Docker:
        """A docker command line for this daemon, with its settings in the folder."""
        home = self.directory / "client"
        for name in ("tmp", "config"):
            (home / name).mkdir(parents=True, exist_ok=True)
        (home / "config" / "config.json").write_text("{}")
        return Docker(self.host, home)

    def write_config(self) -> Path:
        """A config file of its own, so the machine's /etc/docker is not read."""
        settings: dict[str, str] = {}
        if dockerd_major_version() <= LAST_DOCKERD_WITH_KEY_FILE:
            settings["deprecated-key-path"] = str(self.directory / "key.json")
        config = self.directory / "daemon.json"
        config.write_text(json.dumps(settings))
        return config

    def start(self, timeout: float = DAEMON_TIMEOUT) -> None:
        """Start dockerd and wait until its API answers, or fail with its log."""
        if shutil.which("dockerd") is None:
            raise EngineError(
                "dockerd is not installed (scripts/install adds docker.io)"
            )

        # Shortcoming: where the machine runs a containerd of its own on its default
        # socket, dockerd uses that one, not a containerd under its exec root; image
        # pushes and pulls never reach containerd, so these tests are unaffected.
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            "dockerd",
            f"--config-file={self.write_config()}",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--storage-driver=vfs",
            f"--data-root={self.directory / 'root'}",
            f"--exec-root={self.sockets / 'exec'}",
            f"--pidfile={self.sockets / 'dockerd.pid'}",
            f"--host={self.host}",
        ]
        with self.log_path.open("ab") as output:
            self._process = subprocess.Popen(
                command,
                env=without_proxies(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        """Poll the API's ``/_ping`` until it answers, or fail with the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise EngineError(f"dockerd exited\n{self.log_tail()}")
            if self.answers_ping():
                self._children = descendants(self._process.pid)
                return
            time.sleep(POLL_INTERVAL)
        raise EngineError(f"dockerd not up in {timeout} s\n{self.log_tail()}")

    def answers_ping(self) -> bool:
        """Whether the API on the socket answers ``GET /_ping`` with 200."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(2.0)
                client.connect(str(self.socket_path))
                client.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                status_line = client.recv(4096).split(b"\r\n", 1)[0]
        except OSError:
            return False
        return status_line.split()[1:2] == [b"200"]

    def stop(self) -> None:
        """Stop dockerd and whatever it started, then remove its socket folder."""
        if self._process is not None:
            # Children seen at start-up still count if dockerd died and left them.
            started = self._children + [
                identity
                for identity in descendants(self._process.pid)
                if identity not in self._children
            ]
            stop_process(self._process, DAEMON_STOP_TIMEOUT)
            self._process = None
            for identity in started:
                end_process(identity, DAEMON_STOP_TIMEOUT)
            self._unmount_data_root()
        shutil.rmtree(self.sockets, ignore_errors=True)

    def _unmount_data_root(self) -> None:
        """Undo the bind mount dockerd puts on its data root, if it died holding it.

        A daemon that shuts down cleanly removes it itself; one that was killed
        leaves it, and the test folder then cannot be deleted.
        """
        data_root = str(self.directory / "root")
        mounted = [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
        ]
        for _ in range(mounted.count(data_root)):
            subprocess.run(
                ["umount", data_root], capture_output=True, timeout=COMMAND_TIMEOUT
            )

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the daemon's log, labelled."""
        text = (
            self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        )
        return f"--- {self.log_path} ---\n{tail(text, lines)}"


@contextmanager
def running_docker_daemon(directory: Path) -> Iterator[DockerDaemon]:
    """dockerd started under `directory`, stopped on the way out whatever happens."""
    daemon = DockerDaemon(directory)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


@dataclass(frozen=True)
class ManifestAnswer:
    """What a registry answered to one manifest request."""

    status: int
    content_type: str | None
    digest: str | None
    length: int | None
    body: bytes


def _no_proxy_opener() -> urllib.request.OpenerDirector:
    """A URL opener that never goes through a proxy."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def request_manifest(
    address: str, repository: str, reference: str, method: str = "GET"
) -> ManifestAnswer:
    """Ask for a manifest by tag or digest the way docker does, with its Accept."""
    request = urllib.request.Request(
        f"http://{address}/v2/{repository}/manifests/{reference}",
        method=method,
        headers={"Accept": ", ".join(MANIFEST_TYPES)},
    )
    try:
        response = _no_proxy_opener().open(request, timeout=10)
    except urllib.error.HTTPError as error:
        response = error
    with response:
        length = response.headers.get("Content-Length")
        return ManifestAnswer(
            status=response.status,
            content_type=response.headers.get("Content-Type"),
            digest=response.headers.get("Docker-Content-Digest"),
            length=None if length is None else int(length),
            body=response.read(),
        )


def blob_digest(address: str, repository: str, digest: str) -> tuple[str, int]:
    """The sha256, in the spec's form, and the size of the bytes a blob GET returns."""
    url = f"http://{address}/v2/{repository}/blobs/{digest}"
    hasher = hashlib.sha256()
    size = 0
    with _no_proxy_opener().open(url, timeout=30) as response:
        while piece := response.read(MiB):
            hasher.update(piece)
            size += len(piece)
    return "sha256:" + hasher.hexdigest(), size
