"""``treescale reload``: have running nodes take an edited topology file.

It checks the file first (a file no node could load is refused here, and no
process is signalled), then sends SIGHUP to each process named and waits for the
outcome each writes (`treescale.reload`): the edit applied, or refused whole with
the line saying why. A process judges the edit against the tree it runs, which
this command cannot see; hence the wait.

Exit status: 0 every process took the edit, 1 one refused it, 2 the file or a
pid file is unusable, 3 a process did not answer in time.
"""

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from treescale.config import ConfigError, load
from treescale.reload import outcome_path

DEFAULT_CONFIG = Path("conf") / "local.toml"
DEFAULT_PID_FILE = Path("twistd.pid")
DEFAULT_TIMEOUT = 10.0
POLL_INTERVAL = 0.1

APPLIED, REFUSED, UNUSABLE, NO_ANSWER = 0, 1, 2, 3


def add_reload(commands: Any) -> None:
    """Register the ``reload`` subcommand."""
    reload = commands.add_parser(
        "reload",
        help="have running nodes take an edited topology file (SIGHUP)",
        description="Check a topology file, send SIGHUP to the twistd processes "
        "running it and print what each made of the edit: applied, or refused "
        "whole with the file, node and field at fault (the tree then runs on "
        "unchanged). Run it where the processes were started: it reads their "
        "pid files and the file's data_dir.",
    )
    reload.add_argument(
        "config",
        nargs="?",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"the edited topology file (default: {DEFAULT_CONFIG})",
    )
    reload.add_argument(
        "--pid-file",
        type=Path,
        action="append",
        dest="pid_files",
        help=f"a twistd pid file, once per process (default: {DEFAULT_PID_FILE})",
    )
    reload.add_argument(
        "--pid", type=int, action="append", dest="pids", help="a process id"
    )
    reload.add_argument(
        "--data-dir", type=Path, help="the --data-dir the processes were given"
    )
    reload.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for each process (default: {DEFAULT_TIMEOUT:g})",
    )
    reload.set_defaults(run=run_reload)


def run_reload(args: argparse.Namespace, out: TextIO) -> int:
    """Signal each process and report what it did with the edit."""
    try:
        topology = load(args.config, args.data_dir)
    except ConfigError as e:
        print(f"treescale reload: {e}; no node was signalled", file=sys.stderr)
        return UNUSABLE
    try:
        pids = _pids(args.pids or [], args.pid_files)
    except ValueError as e:
        print(f"treescale reload: {e}", file=sys.stderr)
        return UNUSABLE

    source = Path(args.config).resolve()
    statuses = [
        _reload_one(pid, topology.data_dir, source, args.timeout, out) for pid in pids
    ]
    return max(statuses)


def _pids(given: list[int], pid_files: list[Path] | None) -> list[int]:
    """The processes to signal: those named, else those of the pid files."""
    if given and not pid_files:
        return given
    pids = list(given)
    for path in pid_files or [DEFAULT_PID_FILE]:
        try:
            pids.append(int(path.read_text().strip()))
        except OSError as e:
            raise ValueError(f"cannot read pid file {path}: {e.strerror}") from e
        except ValueError:
            raise ValueError(f"pid file {path} holds no process id") from None
    return pids


def _reload_one(
    pid: int,
    data_dir: Path,
    source: Path,
    timeout: float,
    out: TextIO,
    now: Callable[[], float] = time.time,
) -> int:
    """SIGHUP one process and wait for the outcome it writes after it; a process
    that runs another file than `source` is named (it re-read its own)."""
    sent = now()
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"treescale reload: no process {pid}", file=sys.stderr)
        return UNUSABLE
    except PermissionError:
        print(f"treescale reload: not allowed to signal {pid}", file=sys.stderr)
        return UNUSABLE

    path = outcome_path(data_dir, pid)
    deadline = sent + timeout
    while now() < deadline:
        outcome = _read_outcome(path)
        if outcome is not None and float(outcome.get("at", 0)) >= sent:
            print(f"process {pid}: {outcome.get('message')}", file=out)
            if outcome.get("source") != str(source):
                print(
                    f"treescale reload: process {pid} runs {outcome.get('source')}, "
                    f"not {source}: it re-read its own file; edit that one, or "
                    "start the process with --config naming this one",
                    file=sys.stderr,
                )
                return REFUSED
            return APPLIED if outcome.get("applied") is True else REFUSED
        time.sleep(POLL_INTERVAL)
    print(
        f"treescale reload: process {pid} wrote no outcome to {path} within "
        f"{timeout:g} s; see its log",
        file=sys.stderr,
    )
    return NO_ANSWER


def _read_outcome(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None
