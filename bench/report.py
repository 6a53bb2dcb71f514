"""The run's figures as Markdown tables, and the targets set against them.

Pure functions of the measurements: throughput of the median run, its ratio to
the reference (one stream, and parallel ranges) behind one link of the same rate
at the same size, peak RSS of every treescale process, and CPU seconds per GB of
the process that answers the client, of the relays together and of the client.
The targets are measured here, never asserted: a line says met or missed.
"""

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from bench.network import rate_bits_per_s
from bench.results import (
    LOOPBACK,
    PUSH,
    RANGES,
    REFERENCE,
    STREAM,
    TREESCALE,
    TREESCALE_ONE_PROCESS,
    Measurement,
)

T = TypeVar("T")

# The targets.
TARGET_RELAYS = 3
TARGET_SIZE = 300_000_000
TARGET_STREAM_RATIO = 2.7
TARGET_RANGES_RATIO = 2.5
TARGET_RSS_MIB = 200.0
TARGET_RSS_SIZE = 1_000_000_000
# Registry nodes behind one relay with a chunk cache (the fanout case).
TARGET_FANOUT_SENT = 1.1
"""Most the store relays may send, as a multiple of the layer, for all at once."""
TARGET_FANOUT_SLOWDOWN = 1.5
"""Most any of those pulls may take, as a multiple of a lone pull's time."""


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table, numbers right-aligned."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|"
        + "|".join(" --- " if i == 0 else " ---: " for i in range(len(header)))
        + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def megabytes(size: int) -> str:
    """A layer's size as its nominal MB: layers are a tar's few KB over it."""
    return f"{size / 1e6:.0f} MB" if size >= 1e6 else f"{size / 1e6:.2f} MB"


