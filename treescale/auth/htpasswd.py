"""A bcrypt htpasswd file: who may sign in, re-read when the file changes.

The format is what ``htpasswd -B`` writes and CNCF distribution reads: one
``user:hash`` a line, blank lines and ``#`` comments skipped. Only bcrypt hashes
(``$2y$``, and the ``$2a$``/``$2b$`` spellings other tools write) are accepted;
a line with another kind of hash is refused with the file, the line and the kind,
never the hash itself.

Design notes:

- bcrypt costs milliseconds (about 2 ms at htpasswd's default cost 5, 60 ms at
  cost 10) and runs on the reactor's thread. Basic mode checks the credentials of
  every request, so a verified login is remembered, keyed by the user and a keyed
  hash of the password under a secret of this process, and valid only while the
  user's hash in the file is the one it was checked against.
- An unknown user costs one bcrypt check too, against a throwaway hash of the
  file's usual cost, so the time of an answer does not tell which users exist.
- bcrypt reads at most 72 bytes of a password; htpasswd hashed only those, so a
  longer password is cut there before it is checked, as htpasswd did.
- A file that changes into something unusable (half written by an editor, a line
  with another hash) is logged and the users read before are kept; a file that
  was never readable is an error for the caller.
"""

import hashlib
import hmac
import os
import re
import secrets
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path

import bcrypt
from twisted.logger import Logger

BCRYPT_MAX_PASSWORD = 72
"""bcrypt uses the first 72 bytes of a password and ignores the rest."""

DEFAULT_BCRYPT_COST = 5
"""htpasswd -B's cost, used for the throwaway hash of an empty file."""

DEFAULT_LOGIN_CACHE = 1024
"""How many verified logins are remembered, so Basic mode does not run bcrypt on
every request of a push."""

_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")

_OTHER_KINDS = (
    ("$apr1$", "Apache MD5 ($apr1$)"),
    ("{SHA}", "SHA-1 ({SHA})"),
    ("$1$", "MD5-crypt ($1$)"),
    ("$5$", "SHA-256-crypt ($5$)"),
    ("$6$", "SHA-512-crypt ($6$)"),
    ("$2", "a bcrypt variant or form that is not accepted"),
)


class HtpasswdError(ValueError):
    """An htpasswd file, or one line of it, that cannot be used."""

    def __init__(self, path: Path, line: int | None, why: str) -> None:
        where = f"{path}: line {line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {why}")
        self.path = path
        self.line = line


def hash_kind(hashed: str) -> str | None:
    """None for a bcrypt hash this module accepts, else what kind of hash it is."""
    if _BCRYPT.fullmatch(hashed):
        return None
    for prefix, kind in _OTHER_KINDS:
        if hashed.startswith(prefix):
            return kind
    return "crypt(3) or plain text"


def parse_htpasswd(data: bytes, path: Path) -> dict[str, bytes]:
    """Every user of the file's contents `data`, with their bcrypt hash."""
    users: dict[str, bytes] = {}
    first_line: dict[str, int] = {}
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise HtpasswdError(path, number, "the line is not UTF-8") from e
        if not line or line.startswith("#"):
            continue

        user, colon, hashed = line.partition(":")
        if not colon or not user:
            raise HtpasswdError(path, number, "not of the form user:hash")
        if user in users:
            raise HtpasswdError(
                path,
                number,
                f"user {user!r} appears again (first on line {first_line[user]})",
            )
        kind = hash_kind(hashed)
        if kind is not None:
            raise HtpasswdError(
                path,
                number,
                f"the password of {user!r} is hashed with {kind}; only bcrypt "
                "($2y$, $2a$, $2b$) is accepted: write it with 'htpasswd -B'",
            )
        users[user] = hashed.encode("ascii")
        first_line[user] = number
    return users


def read_htpasswd(path: Path) -> dict[str, bytes]:
    """The users of the file at `path`; `OSError` when it cannot be read."""
    return parse_htpasswd(path.read_bytes(), path)


