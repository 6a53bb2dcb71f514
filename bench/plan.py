"""What one run of the benchmark measures: sizes, rates, relay counts, clients.

The full run is the issue's: layers of 5, 50, 300 and 1000 MB; links of 100 and
400 Mbit/s; the reference behind one link, fetched as one stream and as parallel
ranges; treescale with 1 to 4 relays, each behind its own link; a sweep of 1 to 8
relays and of 1 to 20 concurrent pulls; 8 registry nodes behind one relay with a
chunk cache, pulling one 300 MB layer at once; then loopback, push and pull.
``--smoke`` keeps every kind of case but makes it small: a few seconds of
transfers, one rate.
"""

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from bench.network import MAX_RELAYS, rate_bits_per_s

MB = 1_000_000
MIB = 1024 * 1024

PHASES = ("link", "relays", "concurrency", "fanout", "loopback")


@dataclass(frozen=True)
class Plan:
    """Every choice of one run."""

    sizes: tuple[int, ...]
    """Layer sizes of the main comparison and of loopback, bytes."""
    rates: tuple[str, ...]
    relays: tuple[int, ...]
    """Relay counts of the main comparison."""
    sweep_relays: tuple[int, ...]
    sweep_size: int
    concurrency: tuple[int, ...]
    concurrency_size: int
    concurrency_relays: int
    range_parts: int
    fanout_registries: int
    """Registry nodes behind the hub relay in the fanout case."""
    fanout_size: int
    fanout_relays: int
    """Store relays behind their links, above the hub."""
    fanout_rate: str
    fanout_cache: int
    """The hub's cache_size, bytes."""
    runs: int | None
    """Runs of every case; None: 3 for layers up to 300 MB, 1 above."""
    phases: tuple[str, ...]
    chunk_size: int | None
    window: int | None
    window_per_relay: int | None
    seed: int
    tls: bool
    """TLS on the treescale trees' bus, rather than plain TCP."""
    smoke: bool

    def runs_for(self, size: int) -> int:
        """How often a case with a layer of `size` bytes runs."""
        if self.runs is not None:
            return self.runs
        return 3 if size < 400 * MB else 1

    def layer_sizes(self) -> tuple[int, ...]:
        """Every layer size some case needs, smallest first."""
        # The main sizes serve the link and loopback phases only.
        main = {"link", "loopback"} & set(self.phases)
        sizes = set(self.sizes) if main else set()
        if "relays" in self.phases:
            sizes.add(self.sweep_size)
        if "concurrency" in self.phases:
            sizes.add(self.concurrency_size)
        if "fanout" in self.phases:
            sizes.add(self.fanout_size)
        return tuple(sorted(sizes))

    def trees(self) -> tuple[int, ...]:
        """The relay counts of every tree behind links, in the order they run."""
        counts: set[int] = set()
        if "link" in self.phases:
            counts.update(self.relays)
        if "relays" in self.phases:
            counts.update(self.sweep_relays)
        if "concurrency" in self.phases:
            counts.add(self.concurrency_relays)
        return tuple(sorted(counts))

    def sizes_for_tree(self, relays: int) -> tuple[int, ...]:
        """The layer sizes a tree of `relays` relays is pulled at."""
        sizes: set[int] = set()
        if "link" in self.phases and relays in self.relays:
            sizes.update(self.sizes)
        if "relays" in self.phases and relays in self.sweep_relays:
            sizes.add(self.sweep_size)
        if "concurrency" in self.phases and relays == self.concurrency_relays:
            sizes.add(self.concurrency_size)
        return tuple(sorted(sizes))

    def pulls_for_tree(self, relays: int) -> tuple[int, ...]:
        """The sizes pulled one at a time from a tree of `relays` relays."""
        sizes: set[int] = set()
        if "link" in self.phases and relays in self.relays:
            sizes.update(self.sizes)
        if "relays" in self.phases and relays in self.sweep_relays:
            sizes.add(self.sweep_size)
        return tuple(sorted(sizes))

    def reference_sizes(self) -> tuple[int, ...]:
        """The sizes the reference behind its link is pulled at."""
        sizes: set[int] = set()
        if "link" in self.phases:
            sizes.update(self.sizes)
        if "relays" in self.phases:
            sizes.add(self.sweep_size)
        return tuple(sorted(sizes))


def number_list(text: str) -> tuple[int, ...]:
    """``1,2,4`` or ``1-8`` (or both: ``1-4,8``) as sorted distinct integers."""
    numbers: set[int] = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        low, _, high = item.partition("-")
        first, last = int(low), int(high or low)
        if first < 1 or last < first:
            raise argparse.ArgumentTypeError(f"not a positive range: {item!r}")
        numbers.update(range(first, last + 1))
    if not numbers:
        raise argparse.ArgumentTypeError("an empty list")
    return tuple(sorted(numbers))


def size_list(text: str) -> tuple[int, ...]:
    """Sizes in MB (decimal, fractions allowed): ``5,50,300,1000``."""
    try:
        sizes = tuple(sorted({int(float(item) * MB) for item in text.split(",")}))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("sizes must be positive")
    return sizes


def rate_list(text: str) -> tuple[str, ...]:
    """tc rates: ``100mbit,400mbit``."""
    rates = tuple(item.strip() for item in text.split(",") if item.strip())
    try:
        for rate in rates:
            rate_bits_per_s(rate)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not rates:
        raise argparse.ArgumentTypeError("no rate")
    return rates


def phase_list(text: str) -> tuple[str, ...]:
    """Which parts run: any of ``link,relays,concurrency,fanout,loopback``."""
    phases = tuple(item.strip() for item in text.split(",") if item.strip())
    unknown = set(phases) - set(PHASES)
    if unknown or not phases:
        raise argparse.ArgumentTypeError(f"phases are among {', '.join(PHASES)}")
    return tuple(phase for phase in PHASES if phase in phases)


