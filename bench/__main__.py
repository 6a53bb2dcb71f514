"""``python -m bench``: the pull benchmark, from the repository root, as root.

It checks what it needs, makes a temporary folder ``/tmp/tsb-*`` for layers,
server data and logs, runs the plan, and writes the results: ``results.md`` (the
tables and targets), ``results.json`` (every run) and ``pull.png``. The folder
goes away at the end, except for its logs when the run fails. ``bench/run`` is
the one command that also installs what the benchmark needs first.
"""

import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType

from bench import plot, report
from bench.client import TransferError
from bench.network import MAX_RELAYS, NetworkError, tbf_arguments
from bench.plan import FULL, Plan, parse
from bench.results import Measurement, load, save
from bench.runner import Bench
from bench.servers import ServerError, Settings, default_settings
from tests.integration.cluster import REPO_ROOT

DEFAULT_OUT = REPO_ROOT / "bench" / "results"
TOOLS = ("ip", "tc", "docker-registry")
DISK_MARGIN = 2 * 10**9

# Failures that explain themselves; any other gets its traceback printed too.
EXPECTED_ERRORS = (
    ServerError,
    NetworkError,
    TransferError,
    OSError,
    subprocess.SubprocessError,
)


def stop_on_signal(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into an exception, so every clean-up on the way out runs."""
    raise KeyboardInterrupt(f"signal {signum}")


def problems(plan: Plan, settings: Settings, profile: bool) -> list[str]:
    """What stops the run before it starts: not root, a tool missing, no room."""
    found = []
    if os.geteuid() != 0:
        found.append("needs root (network namespaces, tc)")
    found += [f"{tool} is not installed" for tool in TOOLS if not shutil.which(tool)]
    if profile and not (Path(sys.executable).parent / "py-spy").exists():
        found.append("--profile needs py-spy: .venv/bin/pip install py-spy")
    layers = sum(plan.layer_sizes())
    # Each layer: its file, the reference's copy and the tree's replicas, one tree
    # at a time.
    needed = layers * (2 + settings.replicas) + DISK_MARGIN
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < needed:
        found.append(f"needs {needed / 1e9:.1f} GB free in /tmp, has {free / 1e9:.1f}")
    return found


def context(plan: Plan, settings: Settings, load: tuple[float, ...]) -> list[str]:
    """Lines that say what the figures were measured on."""
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    commit = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    shaping = "; ".join(
        f"{rate}: tc {' '.join(tbf_arguments(rate))}" for rate in plan.rates
    )
    return [
        f"- machine: {os.cpu_count()} cores, {cpu}, Linux {platform.release()}, "
        f"Python {platform.python_version()}; commit {commit or 'unknown'} "
        "(with the working tree as it was)",
        f"- load average at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f} "
        "(other work on the machine competes for its cores)",
        f"- links: every server in its own namespace behind its own veth, limited "
        f"both ways ({shaping}); client and treescale registry node in the root "
        "namespace",
        f"- tree: chunk {settings.chunk_size / 2**20:g} MiB, window {settings.window} "
        f"({settings.window_per_relay} per relay for a download), "
        f"replicas {settings.replicas}, buffer {settings.buffer_chunks} chunks, "
        f"bus {'TLS' if settings.tls else 'plain TCP'}; "
        f"parallel ranges: {plan.range_parts} equal parts at once",
        "- MB = 10^6 bytes; throughput of the median run; each layer is a tar of "
        "random bytes, every pulled byte checked against its digest",
        f"- at most {MAX_RELAYS} relays; runs: 3 for layers up to 300 MB, else 1"
        if plan.runs is None
        else f"- runs of every case: {plan.runs}",
    ]


def write_results(bench: Bench, out: Path, load: tuple[float, ...]) -> str:
    """Save the JSON, the Markdown report and the plot; the report's text."""
    out.mkdir(parents=True, exist_ok=True)
    lines = context(bench.plan, bench.settings, load)
    shape = {"sweep_size": bench.plan.sweep_size, "range_parts": bench.plan.range_parts}
    save(bench.measurements, out / "results.json", {"lines": lines, **shape})
    return draw_results(bench.measurements, lines, shape, bench.profiles, out)


def draw_results(
    measurements: list[Measurement],
    lines: list[str],
    shape: dict[str, int],
    profiles: list[str],
    out: Path,
) -> str:
    """The Markdown report and the plot of `measurements`, in `out`; the text."""
    text = report.render(
        measurements, lines, shape["sweep_size"], shape["range_parts"], profiles
    )
    (out / "results.md").write_text(text + "\n")
    plot.draw(
        measurements, shape["sweep_size"], "treescale pull benchmark", out / "pull.png"
    )
    return text


def render_again(out: Path) -> int:
    """``--render DIR``: the report and plot drawn again from DIR/results.json,
    by this checkout's report code; nothing is measured. A run saved before the
    shape of its sweep and ranges was kept is taken as the full run's."""
    measurements, saved = load(out / "results.json")
    lines = saved.get("lines")
    shape = {"sweep_size": FULL.sweep_size, "range_parts": FULL.range_parts}
    for key in shape:
        value = saved.get(key)
        if isinstance(value, int):
            shape[key] = value
    listed = [str(line) for line in lines] if isinstance(lines, list) else []
    print(draw_results(measurements, listed, shape, [], out))
    return 0


def main(argv: list[str]) -> int:
    """Run the plan; 0 when every transfer was whole and correct."""
    if argv[:1] == ["--render"] and len(argv) == 2:
        return render_again(Path(argv[1]))
    plan, arguments = parse(argv)
    settings = default_settings(
        plan.chunk_size, plan.window, plan.tls, plan.window_per_relay
    )
    found = problems(plan, settings, arguments.profile)
    if found:
        for problem in found:
            print(f"bench: {problem}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, stop_on_signal)
    directory = Path(tempfile.mkdtemp(prefix="tsb-"))
    out = Path(arguments.out) if arguments.out else None
    if out is None:
        out = directory / "results" if plan.smoke else DEFAULT_OUT
    load = os.getloadavg()
    started = time.monotonic()
    bench = Bench(plan, settings, directory, out if arguments.profile else None)
    if arguments.profile:
        out.mkdir(parents=True, exist_ok=True)
    try:
        bench.run()
        text = write_results(bench, out, load)
    except Exception as error:
        if not isinstance(error, EXPECTED_ERRORS):
            traceback.print_exc()
        print(f"bench: {type(error).__name__}: {error}", file=sys.stderr)
        print(f"bench: logs are in {directory / 'logs'}", file=sys.stderr)
        keep_only_logs(directory)
        return 1
    except KeyboardInterrupt as error:
        print(f"bench: stopped ({error or 'interrupt'}), cleaned up", file=sys.stderr)
        print(f"bench: logs are in {directory / 'logs'}", file=sys.stderr)
        keep_only_logs(directory)
        return 130
    print(text)
    print(
        f"\nbench: {len(bench.measurements)} cases, every transfer verified, "
        f"{time.monotonic() - started:.0f} s; results in {out}"
    )
    shutil.rmtree(directory, ignore_errors=True)
    return 0


def keep_only_logs(directory: Path) -> None:
    """Free the disk a failed run took, keeping its logs to read."""
    for child in directory.iterdir():
        if child.name != "logs":
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
