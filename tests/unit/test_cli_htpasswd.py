"""Tests of ``treescale htpasswd``: real files, checked by the registry's own
htpasswd reader (and by Apache's ``htpasswd -v`` where it is installed)."""

import io
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from treescale.auth.htpasswd import Htpasswd, parse_htpasswd
from treescale.cli import edited_htpasswd, main, read_password

TREESCALE = Path(sys.executable).parent / "treescale"


class Terminal(io.StringIO):
    """Standard input that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def run(monkeypatch: pytest.MonkeyPatch, stdin: str | io.StringIO, *argv: str) -> int:
    """Run the command with `stdin` as its standard input."""
    source = stdin if isinstance(stdin, io.StringIO) else io.StringIO(stdin)
    monkeypatch.setattr(sys, "stdin", source)
    return main(["htpasswd", *argv])


def test_a_new_file_gets_a_bcrypt_line_and_mode_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first user makes the file, private, with a $2y$ line the registry
    accepts and checks the password against."""
    path = tmp_path / "htpasswd"

    assert run(monkeypatch, "alice-secret\n", str(path), "alice") == 0

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    line = path.read_text(encoding="utf-8")
    assert line.startswith("alice:$2y$05$")
    assert line.endswith("\n")
    users = Htpasswd(path)
    assert users.check("alice", "alice-secret")
    assert not users.check("alice", "alice-secret\n")


def test_replacing_a_password_keeps_other_lines_and_the_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replacing alice changes her line only: comments, bob and the file's mode
    stay; the old password no longer works."""
    path = tmp_path / "htpasswd"
    run(monkeypatch, "old\n", str(path), "alice")
    run(monkeypatch, "bob-secret\n", str(path), "bob")
    bob_line = path.read_text(encoding="utf-8").splitlines()[1]
    path.write_text(
        "# team logins\n" + path.read_text(encoding="utf-8"), encoding="utf-8"
    )
    path.chmod(0o640)

    assert run(monkeypatch, "new\n", str(path), "alice") == 0

    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# team logins"
    assert lines[1].startswith("alice:$2y$")
    assert lines[2] == bob_line
    assert len(lines) == 3
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    users = Htpasswd(path)
    assert users.check("alice", "new")
    assert not users.check("alice", "old")
    assert users.check("bob", "bob-secret")


def test_the_file_is_replaced_never_rewritten_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader holding the old file open still reads all of it after an edit:
    the new file was renamed over it, not written into it."""
    path = tmp_path / "htpasswd"
    run(monkeypatch, "one\n", str(path), "alice")
    before = path.read_bytes()

    with path.open("rb") as reader:
        assert run(monkeypatch, "two\n", str(path), "bob") == 0
        assert reader.read() == before

    assert len(path.read_text(encoding="utf-8").splitlines()) == 2
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]


def test_delete_removes_the_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--delete drops the user's line and reads no password."""
    path = tmp_path / "htpasswd"
    run(monkeypatch, "a\n", str(path), "alice")
    run(monkeypatch, "b\n", str(path), "bob")

    assert run(monkeypatch, "", str(path), "alice", "--delete") == 0

    assert list(parse_htpasswd(path.read_bytes(), path)) == ["bob"]
    assert "removed user 'alice'" in capsys.readouterr().out


