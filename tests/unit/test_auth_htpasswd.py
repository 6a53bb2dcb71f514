"""Tests of the htpasswd file: bcrypt only, clear refusals, re-reading, timing."""

import base64
import hashlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest

from tests.unit.test_auth_helpers import (
    HTPASSWD_TOOL,
    LogCapture,
    bcrypt_line,
    tool_line,
    write_htpasswd,
)
from treescale.auth import htpasswd as htpasswd_module
from treescale.auth.htpasswd import (
    Htpasswd,
    HtpasswdError,
    hash_kind,
    parse_htpasswd,
    read_htpasswd,
)

needs_tool = pytest.mark.skipif(
    HTPASSWD_TOOL is None, reason="htpasswd (apache2-utils) is not installed"
)


def counting_checkpw(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Record the hash of every bcrypt check from now on."""
    seen: list[bytes] = []
    real: Callable[[bytes, bytes], bool] = bcrypt.checkpw

    def checkpw(password: bytes, hashed: bytes) -> bool:
        seen.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(htpasswd_module.bcrypt, "checkpw", checkpw)
    return seen


def rewrite(path: Path, text: str) -> None:
    """Replace a file's text and move its mtime on, as a later edit would."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


@needs_tool
def test_file_written_by_the_tool(tmp_path: Path) -> None:
    """A file from `htpasswd -Bbn` with its default cost checks its passwords."""
    path = tmp_path / "htpasswd"
    path.write_text(
        tool_line("alice", "s3cret", cost=None) + "\n" + tool_line("bob", "pw:x") + "\n"
    )
    assert path.read_text().startswith("alice:$2y$05$")
    users = Htpasswd(path)
    assert users.check("alice", "s3cret")
    assert users.check("bob", "pw:x")
    assert not users.check("alice", "S3cret")
    assert not users.check("bob", "s3cret")


@needs_tool
def test_long_password_as_the_tool_hashed_it(tmp_path: Path) -> None:
    """A password past bcrypt's 72 bytes checks the way the tool hashed it."""
    password = "p" * 100
    path = tmp_path / "htpasswd"
    path.write_text(tool_line("alice", password) + "\n")
    users = Htpasswd(path)
    assert users.check("alice", password)
    assert not users.check("alice", "p" * 71)


@pytest.mark.parametrize("prefix", ["$2y$", "$2a$", "$2b$"])
def test_bcrypt_spellings(tmp_path: Path, prefix: str) -> None:
    """The three bcrypt spellings other tools write are all accepted."""
    path = tmp_path / "htpasswd"
    path.write_text(bcrypt_line("carol", "pässwörd", prefix) + "\n")
    users = Htpasswd(path)
    assert users.check("carol", "pässwörd")
    assert not users.check("carol", "passwort")


def test_comments_blank_lines_and_crlf(tmp_path: Path) -> None:
    """Comments and blank lines are skipped; Windows line ends are fine."""
    path = tmp_path / "htpasswd"
    text = "# users\r\n\r\n" + bcrypt_line("dave", "pw") + "\r\n   \n"
    path.write_bytes(text.encode())
    assert list(read_htpasswd(path)) == ["dave"]
    assert Htpasswd(path).check("dave", "pw")


def _other_kinds() -> list[tuple[str, str]]:
    """Lines with hashes of other kinds: from the tool when present, else by hand."""
    sha = base64.b64encode(hashlib.sha1(b"pw").digest()).decode()
    lines = [
        ("u:$apr1$abcdefgh$0123456789abcdefghijkl", "Apache MD5"),
        (f"u:{{SHA}}{sha}", "SHA-1"),
        ("u:$1$abcdefgh$0123456789abcdefghijkl", "MD5-crypt"),
        ("u:$5$abcdefgh$" + "a" * 43, "SHA-256-crypt"),
        ("u:$6$abcdefgh$" + "a" * 86, "SHA-512-crypt"),
        ("u:abJnggxhB/yWI", "crypt(3) or plain text"),
        ("u:plaintext", "crypt(3) or plain text"),
        ("u:$2x$05$" + "a" * 53, "bcrypt variant"),
        ("u:$2y$05$tooshort", "bcrypt variant"),
    ]
    if HTPASSWD_TOOL is not None:
        for flag, kind in [
            ("-m", "Apache MD5"),
            ("-s", "SHA-1"),
            ("-2", "SHA-256-crypt"),
            ("-5", "SHA-512-crypt"),
            ("-p", "plain text"),
        ]:
            written = subprocess.run(
                [HTPASSWD_TOOL, "-nb", flag, "u", "pw"],
                capture_output=True,
                text=True,
                check=True,
            )
            lines.append((written.stdout.strip(), kind))
    return lines


@pytest.mark.parametrize(("line", "kind"), _other_kinds())
def test_other_hash_kinds_refused(tmp_path: Path, line: str, kind: str) -> None:
    """Another kind of hash is refused with the file, line and kind, not the hash."""
    path = tmp_path / "users.htpasswd"
    path.write_text("# first\n" + bcrypt_line("ok", "pw") + "\n" + line + "\n")
    with pytest.raises(HtpasswdError) as caught:
        read_htpasswd(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: line 3: ")
    assert kind in message
    assert "htpasswd -B" in message
    assert line.split(":", 1)[1] not in message
    assert caught.value.line == 3


def test_hash_kind_of_bcrypt() -> None:
    """A well-formed bcrypt hash has no kind to complain about."""
    assert hash_kind(bcrypt_line("u", "pw").split(":", 1)[1]) is None


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"no-colon-here\n", "user:hash"),
        (b":$2y$05$" + b"a" * 53 + b"\n", "user:hash"),
        (b"caf\xe9:x\n", "not UTF-8"),
    ],
)
def test_malformed_lines(tmp_path: Path, data: bytes, why: str) -> None:
    """Lines that are not user:hash in UTF-8 are refused with their number."""
    with pytest.raises(HtpasswdError) as caught:
        parse_htpasswd(b"\n" + data, tmp_path / "f")
    assert "line 2" in str(caught.value)
    assert why in str(caught.value)


