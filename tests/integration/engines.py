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
answers for a manifest or a blob, never through a proxy. Given an account, a request
answers the registry's challenge the way the engines do: Basic credentials, or a
token fetched from the realm a Bearer challenge names.
"""

import base64
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
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from http import HTTPStatus
from pathlib import Path

from .cluster import POLL_INTERVAL, Account, stop_process, tail
from .images import INSECURE_POLICY, MiB, OciImage, Skopeo, sha256_digest

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


# How the clients tell that a registry refused the credentials, or wanted some:
# docker says "401 Unauthorized" or "no basic auth credentials", and renders a 401
# met with a token it holds as "requested access to the resource is denied";
# podman and skopeo say "invalid username/password", "unauthorized" or
# "authentication required".
LOGIN_REFUSED = re.compile(
    r"\b401\b|unauthorized|authentication required|no basic auth credentials"
    r"|invalid username/password|requested access to the resource is denied",
    re.IGNORECASE,
)

# How they tell that a signed-in user may not do what it asked: a 403 DENIED, or
# a 401 when the registry answers a token that lacks the access.
ACCESS_DENIED = re.compile(
    r"denied|forbidden|\b403\b|\b401\b|unauthorized", re.IGNORECASE
)


class EngineError(Exception):
    """A podman or docker command, or dockerd itself, did not do what it should.

    `stderr` is what a failed command itself said, apart from its command line.
    """

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


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
    command: list[str],
    environment: Mapping[str, str],
    timeout: float,
    stdin_text: str | None = None,
) -> "subprocess.CompletedProcess[str]":
    """Run one engine command; what it did, whatever its exit code.

    `stdin_text` is what the command reads on its standard input (a password, so
    it never shows in the process list); without it, the input is empty.
    """
    if shutil.which(command[0]) is None:
        raise EngineError(f"{command[0]} is not installed (scripts/install adds it)")
    if stdin_text is None:
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=dict(environment),
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=dict(environment),
        input=stdin_text,
        timeout=timeout,
    )


def _checked(result: "subprocess.CompletedProcess[str]") -> str:
    """The standard output of a command that had to succeed."""
    if result.returncode != 0:
        command = " ".join(str(part) for part in result.args)
        raise EngineError(
            f"{command}: exit {result.returncode}: {result.stderr}", result.stderr
        )
    return result.stdout


def _one_match(pattern: re.Pattern[str], output: str, what: str) -> str:
    """The single group of `pattern` in a command's output, or an error naming it."""
    found = pattern.search(output)
    if found is None:
        raise EngineError(f"no {what} in:\n{output}")
    return found.group(1)


@dataclass(frozen=True)
class Podman:
    """podman with its own vfs store, run root, policy and settings under `home`.

    Its credentials live in `auth_file`, ``home/auth.json`` unless named: podmans
    of one store with files of their own act for different users.
    """

    home: Path
    auth_file: Path | None = None

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
            REGISTRY_AUTH_FILE=str(self.auth_file or self.home / "auth.json"),
        )

    def with_credentials(self, name: str) -> "Podman":
        """This podman's store with a credentials file of its own, empty at first."""
        auth_file = self.home / f"auth-{name}.json"
        if not auth_file.exists():
            auth_file.write_text("{}")
        return replace(self, auth_file=auth_file)

    def login(self, address: str, account: Account) -> None:
        """Sign in to a registry over plain HTTP, the password given on stdin."""
        _checked(
            self.run(
                "login",
                "--tls-verify=false",
                "--username",
                account.user,
                "--password-stdin",
                address,
                stdin_text=account.password,
            )
        )

    def run(
        self, *arguments: str, stdin_text: str | None = None
    ) -> "subprocess.CompletedProcess[str]":
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
        return _run(command, self.environment(), COMMAND_TIMEOUT, stdin_text)

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

    def run(
        self, *arguments: str, stdin_text: str | None = None
    ) -> "subprocess.CompletedProcess[str]":
        """Run one docker command against the daemon, whatever its exit code."""
        command = ["docker", "--host", self.host, *arguments]
        return _run(command, self.environment(), COMMAND_TIMEOUT, stdin_text)

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

    def login(self, address: str, account: Account) -> None:
        """Sign in to a registry, the password given on stdin; kept in DOCKER_CONFIG."""
        _checked(
            self.run(
                "login",
                "--username",
                account.user,
                "--password-stdin",
                address,
                stdin_text=account.password,
            )
        )

    def saved_logins(self) -> dict[str, object]:
        """The registries, with their entries, that this client keeps a login for."""
        config = json.loads((self.home / "config" / "config.json").read_text())
        return dict(config.get("auths") or {})

    def run_image(self, reference: str) -> str:
        """Run an image's own command in a new container with no network; its output."""
        return self.check("run", "--rm", "--network", "none", reference)