def test_deleting_an_unknown_user_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Deleting a user the file does not have is refused and leaves it as it was."""
    path = tmp_path / "htpasswd"
    run(monkeypatch, "a\n", str(path), "alice")
    before = path.read_bytes()

    assert run(monkeypatch, "", str(path), "carol", "--delete") == 1

    assert path.read_bytes() == before
    assert "no user 'carol'" in capsys.readouterr().err


def test_a_password_is_never_taken_from_the_command_line(tmp_path: Path) -> None:
    """There is no argument for the password: giving one is a usage error."""
    with pytest.raises(SystemExit) as caught:
        main(["htpasswd", str(tmp_path / "f"), "alice", "secret"])

    assert caught.value.code == 2
    assert not (tmp_path / "f").exists()


def test_a_terminal_is_asked_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal the password is prompted for twice; two different answers
    change nothing."""
    answers = iter(["first", "second", "same", "same"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    path = tmp_path / "htpasswd"

    assert run(monkeypatch, Terminal(), str(path), "alice") == 1
    assert not path.exists()
    assert run(monkeypatch, Terminal(), str(path), "alice") == 0
    assert Htpasswd(path).check("alice", "same")


@pytest.mark.parametrize(
    ("password", "why"),
    [("\n", "empty"), ("x" * 73 + "\n", "only the first 72")],
    ids=["empty", "longer than bcrypt reads"],
)
def test_unusable_passwords_are_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    password: str,
    why: str,
) -> None:
    """An empty password, or one bcrypt would cut short, is refused unwritten."""
    path = tmp_path / "htpasswd"

    assert run(monkeypatch, password, str(path), "alice") == 1

    assert not path.exists()
    assert why in capsys.readouterr().err


@pytest.mark.parametrize("user", ["a:b", " alice", "#alice", "al\tice", ""])
def test_user_names_a_line_cannot_hold_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user: str
) -> None:
    """Names with ':', spaces at the ends, a leading '#' or control characters
    would break the file or the login: refused before a password is read."""
    assert run(monkeypatch, "pw\n", str(tmp_path / "htpasswd"), user) == 1

    assert not (tmp_path / "htpasswd").exists()


def test_a_result_the_registry_would_refuse_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file with another user's non-bcrypt line stays as it is: writing it would
    leave a file no registry node loads."""
    path = tmp_path / "htpasswd"
    path.write_text("bob:$apr1$abc$defghijklmnopqrstuvwx\n", encoding="utf-8")
    before = path.read_bytes()

    assert run(monkeypatch, "pw\n", str(path), "alice") == 1

    assert path.read_bytes() == before
    assert "Apache MD5" in capsys.readouterr().err


def test_the_cost_is_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--cost sets the bcrypt cost written into the hash."""
    path = tmp_path / "htpasswd"

    assert run(monkeypatch, "pw\n", str(path), "alice", "--cost", "4") == 0

    assert path.read_text(encoding="utf-8").startswith("alice:$2y$04$")


def test_edit_of_text_replaces_only_that_user() -> None:
    """The pure edit keeps every other line as written and reports the user."""
    text = "# c\nalice:x\n\nbob:y\n"

    assert edited_htpasswd(text, "alice", "alice:z") == (
        "# c\nalice:z\n\nbob:y\n",
        True,
    )
    assert edited_htpasswd(text, "bob", None) == ("# c\nalice:x\n\n", True)
    assert edited_htpasswd(text, "carol", "carol:w") == (text + "carol:w\n", False)


def test_a_piped_password_is_its_first_line() -> None:
    """From a pipe the first line is the password, without its line ending."""
    assert read_password(io.StringIO("s3cret\r\nignored\n"), input) == b"s3cret"


def test_the_installed_command_reads_stdin(tmp_path: Path) -> None:
    """The console script installed with the package adds a user from a pipe."""
    path = tmp_path / "htpasswd"

    done = subprocess.run(
        [str(TREESCALE), "htpasswd", str(path), "alice"],
        input="piped-secret\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert Htpasswd(path).check("alice", "piped-secret")


@pytest.mark.skipif(shutil.which("htpasswd") is None, reason="apache2-utils absent")
def test_apache_htpasswd_verifies_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Apache's own tool accepts the line as the user's bcrypt password."""
    path = tmp_path / "htpasswd"
    run(monkeypatch, "apache-secret\n", str(path), "alice")

    good = subprocess.run(
        ["htpasswd", "-vb", str(path), "alice", "apache-secret"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    bad = subprocess.run(
        ["htpasswd", "-vb", str(path), "alice", "wrong"],
        capture_output=True,
        timeout=60,
        check=False,
    )

    assert good.returncode == 0
    assert bad.returncode != 0
