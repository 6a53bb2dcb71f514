"""Tests of where a node's log goes, in which format, from which level on."""

# Twisted's test helpers carry no annotations yet.
# mypy: disable-error-code="no-untyped-call"

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.application.service import Application, IServiceCollection, Service
from twisted.logger import ILogObserver, Logger
from twisted.python.logfile import LogFile

from treescale.ops.logsetup import LogChoice, log_output, node_observer, with_log
from treescale.ops.settings import LogSettings


@pytest.fixture(autouse=True)
def sigusr1_kept() -> Iterator[None]:
    """Leave the test process's SIGUSR1 as it found it."""
    before = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, before)


def lines_logged(settings: LogSettings, path: Path) -> list[str]:
    """What a node with `settings` writes to `path` for one event of each level."""
    log = Logger(
        namespace="t", observer=node_observer(settings, {"logfile": str(path)})
    )
    log.debug("at debug")
    log.info("at info")
    log.warn("at warn")
    log.error("at error")
    return path.read_text().splitlines() if path.exists() else []


def test_the_level_keeps_out_what_is_below_it(tmp_path: Path) -> None:
    """Only events at or above the level are written, in either format."""
    text = lines_logged(LogSettings("text", "warn"), tmp_path / "text.log")
    assert [line.split("] ", 1)[1] for line in text] == ["at warn", "at error"]

    json_lines = lines_logged(LogSettings("json", "info"), tmp_path / "json.log")
    assert [json.loads(line)["message"] for line in json_lines] == [
        "at info",
        "at warn",
        "at error",
    ]


def test_text_lines_look_like_twistds(tmp_path: Path) -> None:
    """The text format is twistd's own: time, [namespace#level], message."""
    (line,) = lines_logged(LogSettings("text", "error"), tmp_path / "node.log")
    assert line.endswith(" [t#error] at error")


def test_standard_output_as_twistd_chooses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-``, or ``-n`` without a file, is standard output; a daemon without a
    file writes twistd's ``twistd.log`` in its folder, as twistd would."""
    monkeypatch.chdir(tmp_path)
    assert log_output("-", nodaemon=True) is sys.stdout
    assert log_output(None, nodaemon=True) is sys.stdout

    daemon = log_output(None, nodaemon=False)
    assert isinstance(daemon, LogFile)
    assert Path(daemon.path) == tmp_path / "twistd.log"

    named = log_output(str(tmp_path / "node.log"), nodaemon=True)
    assert isinstance(named, LogFile) and Path(named.path) == tmp_path / "node.log"


def test_a_log_file_rotates_on_sigusr1(tmp_path: Path) -> None:
    """A file of ours takes SIGUSR1 for rotation, as twistd's own does, unless
    something took the signal already."""
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    log_output(str(tmp_path / "node.log"), nodaemon=False)
    ours = signal.getsignal(signal.SIGUSR1)
    assert callable(ours)

    log_output(str(tmp_path / "other.log"), nodaemon=False)
    assert signal.getsignal(signal.SIGUSR1) is ours


def test_twistds_own_log_needs_no_observer() -> None:
    """Text at debug is twistd's own log: the service is returned as it is."""
    service = Service()
    assert with_log(service, LogSettings("text", "debug"), {}) is service


@pytest.mark.parametrize(
    "settings", [LogSettings("text", "info"), LogSettings("json", "debug")]
)
def test_any_other_choice_gives_twistd_an_observer(settings: LogSettings) -> None:
    """Parented to a twistd application, the `LogChoice` above the service sets
    its ILogObserver, the component twistd reads before it builds its own."""
    application = Application("treescale-node")
    service = Service()

    top = with_log(service, settings, {"nodaemon": True})
    top.setServiceParent(application)

    assert isinstance(top, LogChoice)
    assert application.getComponent(ILogObserver, None) is top.observer
    assert top in list(IServiceCollection(application))
    assert service.parent is top
