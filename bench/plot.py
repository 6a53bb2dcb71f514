"""The run's figures as one PNG of four panels, with matplotlib.

1. Behind links: MB/s of every case at every size, one group of bars per rate.
2. Relay sweep: speed-up over the reference's one stream against relays, with the
   ideal (N links, N times one) drawn as a line.
3. Concurrent pulls: aggregate MB/s against clients.
4. Loopback: push and pull, reference against treescale.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bench.report import find, megabytes, near, reference_speed, unique
from bench.results import (
    LOOPBACK,
    PUSH,
    REFERENCE,
    STREAM,
    TREESCALE,
    TREESCALE_ONE_PROCESS,
    Measurement,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def draw(
    measurements: Sequence[Measurement], sweep_size: int, title: str, path: Path
) -> None:
    """Write the figure to `path`; matplotlib is imported only here, so the rest
    of the benchmark runs without it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    figure, axes = pyplot.subplots(2, 2, figsize=(15, 10))
    figure.suptitle(title, fontsize=10)
    links_panel(axes[0][0], measurements)
    sweep_panel(axes[0][1], measurements, sweep_size)
    concurrency_panel(axes[1][0], measurements)
    loopback_panel(axes[1][1], measurements)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def case_label(measurement: Measurement) -> str:
    if measurement.server == REFERENCE:
        return f"ref {measurement.method}"
    return f"ts {measurement.relays}r"


def links_panel(axis: "Axes", measurements: Sequence[Measurement]) -> None:
    """Bars of MB/s: x the rate and size, one bar per case."""
    cases = [m for m in measurements if m.phase == "link"]
    groups = unique((m.rate, m.size) for m in cases)
    labels = unique(case_label(m) for m in cases)
    width = 0.8 / max(1, len(labels))
    for index, label in enumerate(labels):
        heights = []
        for rate, size in groups:
            found = [
                m
                for m in cases
                if m.rate == rate and m.size == size and case_label(m) == label
            ]
            heights.append(found[0].mb_per_s if found else 0.0)
        positions = [g + index * width for g in range(len(groups))]
        axis.bar(positions, heights, width, label=label)
    axis.set_xticks(
        [g + 0.4 - width / 2 for g in range(len(groups))],
        [f"{rate}\n{megabytes(size)}" for rate, size in groups],
    )
    axis.set_ylabel("MB/s")
    axis.set_title("behind rate-limited links")
    axis.legend(fontsize=8)


def sweep_panel(axis: "Axes", measurements: Sequence[Measurement], size: int) -> None:
    """Speed-up over one reference stream against relays, per rate, and the ideal."""
    pulls = [
        m
        for m in measurements
        if m.server == TREESCALE
        and m.clients == 1
        and near(m.size, size)
        and m.phase in ("link", "relays")
    ]
    most = 1
    for rate in unique(m.rate for m in pulls if m.rate != LOOPBACK):
        chosen = [m for m in pulls if m.rate == rate]
        base = reference_speed(measurements, rate, chosen[0].size, STREAM)
        if not base:
            continue
        points = sorted((m.relays, m.mb_per_s / base) for m in chosen)
        most = max(most, *(relays for relays, _ in points))
        axis.plot([p[0] for p in points], [p[1] for p in points], "o-", label=rate)
    axis.plot([1, most], [1, most], "k--", label="N x one link")
    axis.set_xlabel("relays, each behind its own link")
    axis.set_ylabel("x the reference's one stream")
    axis.set_title(f"relay sweep, {megabytes(size)} layer")
    axis.legend(fontsize=8)


def concurrency_panel(axis: "Axes", measurements: Sequence[Measurement]) -> None:
    """Aggregate MB/s against concurrent clients, per rate."""
    cases = [m for m in measurements if m.phase == "concurrency"]
    for rate in unique(m.rate for m in cases):
        points = sorted((m.clients, m.mb_per_s) for m in cases if m.rate == rate)
        axis.plot([p[0] for p in points], [p[1] for p in points], "o-", label=rate)
    if cases:
        axis.set_title(
            f"concurrent pulls, {cases[0].relays} relays, "
            f"{megabytes(cases[0].size)} layer"
        )
    axis.set_xlabel("clients pulling at once")
    axis.set_ylabel("MB/s, all clients")
    axis.legend(fontsize=8)


def loopback_panel(axis: "Axes", measurements: Sequence[Measurement]) -> None:
    """Bars of MB/s on loopback: push and pull of each size, both servers."""
    cases = [m for m in measurements if m.phase == "loopback"]
    groups = unique((m.size, m.method) for m in cases)
    servers = (REFERENCE, TREESCALE, TREESCALE_ONE_PROCESS)
    labels = ("reference", "treescale, two processes", "treescale, one process")
    width = 0.8 / len(servers)
    for index, (server, label) in enumerate(zip(servers, labels, strict=True)):
        heights = []
        for size, method in groups:
            found = find(cases, size=size, method=method, server=server)
            heights.append(0.0 if found is None else found.mb_per_s)
        positions = [g + index * width for g in range(len(groups))]
        axis.bar(positions, heights, width, label=label)
    axis.set_xticks(
        [g + 0.4 - width / 2 for g in range(len(groups))],
        [
            f"{megabytes(size)}\n{'push' if method == PUSH else 'pull'}"
            for size, method in groups
        ],
    )
    axis.set_ylabel("MB/s")
    axis.set_title("loopback, no limit, treescale with one relay")
    axis.legend(fontsize=8)