@dataclass(frozen=True)
class DockerRoundTrip:
    """An image as docker loaded it, pushed it, forgot it and pulled it back."""

    loaded: LocalImage
    pushed_digest: str
    gone_before_pull: bool
    pulled_digest: str
    pulled: LocalImage


def docker_round_trip(
    docker: "Docker", archive: Path, reference: str
) -> DockerRoundTrip:
    """Load a docker-archive into dockerd, push it as `reference`, remove it
    locally, and pull it back."""
    loaded_name = docker.load(archive)
    loaded = docker.inspect(loaded_name)
    docker.tag(loaded_name, reference)
    pushed_digest = docker.push(reference)

    docker.remove(reference, loaded_name)
    gone = not docker.has_image(loaded.image_id)

    pulled_digest = docker.pull(reference)
    return DockerRoundTrip(
        loaded, pushed_digest, gone, pulled_digest, docker.inspect(reference)
    )


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

    def client(self, name: str = "client") -> Docker:
        """A docker command line for this daemon, with settings of its own.

        Clients of different names keep different logins: one daemon serves them all.
        """
        home = self.directory / name
        for folder in ("tmp", "config"):
            (home / folder).mkdir(parents=True, exist_ok=True)
        settings = home / "config" / "config.json"
        if not settings.exists():
            settings.write_text("{}")
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


@dataclass(frozen=True)
class HttpAnswer:
    """What a registry answered to one request: status, headers and whole body.

    `authorization` is the ``Authorization`` value the answered request carried,
    for the next request of the same client to send from the start.
    """

    status: int
    headers: Mapping[str, str]
    body: bytes
    authorization: str | None = None

    def header(self, name: str) -> str | None:
        """One header's value, whatever the case of its name; None if absent."""
        return self.headers.get(name.lower())

    def json(self) -> object:
        """The body, decoded as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: its scheme and its parameters."""

    scheme: str
    params: Mapping[str, str]


CHALLENGE_PARAM = re.compile(r'([A-Za-z_]+)="([^"]*)"')


def parse_challenge(header: str) -> Challenge:
    """The scheme and quoted parameters of a single ``WWW-Authenticate`` value."""
    scheme, _, rest = header.strip().partition(" ")
    return Challenge(scheme.lower(), dict(CHALLENGE_PARAM.findall(rest)))