def parser() -> argparse.ArgumentParser:
    """The command line."""
    commands = argparse.ArgumentParser(
        prog="bench/run",
        description="treescale's pull benchmark against the reference registry",
    )
    add = commands.add_argument
    add("--smoke", action="store_true", help="small and quick: check, don't measure")
    add("--sizes", type=size_list, help="layer sizes, MB (default 5,50,300,1000)")
    add("--rates", type=rate_list, help="link rates (default 100mbit,400mbit)")
    add("--relays", type=number_list, help="relay counts compared (default 1-4)")
    add("--sweep-relays", type=number_list, help="relay sweep (default 1-8)")
    add("--sweep-size", type=float, help="layer of the relay sweep, MB (300)")
    add("--concurrency", type=number_list, help="pulls at once (1,2,4,8,12,16,20)")
    add("--concurrency-size", type=float, help="layer pulled at once, MB (50)")
    add("--concurrency-relays", type=int, help="relays of that sweep (3)")
    add("--range-parts", type=int, help="ranges of a parallel fetch (4)")
    add("--fanout-registries", type=int, help="registry nodes behind the hub (8)")
    add("--fanout-size", type=float, help="layer they pull at once, MB (300)")
    add("--fanout-relays", type=int, help="store relays above the hub (3)")
    add("--fanout-rate", type=rate_list, help="those relays' links (100mbit)")
    add("--fanout-cache-mb", type=float, help="the hub's chunk cache, MiB (256)")
    add("--runs", type=int, help="runs of each case (3 up to 300 MB, else 1)")
    add("--phases", type=phase_list, help=f"parts to run (all: {','.join(PHASES)})")
    add("--chunk-mb", type=float, help="override the tree's chunk size, MiB")
    add("--window", type=int, help="override the tree's chunks in flight")
    add(
        "--window-per-relay",
        type=int,
        help="override a download's chunks in flight per relay",
    )
    add("--seed", type=int, help="seed of the layers' bytes (1)")
    add("--tls-bus", action="store_true", help="TLS on the trees' bus (plain TCP)")
    add("--profile", action="store_true", help="py-spy the chosen cases (see README)")
    add("--out", help="folder of the results (default bench/results, smoke: none)")
    return commands


FULL = Plan(
    sizes=(5 * MB, 50 * MB, 300 * MB, 1000 * MB),
    rates=("100mbit", "400mbit"),
    relays=(1, 2, 3, 4),
    sweep_relays=tuple(range(1, MAX_RELAYS + 1)),
    sweep_size=300 * MB,
    concurrency=(1, 2, 4, 8, 12, 16, 20),
    concurrency_size=50 * MB,
    concurrency_relays=3,
    range_parts=4,
    fanout_registries=8,
    fanout_size=300 * MB,
    fanout_relays=3,
    fanout_rate="100mbit",
    fanout_cache=256 * MIB,
    runs=None,
    phases=PHASES,
    chunk_size=None,
    window=None,
    window_per_relay=None,
    seed=1,
    tls=False,
    smoke=False,
)

# Layers of 1 and 9 MB: a 9 MB layer is three chunks of the default 4 MiB, so it
# spreads over relays and several chunks are in flight at once.
SMOKE = replace(
    FULL,
    sizes=(1 * MB, 9 * MB),
    rates=("400mbit",),
    relays=(1, 3),
    sweep_relays=(2,),
    sweep_size=9 * MB,
    concurrency=(1, 4),
    concurrency_size=9 * MB,
    fanout_registries=2,
    fanout_size=9 * MB,
    fanout_relays=2,
    fanout_rate="400mbit",
    runs=1,
    smoke=True,
)

# Options that replace the field of the same name when given.
PLAIN_OPTIONS = (
    "sizes",
    "rates",
    "relays",
    "sweep_relays",
    "concurrency",
    "concurrency_relays",
    "range_parts",
    "fanout_registries",
    "fanout_relays",
    "runs",
    "phases",
    "window",
    "window_per_relay",
    "seed",
)


def plan_from(arguments: argparse.Namespace) -> Plan:
    """The plan the arguments ask for: the full run's, or the smoke's, changed."""
    changes: dict[str, Any] = {
        name: getattr(arguments, name)
        for name in PLAIN_OPTIONS
        if getattr(arguments, name) is not None
    }
    for name in ("sweep_size", "concurrency_size", "fanout_size"):
        if getattr(arguments, name) is not None:
            changes[name] = int(getattr(arguments, name) * MB)
    if arguments.tls_bus:
        changes["tls"] = True
    if arguments.chunk_mb is not None:
        changes["chunk_size"] = int(arguments.chunk_mb * MIB)
    if arguments.fanout_rate is not None:
        changes["fanout_rate"] = arguments.fanout_rate[0]
    if arguments.fanout_cache_mb is not None:
        changes["fanout_cache"] = int(arguments.fanout_cache_mb * MIB)
    return replace(SMOKE if arguments.smoke else FULL, **changes)


def parse(argv: Sequence[str]) -> tuple[Plan, argparse.Namespace]:
    """The plan of the command line, and the rest of its arguments."""
    commands = parser()
    arguments = commands.parse_args(argv)
    plan = plan_from(arguments)
    if max(*plan.trees(), plan.fanout_relays, 1) > MAX_RELAYS:
        commands.error(f"at most {MAX_RELAYS} relays")
    if plan.fanout_registries < 1 or plan.fanout_relays < 1:
        commands.error("--fanout-registries and --fanout-relays must be positive")
    if plan.range_parts < 1 or (plan.runs is not None and plan.runs < 1):
        commands.error("--range-parts and --runs must be positive")
    return plan, arguments