def test_duplicate_user(tmp_path: Path) -> None:
    """A user listed twice is refused, naming both lines."""
    data = (bcrypt_line("eve", "a") + "\n" + bcrypt_line("eve", "b") + "\n").encode()
    with pytest.raises(HtpasswdError, match="line 2: user 'eve' appears again"):
        parse_htpasswd(data, tmp_path / "f")


def test_unreadable_file_at_start(tmp_path: Path) -> None:
    """A missing file is an error for whoever opens it first."""
    with pytest.raises(OSError):
        Htpasswd(tmp_path / "missing")


def test_unknown_user_spends_a_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown user costs one bcrypt check at the file's usual cost."""
    path = tmp_path / "htpasswd"
    path.write_text(bcrypt_line("alice", "pw", cost=6) + "\n")
    users = Htpasswd(path)
    seen = counting_checkpw(monkeypatch)
    assert not users.check("mallory", "pw")
    assert len(seen) == 1
    assert seen[0].startswith(b"$2b$06$")


def test_verified_login_is_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A login checked once is not checked by bcrypt again; failures always are."""
    path = write_htpasswd(tmp_path / "htpasswd", {"alice": "pw"})
    users = Htpasswd(path)
    seen = counting_checkpw(monkeypatch)
    assert users.check("alice", "pw")
    assert users.check("alice", "pw")
    assert len(seen) == 1
    assert not users.check("alice", "wrong")
    assert not users.check("alice", "wrong")
    assert len(seen) == 3


def test_login_cache_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its size the cache forgets the oldest login, which is checked again."""
    path = write_htpasswd(tmp_path / "htpasswd", {"a": "1", "b": "2"})
    users = Htpasswd(path, login_cache=1)
    seen = counting_checkpw(monkeypatch)
    assert users.check("a", "1")
    assert users.check("b", "2")
    assert users.check("a", "1")
    assert len(seen) == 3


def test_changed_password_is_picked_up(tmp_path: Path) -> None:
    """A rewritten file is read again: the old password stops working at once."""
    path = write_htpasswd(tmp_path / "htpasswd", {"alice": "old"})
    users = Htpasswd(path)
    assert users.check("alice", "old")
    before = users.fingerprint("alice")

    rewrite(path, bcrypt_line("alice", "new") + "\n")
    assert not users.check("alice", "old")
    assert users.check("alice", "new")
    assert users.fingerprint("alice") != before


def test_added_and_removed_users(tmp_path: Path) -> None:
    """Users added to the file can sign in; removed ones no longer can."""
    path = write_htpasswd(tmp_path / "htpasswd", {"alice": "a"})
    users = Htpasswd(path)
    rewrite(path, bcrypt_line("bob", "b") + "\n")
    assert users.check("bob", "b")
    assert not users.check("alice", "a")
    assert "alice" not in users
    assert users.fingerprint("alice") is None


def test_replaced_file_is_picked_up(tmp_path: Path) -> None:
    """A file replaced by a rename, same size and time, is seen by its inode."""
    path = write_htpasswd(tmp_path / "htpasswd", {"alice": "aaaa"})
    users = Htpasswd(path)
    stat = path.stat()
    other = tmp_path / "next"
    other.write_text(bcrypt_line("alice", "bbbb") + "\n")
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(other, path)
    assert users.check("alice", "bbbb")


def test_broken_edit_keeps_users(tmp_path: Path) -> None:
    """A change that breaks the file is logged once and the old users stay."""
    path = write_htpasswd(tmp_path / "htpasswd", {"alice": "pw"})
    users = Htpasswd(path)
    with LogCapture() as log:
        rewrite(path, "alice:$apr1$abcdefgh$0123456789abcdefghijkl\n")
        assert users.check("alice", "pw")
        assert users.check("alice", "pw")
    errors = [text for text in log.texts() if "unusable" in text]
    assert len(errors) == 1
    assert "line 1" in errors[0]
    assert "$apr1$abcdefgh" not in log.everything()

    rewrite(path, bcrypt_line("alice", "fixed") + "\n")
    assert users.check("alice", "fixed")


def test_removed_file_keeps_users(tmp_path: Path) -> None:
    """A file that goes away is logged once; its users stay until it is back."""
    path = write_htpasswd(tmp_path / "htpasswd", {"alice": "pw"})
    users = Htpasswd(path)
    with LogCapture() as log:
        path.unlink()
        assert users.check("alice", "pw")
        assert users.check("alice", "pw")
    assert len([text for text in log.texts() if "unusable" in text]) == 1

    path.write_text(bcrypt_line("bob", "pw") + "\n")
    assert users.check("bob", "pw")


def test_passwords_never_logged(tmp_path: Path) -> None:
    """Checks and re-reads log nothing that holds a password."""
    path = write_htpasswd(tmp_path / "htpasswd", {"alice": "Secret-1"})
    with LogCapture() as log:
        users = Htpasswd(path)
        users.check("alice", "Secret-1")
        users.check("alice", "Wrong-2")
        rewrite(path, bcrypt_line("alice", "Secret-3") + "\n")
        users.check("alice", "Secret-3")
    text = log.everything()
    for secret in ("Secret-1", "Wrong-2", "Secret-3"):
        assert secret not in text