def basic_authorization(account: Account) -> str:
    """The ``Authorization`` value that sends an account's password in Basic form."""
    pair = f"{account.user}:{account.password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _no_proxy_opener() -> urllib.request.OpenerDirector:
    """A URL opener that never goes through a proxy."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _exchange(request: urllib.request.Request, timeout: float) -> HttpAnswer:
    """Send one request; its answer, error statuses included."""
    try:
        response = _no_proxy_opener().open(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        response = error
    with response:
        headers = {name.lower(): value for name, value in response.headers.items()}
        return HttpAnswer(
            response.status,
            headers,
            response.read(),
            request.get_header("Authorization"),
        )


def fetch_token(address: str, challenge: Challenge, account: Account | None) -> str:
    """A token from the realm of a Bearer challenge: for `account`, or anonymous.

    The realm must be the registry's own address: a test sends nothing elsewhere.
    """
    realm = urllib.parse.urlsplit(challenge.params.get("realm", ""))
    if realm.scheme != "http" or realm.netloc != address:
        raise EngineError(f"token realm {realm.geturl()!r} is not http://{address}")

    query = {
        name: challenge.params[name]
        for name in ("service", "scope")
        if name in challenge.params
    }
    url = urllib.parse.urlunsplit(
        (realm.scheme, realm.netloc, realm.path, urllib.parse.urlencode(query), "")
    )
    headers = {} if account is None else {"Authorization": basic_authorization(account)}
    answer = _exchange(urllib.request.Request(url, headers=headers), timeout=10)
    if answer.status != HTTPStatus.OK:
        raise EngineError(f"GET {url} gave {answer.status}: {answer.body!r}")

    body = answer.json()
    token = None
    if isinstance(body, dict):
        token = body.get("token") or body.get("access_token")
    if not isinstance(token, str) or not token:
        raise EngineError(f"GET {url} gave no token: {answer.body!r}")
    return token


def _authorization(
    address: str, challenge: Challenge, account: Account | None
) -> str | None:
    """The ``Authorization`` value answering `challenge`; None if there is none."""
    if challenge.scheme == "bearer":
        return "Bearer " + fetch_token(address, challenge, account)
    if challenge.scheme == "basic" and account is not None:
        return basic_authorization(account)
    return None


def send(
    address: str,
    method: str,
    path: str,
    *,
    account: Account | None = None,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30,
    authenticate: bool = True,
    authorization: str | None = None,
) -> HttpAnswer:
    """One request to a registry; on a 401, answer its challenge once and retry.

    `path` may also be a whole URL the registry gave (an upload's Location), if it
    is on the same address. Without an account a Bearer challenge still gets an
    anonymous token, as the engines ask for one; a Basic challenge is the answer.
    With `authenticate` off, the first answer is the answer, challenge and all.
    An `authorization` from an earlier answer goes with the first try, as an engine
    sends what its last challenge taught it.
    """
    url = path if path.startswith("http://") else f"http://{address}{path}"
    if urllib.parse.urlsplit(url).netloc != address:
        raise EngineError(f"{url} is not on the registry under test, {address}")
    sent = dict(headers or {})
    if authorization is not None:
        sent["Authorization"] = authorization
    answer = _exchange(
        urllib.request.Request(url, data=body, headers=sent, method=method), timeout
    )
    challenge_header = answer.header("WWW-Authenticate")
    if not authenticate or challenge_header is None:
        return answer
    if answer.status != HTTPStatus.UNAUTHORIZED:
        return answer

    answered = _authorization(address, parse_challenge(challenge_header), account)
    if answered is None:
        return answer
    sent["Authorization"] = answered
    return _exchange(
        urllib.request.Request(url, data=body, headers=sent, method=method), timeout
    )


def request_manifest(
    address: str,
    repository: str,
    reference: str,
    method: str = "GET",
    *,
    account: Account | None = None,
) -> ManifestAnswer:
    """Ask for a manifest by tag or digest the way docker does, with its Accept."""
    answer = send(
        address,
        method,
        f"/v2/{repository}/manifests/{reference}",
        account=account,
        headers={"Accept": ", ".join(MANIFEST_TYPES)},
        timeout=10,
    )
    length = answer.header("Content-Length")
    return ManifestAnswer(
        status=answer.status,
        content_type=answer.header("Content-Type"),
        digest=answer.header("Docker-Content-Digest"),
        length=None if length is None else int(length),
        body=answer.body,
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


def location_url(address: str, location: str) -> str:
    """The whole URL of an upload's ``Location``, which may be relative."""
    return urllib.parse.urljoin(f"http://{address}/v2/", location)


def with_digest(url: str, digest: str) -> str:
    """An upload URL with the ``digest`` parameter that completes it."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}digest={urllib.parse.quote(digest)}"


def upload_blob(
    address: str, repository: str, data: bytes, account: Account | None = None
) -> str:
    """Store `data` as a blob with a POST and one PUT; its digest.

    The PUT carries from the start what answered the POST's challenge, as engines
    do, so its body is sent once.
    """
    digest = sha256_digest(data)
    uploads = f"/v2/{repository}/blobs/uploads/"
    started = send(address, "POST", uploads, account=account, body=b"")
    location = started.header("Location")
    if started.status != HTTPStatus.ACCEPTED or location is None:
        raise EngineError(f"POST {uploads} gave {started.status}: {started.body!r}")

    finished = send(
        address,
        "PUT",
        with_digest(location_url(address, location), digest),
        account=account,
        headers={"Content-Type": "application/octet-stream"},
        body=data,
        authorization=started.authorization,
    )
    if finished.status != HTTPStatus.CREATED:
        raise EngineError(f"PUT of {digest} gave {finished.status}: {finished.body!r}")
    return digest


def put_manifest(
    address: str,
    repository: str,
    reference: str,
    manifest: bytes,
    media_type: str,
    account: Account | None = None,
) -> HttpAnswer:
    """PUT a manifest by tag or digest; the registry's answer, whatever it is."""
    return send(
        address,
        "PUT",
        f"/v2/{repository}/manifests/{reference}",
        account=account,
        headers={"Content-Type": media_type},
        body=manifest,
    )


def found_in_repository(
    address: str,
    repository: str,
    tag: str,
    digests: Sequence[str],
    account: Account,
) -> list[str]:
    """What `account` finds of a tag and some blobs in `repository`, one line each.

    A push that was refused must leave nothing: the list is then empty, since
    only a 404 counts as absent.
    """
    found = []
    manifest = request_manifest(address, repository, tag, account=account)
    if manifest.status != HTTPStatus.NOT_FOUND:
        found.append(f"manifest {tag}: {manifest.status}")
    for digest in digests:
        path = f"/v2/{repository}/blobs/{digest}"
        answer = send(address, "HEAD", path, account=account)
        if answer.status != HTTPStatus.NOT_FOUND:
            found.append(f"blob {digest}: {answer.status}")
    return found