@dataclass(frozen=True)
class _Signature:
    """What tells that a file changed without reading it."""

    inode: int
    size: int
    mtime_ns: int


class Htpasswd:
    """The users of one htpasswd file, as it is now.

    Raises `HtpasswdError` or `OSError` when the file cannot be read the first
    time; later changes are picked up at the next check.
    """

    log = Logger()

    def __init__(self, path: Path, login_cache: int = DEFAULT_LOGIN_CACHE) -> None:
        self.path = path
        self._cache_size = login_cache
        self._cache: OrderedDict[tuple[str, bytes], bytes] = OrderedDict()
        self._secret = secrets.token_bytes(32)
        self._users: dict[str, bytes] = {}
        self._throwaway = b""
        self._signature: _Signature | None = self._stat()
        self._install(read_htpasswd(path))

    def check(self, user: str, password: str) -> bool:
        """Whether `password` is the password of `user`."""
        # Shortcoming: every failed check runs bcrypt on the reactor's thread and
        # nothing limits failures per peer, so a flood of wrong passwords slows
        # every other request of the process.
        self.refresh()
        secret = password.encode("utf-8")[:BCRYPT_MAX_PASSWORD]
        hashed = self._users.get(user)
        if hashed is None:
            bcrypt.checkpw(secret, self._throwaway)
            return False

        key = (user, hmac.digest(self._secret, secret, "sha256"))
        if self._cache.get(key) == hashed:
            self._cache.move_to_end(key)
            return True

        if not bcrypt.checkpw(secret, hashed):
            return False
        self._remember(key, hashed)
        return True

    def fingerprint(self, user: str) -> str | None:
        """A short value that changes when the user's password does; None if gone.

        A refresh token carries it, so changing a password or removing the user
        ends the sessions started with the old one.
        """
        self.refresh()
        hashed = self._users.get(user)
        if hashed is None:
            return None
        # The value travels inside tokens that outlive this process, so it hangs
        # on the hash alone; it cannot be turned back into the hash, whose salt
        # stays in the file.
        return hashlib.sha256(b"treescale refresh binding\0" + hashed).hexdigest()[:24]

    def __contains__(self, user: object) -> bool:
        self.refresh()
        return user in self._users

    def refresh(self) -> None:
        """Read the file again if it changed since it was last read."""
        try:
            signature = self._stat()
        except OSError as e:
            self._keep_previous(None, f"cannot read it: {e.strerror}")
            return
        if signature == self._signature:
            return

        self._signature = signature
        try:
            users = read_htpasswd(self.path)
        except OSError as e:
            self._keep_previous(signature, f"cannot read it: {e.strerror}")
            return
        except HtpasswdError as e:
            self._keep_previous(signature, str(e))
            return
        self._install(users)
        self.log.info(
            "re-read htpasswd file {path}: {count} users",
            path=str(self.path),
            count=len(users),
        )

    def _install(self, users: dict[str, bytes]) -> None:
        self._users = users
        self._cache.clear()
        self._throwaway = bcrypt.hashpw(
            secrets.token_hex(16).encode("ascii"), bcrypt.gensalt(_usual_cost(users))
        )

    def _keep_previous(self, signature: _Signature | None, why: str) -> None:
        """Log once per change that the file is unusable, and keep its users."""
        if signature is None and self._signature is None:
            return
        self._signature = signature
        self.log.error(
            "htpasswd file {path} is unusable, keeping the {count} users read "
            "before: {why}",
            path=str(self.path),
            count=len(self._users),
            why=why,
        )

    def _remember(self, key: tuple[str, bytes], hashed: bytes) -> None:
        self._cache[key] = hashed
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _stat(self) -> _Signature:
        status = os.stat(self.path)
        return _Signature(status.st_ino, status.st_size, status.st_mtime_ns)


def _usual_cost(users: dict[str, bytes]) -> int:
    """The bcrypt cost most users of the file have."""
    costs = Counter(int(hashed[4:6]) for hashed in users.values())
    if not costs:
        return DEFAULT_BCRYPT_COST
    return costs.most_common(1)[0][0]
