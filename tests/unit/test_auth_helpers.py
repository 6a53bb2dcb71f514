"""Shared makings of the auth tests: htpasswd files, keys, clocks and settings.

It holds no tests; the other ``test_auth_*`` modules import from it.
"""

import base64
import functools
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import bcrypt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from zope.interface import provider

from treescale.auth.settings import AuthSettings, parse_auth

HTPASSWD_TOOL = shutil.which("htpasswd")
"""The real htpasswd of apache2-utils, when installed."""

FAST_COST = 4
"""The cheapest bcrypt cost, so the tests stay fast."""


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def tool_line(user: str, password: str, cost: int | None = FAST_COST) -> str:
    """One line as ``htpasswd -Bbn`` writes it (the tool must be installed)."""
    assert HTPASSWD_TOOL is not None
    command = [HTPASSWD_TOOL, "-Bbn"]
    if cost is not None:
        command += ["-C", str(cost)]
    result = subprocess.run(
        [*command, user, password], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def bcrypt_line(
    user: str, password: str, prefix: str = "$2y$", cost: int = FAST_COST
) -> str:
    """One line with a bcrypt hash spelled with `prefix`, made by the bcrypt module."""
    hashed = bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(cost)).decode()
    return f"{user}:{prefix}{hashed[4:]}"


@functools.cache
def htpasswd_line(user: str, password: str) -> str:
    """A line by the real tool when it is installed, else an equivalent ``$2y$``.

    Lines are remembered, as the tool is slow to start; each still has its salt.
    """
    if HTPASSWD_TOOL is not None:
        return tool_line(user, password)
    return bcrypt_line(user, password)


def write_htpasswd(path: Path, users: Mapping[str, str]) -> Path:
    """An htpasswd file of `users` (name to password)."""
    lines = [htpasswd_line(user, password) for user, password in users.items()]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def basic(user: str, password: str) -> str:
    """An Authorization header value with HTTP Basic credentials."""
    pair = f"{user}:{password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def write_private(
    path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def write_public(
    path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )
    return path


def settings(folder: Path, **table: Any) -> AuthSettings:
    """Settings from an ``[auth]`` table of a topology file in `folder`."""
    return parse_auth(table, folder / "topology.toml")


class LogCapture:
    """Every event logged while it is installed, and its text."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            self.events.append(event)

        self._observer = observe

    def __enter__(self) -> "LogCapture":
        globalLogPublisher.addObserver(self._observer)
        return self

    def __exit__(self, *exc_info: object) -> None:
        globalLogPublisher.removeObserver(self._observer)

    def texts(self) -> list[str]:
        return [formatEvent(event) for event in self.events]

    def everything(self) -> str:
        """The formatted text and every field of every event, for secret hunts."""
        return "\n".join(
            [*self.texts(), *(repr(sorted(e.items(), key=str)) for e in self.events)]
        )
