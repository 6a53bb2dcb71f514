"""Where a node's log goes, in which format, and from which level on.

twistd asks its application for an `ILogObserver` before it builds its own text
observer. A node whose ``[log]`` table asks for anything but twistd's own log
(JSON lines, or a least level above debug) puts one there (`with_log`): the same
destination twistd would have chosen (``--logfile``, rotated by size and on
SIGUSR1; standard output with ``-n`` and no file; ``--syslog``), the format the
table names, and only events at or above its level.

The level matters on a busy node: a caching relay logs a debug line per chunk it
fetches, and a registry node one per TLS probe (skopeo tries HTTPS first) on a
plain HTTP port.
"""

import signal
import sys
from collections.abc import Mapping
from typing import IO, Any, cast

from twisted.application.service import IService, MultiService
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogLevel,
    LogLevelFilterPredicate,
    textFileLogObserver,
)
from twisted.python.components import Componentized
from twisted.python.logfile import LogFile

from treescale.ops.jsonlog import JsonLineObserver
from treescale.ops.settings import LogSettings

DEFAULT_LOGFILE = "twistd.log"
"""twistd's own log file when a daemon is given none."""


def with_log(
    service: IService, settings: LogSettings, twistd: Mapping[str, Any]
) -> IService:
    """`service` as a twistd plugin returns it for the ``[log]`` `settings`,
    with `twistd`'s options (``logfile``, ``nodaemon``, ``syslog``, ``prefix``).

    twistd's own text log, everything in it, needs nothing; any other choice
    puts the service under a `LogChoice` that gives twistd its observer.
    """
    if settings.format == "text" and settings.level == "debug":
        return service
    top = LogChoice(node_observer(settings, twistd))
    service.setServiceParent(top)
    return top


def node_observer(settings: LogSettings, twistd: Mapping[str, Any]) -> ILogObserver:
    """The observer writing the events at or above the settings' level, in
    their format, where twistd would have written its own."""
    if twistd.get("syslog") and settings.format == "text":
        observer = _syslog_observer(str(twistd.get("prefix") or "twisted"))
    else:
        output = log_output(twistd.get("logfile"), bool(twistd.get("nodaemon")))
        observer = (
            JsonLineObserver(output)
            if settings.format == "json"
            else textFileLogObserver(cast(IO[Any], output))
        )
    least = LogLevel.levelWithName(settings.level)
    return FilteringLogObserver(
        observer, [LogLevelFilterPredicate(defaultLogLevel=least)]
    )


def log_output(logfile: str | None, nodaemon: bool) -> IO[str] | LogFile:
    """Where twistd writes its log: standard output for ``-``, or with ``-n``
    and no ``--logfile``; else the file (``twistd.log`` when none is given),
    rotated by size and on SIGUSR1, as twistd rotates its own."""
    if logfile == "-" or (nodaemon and not logfile):
        return sys.stdout
    rotated: LogFile = LogFile.fromFullPath(  # type: ignore[no-untyped-call]
        logfile or DEFAULT_LOGFILE
    )
    _rotate_on_sigusr1(rotated)
    return rotated


def _rotate_on_sigusr1(rotated: LogFile) -> None:
    """Rotate the file when the process gets SIGUSR1, unless the signal is
    taken already (twistd does the same for its own file)."""
    if signal.getsignal(signal.SIGUSR1) not in (None, signal.SIG_DFL):
        return

    def rotate(_signal: int, _frame: object) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(rotated.rotate)  # type: ignore[attr-defined]

    signal.signal(signal.SIGUSR1, rotate)


def _syslog_observer(prefix: str) -> ILogObserver:
    """twistd's syslog observer, for the new logging system."""
    from twisted.python import log as legacy_log
    from twisted.python.syslog import SyslogObserver

    legacy = SyslogObserver(prefix)  # type: ignore[no-untyped-call]
    return LegacyLogObserverWrapper(cast(legacy_log.ILogObserver, legacy.emit))


class LogChoice(MultiService):
    """The process's services under one parent that gives twistd its observer.

    `setServiceParent` is the first moment the twistd application exists and the
    last before twistd starts logging, which is when it asks the application for
    an `ILogObserver`.
    """

    def __init__(self, observer: ILogObserver) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.observer = observer

    def setServiceParent(self, parent: Any) -> None:
        if isinstance(parent, Componentized):
            cast(Any, parent).setComponent(ILogObserver, self.observer)
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]
