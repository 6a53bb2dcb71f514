"""What a transfer costs the processes that carry it, read from /proc and /sys.

Before a transfer every watched process has its RSS high-water mark reset (through
``/proc/PID/clear_refs``) to its RSS then, which is kept too: ``VmHWM`` afterwards
is the peak during that transfer alone, and never below the RSS it started at (a
process that does not give memory back keeps its earlier peak as its RSS). Its
CPU seconds and the bytes over each relay link are taken before and after. The
client's own CPU is counted too: on a small machine the client side (client and
registry node) may be what saturates.
"""

import os
import resource
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.network import Link, received_bytes

KIB = 1024


def reset_peak_rss(pid: int) -> None:
    """Reset a process's RSS high-water mark to its RSS now."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def status_kib(pid: int, field_name: str) -> int:
    """One memory figure of ``/proc/PID/status``, such as ``VmHWM``, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    raise ValueError(f"no {field_name} for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_wait_seconds(pid: int) -> float:
    """Seconds the process's threads have spent runnable but waiting for a core.

    On a machine shared with other work this says whether a process was slow
    for lack of CPU rather than for its own work; threads that ended are not
    counted.
    """
    waited = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            waited += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return waited / 1e9


def client_cpu_seconds() -> float:
    """CPU seconds this process (every thread of the client) has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Cost:
    """What one transfer cost: filled in when its `watch` block ends."""

    rss_before_mib: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    cpu_wait_s: dict[str, float] = field(default_factory=dict)
    client_cpu_s: float = 0.0
    link_mb: list[float] = field(default_factory=list)


@contextmanager
def watch(pids: Mapping[str, int], links: Sequence[Link]) -> Iterator[Cost]:
    """Measure the processes and links during the block."""
    cost = Cost()
    for name, pid in pids.items():
        reset_peak_rss(pid)
        cost.rss_before_mib[name] = status_kib(pid, "VmRSS") / KIB
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    wait_before = {name: cpu_wait_seconds(pid) for name, pid in pids.items()}
    client_before = client_cpu_seconds()
    links_before = [received_bytes(link) for link in links]
    yield cost
    cost.client_cpu_s = client_cpu_seconds() - client_before
    for name, pid in pids.items():
        cost.cpu_s[name] = cpu_seconds(pid) - cpu_before[name]
        cost.cpu_wait_s[name] = cpu_wait_seconds(pid) - wait_before[name]
        cost.peak_rss_mib[name] = status_kib(pid, "VmHWM") / KIB
    cost.link_mb = [
        (received_bytes(link) - before) / 1e6
        for link, before in zip(links, links_before, strict=True)
    ]
