"""py-spy on the treescale processes during chosen transfers, and a summary of
where their time went.

py-spy writes collapsed stacks (``frame;frame;frame COUNT`` a line), which
flame-graph tools and speedscope read. It keeps only samples of threads that were
running, so a process's samples over the samples it could have had is how busy it
was. The summary gives, for each process, that share and the functions most on
the CPU, by self and by inclusive samples.
"""

import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

SAMPLE_RATE = 100
START_GRACE = 1.0
STOP_TIMEOUT = 30.0


def py_spy() -> str | None:
    """The py-spy executable next to this Python, or on PATH; None without one."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


@dataclass
class Recording:
    """The files py-spy writes, and the seconds it recorded for."""

    files: dict[str, Path]
    seconds: float = 0.0


@contextmanager
def recording(pids: Mapping[str, int], prefix: Path) -> Iterator[Recording]:
    """py-spy records each process into ``PREFIX-<name>.txt`` while the block runs."""
    executable = py_spy()
    if executable is None:
        raise RuntimeError("py-spy is not installed: pip install py-spy")
    record = Recording({name: Path(f"{prefix}-{name}.txt") for name in pids})
    with ExitStack() as stack:
        for name, pid in pids.items():
            command = [executable, "record", "--pid", str(pid), "--nonblocking"]
            command += ["--format", "raw", "--rate", str(SAMPLE_RATE)]
            command += ["--output", str(record.files[name])]
            spy = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            stack.callback(_stop, spy)
        time.sleep(START_GRACE)
        started = time.monotonic()
        yield record
        record.seconds = time.monotonic() - started


def _stop(spy: "subprocess.Popen[bytes]") -> None:
    """Ask py-spy to write its output and stop; kill it if it hangs."""
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)
    try:
        spy.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait(STOP_TIMEOUT)


@dataclass(frozen=True)
class Summary:
    """Where one process's samples went."""

    samples: int
    possible: int
    top_self: list[tuple[str, int]]
    top_total: list[tuple[str, int]]


def parse_collapsed(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """The stacks of py-spy's raw output: frames from the outside in, and count."""
    stacks = []
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def function_name(frame: str) -> str:
    """``poll (twisted/internet/epollreactor.py:123)`` → ``poll (epollreactor.py)``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({path.rsplit('/', 1)[-1]})" if path else name


def summarize(
    stacks: list[tuple[list[str], int]], seconds: float, top: int = 30
) -> Summary:
    """Self and inclusive samples per function, over `seconds` of recording."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    samples = 0
    for frames, count in stacks:
        names = [function_name(frame) for frame in frames]
        if not names:
            continue
        samples += count
        self_counts[names[-1]] += count
        for name in set(names):
            total_counts[name] += count
    return Summary(
        samples,
        int(seconds * SAMPLE_RATE),
        self_counts.most_common(top),
        total_counts.most_common(top),
    )


def summary_text(title: str, summary: Summary) -> str:
    """A plain-text report of one summary."""
    busy = summary.samples
    lines = [
        f"{title}: {busy} samples of running threads, {summary.possible} sampling "
        f"instants ({100 * busy / max(1, summary.possible):.0f}%; threads add up)",
        "  most self samples (share of all samples):",
    ]
    lines += [
        f"    {100 * count / max(1, busy):5.1f}%  {name}"
        for name, count in summary.top_self[:15]
    ]
    lines.append(
        "  most inclusive samples (share of all; frames under 90%, so not the "
        "reactor's own loop):"
    )
    lines += [
        f"    {100 * count / max(1, busy):5.1f}%  {name}"
        for name, count in summary.top_total
        if count < 0.9 * busy
    ]
    return "\n".join(lines)