def near(size: int, nominal: int) -> bool:
    """Whether a layer of `size` bytes was made for the `nominal` size."""
    return abs(size - nominal) < max(64 * 1024, nominal // 1000)


def ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def find(measurements: Sequence[Measurement], **wanted: object) -> Measurement | None:
    """The first measurement whose fields have the values given."""
    for measurement in measurements:
        if all(getattr(measurement, key) == value for key, value in wanted.items()):
            return measurement
    return None


def reference_speed(
    measurements: Sequence[Measurement], rate: str, size: int, method: str
) -> float | None:
    """The reference's MB/s behind its link, at `rate` and `size`, by `method`."""
    found = find(
        measurements, server=REFERENCE, rate=rate, size=size, method=method, clients=1
    )
    return None if found is None else found.mb_per_s


def over(value: float, base: float | None) -> float | None:
    return None if not base else value / base


def link_mb_per_s(rate: str) -> float:
    """What one link carries at most, in MB a second."""
    return rate_bits_per_s(rate) / 8 / 1e6


def cost_cells(measurement: Measurement) -> list[str]:
    """Peak RSS and CPU per GB, of the front process, the relays and the client."""
    relays = measurement.server == TREESCALE
    return [
        rss_cell(measurement.peak_rss()),
        rss_cell(measurement.peak_rss(relays=True)) if relays else "",
        f"{measurement.cpu_s_per_gb():.2f}",
        f"{measurement.cpu_s_per_gb(relays=True):.2f}" if relays else "",
        f"{measurement.client_cpu_s_per_gb:.2f}",
    ]


CPU_SHARE_HEADER = "registry node: on CPU / waiting for one"


def cpu_share(measurement: Measurement) -> str:
    """How much of the wall time the registry node ran, and waited to run."""
    cpu = measurement.share_of_wall(measurement.cpu_s, "registry")
    wait = measurement.share_of_wall(measurement.cpu_wait_s, "registry")
    return f"{100 * cpu:.0f}% / {100 * wait:.0f}%"


def rss_cell(peak_and_before: tuple[float, float]) -> str:
    """A peak RSS with, in brackets, the RSS the process had as the case began."""
    peak, before = peak_and_before
    return f"{peak:.0f} ({before:.0f})"


COST_HEADER = [
    "peak RSS MiB, (at start): registry / reference",
    "peak RSS MiB, (at start): relay, max",
    "CPU s/GB (registry / reference)",
    "CPU s/GB (relays)",
    "CPU s/GB (client)",
]


def case_name(measurement: Measurement, range_parts: int) -> str:
    if measurement.server == REFERENCE:
        if measurement.method == RANGES:
            return f"reference, {range_parts} parallel ranges"
        return "reference, one stream"
    plural = "s" if measurement.relays > 1 else ""
    return f"treescale, {measurement.relays} relay{plural}"


def links_section(measurements: Sequence[Measurement], range_parts: int) -> list[str]:
    """The main comparison: every case behind links, by rate and size."""
    cases = [m for m in measurements if m.phase == "link"]
    lines: list[str] = []
    for rate in unique(m.rate for m in cases):
        for size in unique(m.size for m in cases if m.rate == rate):
            stream = reference_speed(measurements, rate, size, STREAM)
            ranges = reference_speed(measurements, rate, size, RANGES)
            rows = []
            for m in (m for m in cases if m.rate == rate and m.size == size):
                links = max(1, m.relays)
                rows.append(
                    [
                        case_name(m, range_parts),
                        f"{m.mb_per_s:.1f}",
                        ratio(over(m.mb_per_s, stream)),
                        ratio(over(m.mb_per_s, ranges)),
                        f"{100 * m.mb_per_s / (links * link_mb_per_s(rate)):.0f}%",
                        cpu_share(m) if m.server == TREESCALE else "",
                        *cost_cells(m),
                        " / ".join(f"{mb:.0f}" for mb in m.link_mb),
                        str(m.runs),
                    ]
                )
            lines += [
                f"### {rate} links, {megabytes(size)} layer",
                "",
                *table(
                    [
                        "case",
                        "MB/s",
                        "x ref stream",
                        "x ref ranges",
                        "of its links' rate",
                        CPU_SHARE_HEADER,
                        *COST_HEADER,
                        "MB over each relay link",
                        "runs",
                    ],
                    rows,
                ),
                "",
            ]
    return lines


def sweep_section(measurements: Sequence[Measurement], size: int) -> list[str]:
    """Throughput against the number of relays, one client, at `size`."""
    lines: list[str] = []
    pulls = [
        m
        for m in measurements
        if m.server == TREESCALE
        and m.clients == 1
        and near(m.size, size)
        and m.phase in ("link", "relays")
    ]
    for rate in unique(m.rate for m in pulls):
        rows = []
        for m in sorted((m for m in pulls if m.rate == rate), key=lambda m: m.relays):
            stream = reference_speed(measurements, rate, m.size, STREAM)
            rows.append(
                [
                    str(m.relays),
                    f"{m.mb_per_s:.1f}",
                    ratio(over(m.mb_per_s, stream)),
                    ratio(
                        over(m.mb_per_s, None if stream is None else m.relays * stream)
                    ),
                    cpu_share(m),
                    *cost_cells(m),
                ]
            )
        lines += [
            f"### {rate} links, {megabytes(size)} layer, one client",
            "",
            *table(
                [
                    "relays",
                    "MB/s",
                    "x ref stream",
                    "x (relays x ref stream)",
                    CPU_SHARE_HEADER,
                    *COST_HEADER,
                ],
                rows,
            ),
            "",
        ]
    return lines


def concurrency_section(measurements: Sequence[Measurement]) -> list[str]:
    """Aggregate throughput against concurrent pulls."""
    cases = [m for m in measurements if m.phase == "concurrency"]
    lines: list[str] = []
    for rate in unique(m.rate for m in cases):
        rows = []
        chosen = sorted((m for m in cases if m.rate == rate), key=lambda m: m.clients)
        for m in chosen:
            stream = reference_speed(measurements, rate, m.size, STREAM)
            rows.append(
                [
                    str(m.clients),
                    f"{m.mb_per_s:.1f}",
                    f"{m.mb_per_s / m.clients:.1f}",
                    ratio(over(m.mb_per_s, stream)),
                    cpu_share(m),
                    *cost_cells(m),
                ]
            )
        first = chosen[0]
        lines += [
            f"### {rate} links, {first.relays} relays, "
            f"{megabytes(first.size)} layer pulled by every client",
            "",
            *table(
                [
                    "clients",
                    "MB/s, all",
                    "MB/s, each",
                    "all x ref stream",
                    CPU_SHARE_HEADER,
                    *COST_HEADER,
                ],
                rows,
            ),
            "",
        ]
    return lines


LOOPBACK_TREES = (
    (TREESCALE, "its registry node and relay in two processes"),
    (TREESCALE_ONE_PROCESS, "its registry node and relay in one process"),
)
"""The trees measured on loopback, and how the report names each."""


def loopback_section(measurements: Sequence[Measurement]) -> list[str]:
    """Push and pull on loopback, treescale of one relay against the reference:
    a table for each way of running the tree."""
    lines = []
    for server, how in LOOPBACK_TREES:
        lines += loopback_table(measurements, server, how)
    return lines


def loopback_table(
    measurements: Sequence[Measurement], server: str, how: str
) -> list[str]:
    """Push and pull on loopback of one way of running the tree."""
    cases = [m for m in measurements if m.phase == "loopback"]
    rows = []
    for size in unique(m.size for m in cases):
        for method in (PUSH, STREAM):
            reference = find(cases, size=size, method=method, server=REFERENCE)
            treescale = find(cases, size=size, method=method, server=server)
            if reference is None or treescale is None:
                continue
            rows.append(
                [
                    f"{megabytes(size)} {'push' if method == PUSH else 'pull'}",
                    f"{reference.mb_per_s:.1f}",
                    f"{treescale.mb_per_s:.1f}",
                    ratio(treescale.mb_per_s / reference.mb_per_s),
                    f"{reference.cpu_s_per_gb():.2f}",
                    *cost_cells(treescale),
                    str(treescale.runs),
                ]
            )
    if not rows:
        return []
    return [
        f"### loopback, no limit, treescale with one relay, {how}",
        "",
        *table(
            [
                "layer",
                "reference MB/s",
                "treescale MB/s",
                "treescale / reference",
                "reference CPU s/GB",
                *(f"treescale {name}" for name in COST_HEADER),
                "runs",
            ],
            rows,
        ),
        "",
    ]


def targets_section(measurements: Sequence[Measurement]) -> list[str]:
    """The issue's targets, each with what was measured: met or missed."""
    lines = ["## Targets (measured, not asserted)", ""]
    for rate in unique(m.rate for m in measurements if m.rate != LOOPBACK):
        candidates = [
            m
            for m in measurements
            if m.server == TREESCALE
            and m.rate == rate
            and m.relays == TARGET_RELAYS
            and m.clients == 1
            and near(m.size, TARGET_SIZE)
            and m.phase in ("link", "relays")
        ]
        if not candidates:
            continue
        found = candidates[0]
        stream = reference_speed(measurements, rate, found.size, STREAM)
        ranges = reference_speed(measurements, rate, found.size, RANGES)
        for name, base, goal in (
            ("one stream", stream, TARGET_STREAM_RATIO),
            ("parallel ranges", ranges, TARGET_RANGES_RATIO),
        ):
            value = over(found.mb_per_s, base)
            if value is not None:
                lines.append(
                    f"- {rate}: 3 relays pull 300 MB at {value:.2f}x the reference's "
                    f"{name} (target {goal}x): {verdict(value >= goal)}"
                )
    for server, how in LOOPBACK_TREES:
        for method in (STREAM, PUSH):
            worst = loopback_worst(measurements, method, server)
            if worst is not None:
                word = "pull" if method == STREAM else "push"
                lines.append(
                    f"- loopback {word}, {how}: treescale at {worst[0]:.2f}x the "
                    f"reference at worst ({megabytes(worst[1])}; target 1x): "
                    f"{verdict(worst[0] >= 1)}"
                )
    lines += fanout_targets(measurements)
    trees = (TREESCALE, TREESCALE_ONE_PROCESS)
    big = [m for m in measurements if m.server in trees and m.size >= TARGET_RSS_SIZE]
    if big:
        peak = max(max(m.peak_rss_mib.values()) for m in big)
        lines.append(
            f"- peak RSS of any treescale process while a {megabytes(TARGET_RSS_SIZE)} "
            f"layer goes through: {peak:.0f} MiB (target under {TARGET_RSS_MIB:.0f}): "
            f"{verdict(peak < TARGET_RSS_MIB)}"
        )
    return [*lines, ""]


def fanout_pair(
    measurements: Sequence[Measurement],
) -> tuple[Measurement, Measurement] | None:
    """The fanout case's lone pull and its pull by every registry node at once."""
    cases = [m for m in measurements if m.phase == "fanout"]
    lone = next((m for m in cases if m.clients == 1), None)
    crowd = next((m for m in cases if m.clients > 1), None)
    return None if lone is None or crowd is None else (lone, crowd)


def sent_over_layer(measurement: Measurement) -> float:
    """MB over the store relays' links per layer a run moved over them."""
    layers = measurement.size * measurement.runs / 1e6
    return sum(measurement.link_mb) / layers


def slowest_over_lone(lone: Measurement, crowd: Measurement) -> float:
    """The slowest pull of the crowd over the median lone pull."""
    slowest = max(crowd.pull_seconds, default=crowd.median_seconds)
    return slowest / lone.median_seconds


def fanout_targets(measurements: Sequence[Measurement]) -> list[str]:
    """The fanout case's two targets, when it ran."""
    pair = fanout_pair(measurements)
    if pair is None:
        return []
    lone, crowd = pair
    sent, slowdown = sent_over_layer(crowd), slowest_over_lone(lone, crowd)
    where = (
        f"{crowd.clients} registry nodes behind one relay pulling "
        f"{megabytes(crowd.size)} at once ({crowd.relays} store relays behind "
        f"{crowd.rate} links)"
    )
    return [
        f"- {where}: the store relays sent {sent:.2f}x the layer (target at most "
        f"{TARGET_FANOUT_SENT}x): {verdict(sent <= TARGET_FANOUT_SENT)}",
        f"- {where}: the slowest pull took {slowdown:.2f}x a lone pull's time "
        f"(target at most {TARGET_FANOUT_SLOWDOWN}x): "
        f"{verdict(slowdown <= TARGET_FANOUT_SLOWDOWN)}",
    ]


def fanout_section(measurements: Sequence[Measurement]) -> list[str]:
    """The lone pull and the crowd's, with what crossed the links and the hub's cost."""
    pair = fanout_pair(measurements)
    if pair is None:
        return []
    lone, crowd = pair
    rows = []
    for m in (lone, crowd):
        pulls = m.pull_seconds or m.seconds
        registries = [name for name in m.cpu_s if name.startswith("registry-")]
        rows.append(
            [
                "one registry node alone" if m is lone else f"{m.clients} at once",
                f"{min(pulls):.1f} to {max(pulls):.1f}",
                f"{max(pulls) / lone.median_seconds:.2f}x",
                f"{sum(m.link_mb):.0f}",
                f"{sent_over_layer(m):.2f}x",
                rss_cell(
                    (m.peak_rss_mib.get("hub", 0.0), m.rss_before_mib.get("hub", 0.0))
                ),
                f"{m.cpu_s.get('hub', 0.0):.1f}",
                f"{sum(m.cpu_s[name] for name in registries):.1f}",
                f"{m.client_cpu_s:.1f}",
                str(m.runs),
            ]
        )
    return [
        f"### {crowd.rate} links, {crowd.relays} store relays, hub with a chunk cache, "
        f"{megabytes(crowd.size)} layer",
        "",
        *table(
            [
                "case",
                "seconds of each pull",
                "slowest x lone",
                "MB over the relays' links",
                "x layer",
                "hub peak RSS MiB (at start)",
                "hub CPU s",
                "registry nodes CPU s",
                "client CPU s",
                "runs",
            ],
            rows,
        ),
        "",
    ]


def loopback_worst(
    measurements: Sequence[Measurement], method: str, server: str = TREESCALE
) -> tuple[float, int] | None:
    """The lowest ratio of `server` (a treescale tree) to the reference on
    loopback by `method`, and its size."""
    ratios = []
    for m in measurements:
        if m.phase == "loopback" and m.server == server and m.method == method:
            reference = find(
                measurements,
                phase="loopback",
                server=REFERENCE,
                method=method,
                size=m.size,
            )
            if reference is not None:
                ratios.append((m.mb_per_s / reference.mb_per_s, m.size))
    return min(ratios, default=None)


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def unique(values: Iterable[T]) -> list[T]:
    """The values in order of first appearance, each once."""
    return list(dict.fromkeys(values))


def render(
    measurements: Sequence[Measurement],
    context_lines: Sequence[str],
    sweep_size: int,
    range_parts: int,
    profiles: Sequence[str],
) -> str:
    """The whole report."""
    sections: list[Callable[[], list[str]]] = [
        lambda: targets_section(measurements),
        lambda: ["## Behind links", "", *links_section(measurements, range_parts)],
        lambda: ["## Relay sweep", "", *sweep_section(measurements, sweep_size)],
        lambda: ["## Concurrent pulls", "", *concurrency_section(measurements)],
        lambda: [
            "## Registry nodes behind one relay",
            "",
            *fanout_section(measurements),
        ],
        lambda: ["## Loopback", "", *loopback_section(measurements)],
    ]
    lines = ["# Pull benchmark", "", *context_lines, ""]
    for section in sections:
        part = section()
        if any(line.startswith("|") or line.startswith("- ") for line in part):
            lines += part
    if profiles:
        lines += ["## Profiles (py-spy)", "", "```", *profiles, "```", ""]
    return "\n".join(lines)
