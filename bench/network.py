"""Several hosts on one machine: a network namespace per server, each joined to the
root namespace (the client side) by its own rate-limited veth pair.

    client + registry node (root namespace)
        ==veth tsb-r1-h / tsb-r1-n 10.250.1.0/30==> relay 1 (netns tsb-r1)
        ...
        ==veth tsb-r8-h / tsb-r8-n 10.250.8.0/30==> relay 8 (netns tsb-r8)
        ==veth tsb-ref-h / tsb-ref-n 10.250.100.0/30==> reference (netns tsb-ref)

A link is limited by tbf on the egress of both of its ends, so it is limited both
ways. The benchmark lifts the limit while it loads the servers (a push is set-up,
not what is measured) and sets it again, at each rate, before the pulls. Every
namespace and veth made here goes away on the way out, whatever happens.
"""

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

COMMAND_TIMEOUT = 20.0
MAX_RELAYS = 8

# tbf as the lab measured it at 100 Mbit/s. A faster link needs a bigger bucket to
# reach its rate, so the burst is the larger of this and 10 ms at the rate.
TBF_BURST = 64 * 1024
TBF_BURST_SECONDS = 0.01
TBF_LATENCY = "50ms"


class NetworkError(Exception):
    """A command that builds or shapes the network failed; the message says which."""


@dataclass(frozen=True)
class Link:
    """One namespace and the veth pair joining it to the root namespace."""

    namespace: str
    host_veth: str
    inner_veth: str
    host_address: str
    inner_address: str

    def inside(self, *command: str) -> list[str]:
        """`command` run inside this link's namespace."""
        return ["ip", "netns", "exec", self.namespace, *command]


def relay_link(index: int) -> Link:
    """The link of relay `index`, counted from 1."""
    if not 1 <= index <= MAX_RELAYS:
        raise ValueError(f"relay links go from 1 to {MAX_RELAYS}, not {index}")
    return Link(
        f"tsb-r{index}",
        f"tsb-r{index}-h",
        f"tsb-r{index}-n",
        f"10.250.{index}.1",
        f"10.250.{index}.2",
    )


REFERENCE_LINK = Link(
    "tsb-ref", "tsb-ref-h", "tsb-ref-n", "10.250.100.1", "10.250.100.2"
)
EVERY_LINK = (*(relay_link(n) for n in range(1, MAX_RELAYS + 1)), REFERENCE_LINK)


def rate_bits_per_s(rate: str) -> float:
    """What a tc rate such as ``100mbit`` means in bits a second."""
    units = {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3}
    lowered = rate.lower()
    for unit, factor in units.items():
        if lowered.endswith(unit):
            try:
                number = float(lowered.removesuffix(unit))
            except ValueError:
                break
            if number > 0:
                return number * factor
    raise ValueError(f"not a tc rate such as 100mbit: {rate!r}")


def tbf_arguments(rate: str) -> list[str]:
    """The tbf qdisc of a link at `rate`."""
    burst = max(TBF_BURST, int(rate_bits_per_s(rate) / 8 * TBF_BURST_SECONDS))
    return ["tbf", "rate", rate, "burst", str(burst), "latency", TBF_LATENCY]


def run_command(command: Sequence[str], *, check: bool = True) -> None:
    """Run one set-up command, bounded in time; fail with its output if it fails."""
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )
    if check and done.returncode != 0:
        raise NetworkError(f"{' '.join(command)}: {done.stderr.strip()}")


def set_up(link: Link) -> None:
    """The namespace, its veth pair with a /30 and its loopback, unlimited."""
    run_command(["ip", "netns", "add", link.namespace])
    run_command(
        [
            *("ip", "link", "add", link.host_veth, "type", "veth"),
            *("peer", "name", link.inner_veth, "netns", link.namespace),
        ]
    )
    run_command(["ip", "addr", "add", f"{link.host_address}/30", "dev", link.host_veth])
    run_command(["ip", "link", "set", link.host_veth, "up"])
    inner = f"{link.inner_address}/30"
    run_command(link.inside("ip", "addr", "add", inner, "dev", link.inner_veth))
    run_command(link.inside("ip", "link", "set", link.inner_veth, "up"))
    run_command(link.inside("ip", "link", "set", "lo", "up"))


def add_host_route(link: Link, address: str) -> None:
    """Let the namespace reach a root-namespace `address` over its own link."""
    if address == link.host_address:
        return
    run_command(
        link.inside("ip", "route", "add", f"{address}/32", "via", link.host_address)
    )


def limit(link: Link, rate: str) -> None:
    """Limit both directions of the link to `rate`."""
    shape = ["root", *tbf_arguments(rate)]
    run_command(["tc", "qdisc", "replace", "dev", link.host_veth, *shape])
    run_command(link.inside("tc", "qdisc", "replace", "dev", link.inner_veth, *shape))


def unlimit(link: Link) -> None:
    """Take the rate limit off both directions of the link, if it has one."""
    run_command(["tc", "qdisc", "del", "dev", link.host_veth, "root"], check=False)
    run_command(
        link.inside("tc", "qdisc", "del", "dev", link.inner_veth, "root"), check=False
    )


def tear_down(links: Sequence[Link]) -> None:
    """Delete the namespaces and veths of `links`, whichever of them exist."""
    for link in links:
        run_command(["ip", "netns", "del", link.namespace], check=False)
        run_command(["ip", "link", "del", link.host_veth], check=False)


def received_bytes(link: Link) -> int:
    """Bytes the root namespace has received over the link so far."""
    with open(f"/sys/class/net/{link.host_veth}/statistics/rx_bytes") as counter:
        return int(counter.read())


@contextmanager
def links_up(links: Sequence[Link]) -> Iterator[None]:
    """The links, unlimited, removed on the way out whatever happens."""
    tear_down(links)
    try:
        for link in links:
            set_up(link)
        yield
    finally:
        tear_down(links)
