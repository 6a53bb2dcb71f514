"""atheris harness: the registry's parsing of what a client sends.

Each input picks one parser (routes, names, tags, digests, Range, Content-Range,
counts, manifests) or a whole raw HTTP exchange with a registry on a streaming
site over memory storage. Properties: a parser refuses only with `ApiError` (a 4xx
the spec names); a raw exchange is answered below 500 or not at all, and the
registry logs no failure.
"""

import sys

import atheris

with atheris.instrument_imports():
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.logger import Logger

    from tests.unit.memstore import MemoryStorage
    from treescale.registry.app import Registry, RegistrySettings, make_site
    from treescale.registry.errors import ApiError
    from treescale.registry.manifests import OCI_MANIFEST, parse_manifest
    from treescale.registry.names import check_digest, check_name, check_tag
    from treescale.registry.ranges import parse_content_range, parse_count, parse_range
    from treescale.registry.routes import parse_route

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
MANIFEST_TYPES = [None, OCI_MANIFEST, "application/json", "text/plain; a=b"]


class Failures:
    """A log observer that keeps only failures: bugs, never a client's mistake."""

    def __init__(self) -> None:
        self.seen: list[dict[str, object]] = []

    def __call__(self, event: dict[str, object]) -> None:
        if "log_failure" in event:
            self.seen.append(event)


def parse_one(provider: atheris.FuzzedDataProvider) -> None:
    """Run one parser on the rest of the input; only ApiError may come out."""
    choice = provider.ConsumeIntInRange(0, 7)
    text = provider.ConsumeUnicodeNoSurrogates(provider.remaining_bytes())
    try:
        if choice == 0:
            parse_route(text.encode("utf-8", "surrogateescape"))
        elif choice == 1:
            check_name(text)
        elif choice == 2:
            check_tag(text)
        elif choice == 3:
            check_digest(text)
        elif choice == 4:
            parse_range(text, len(text) * 7)
        elif choice == 5:
            parse_content_range(text)
        elif choice == 6:
            parse_count(text)
        else:
            media_type = MANIFEST_TYPES[len(text) % len(MANIFEST_TYPES)]
            parse_manifest(text.encode(), media_type)
    except ApiError as error:
        if not 400 <= error.status < 500:
            raise AssertionError(f"parser answered {error.status}") from None


def exchange(raw: bytes) -> None:
    """Send `raw` on a connection to a fresh registry; check what came back."""
    failures = Failures()
    registry = Registry(MemoryStorage(), Clock(), RegistrySettings())
    registry.log = Logger(observer=failures)
    site = make_site(registry)
    site.reactor = Clock()
    channel = site.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    channel.makeConnection(transport)
    channel.dataReceived(raw)
    answer = transport.value()
    channel.connectionLost(None)
    if answer.startswith(b"HTTP/1.1 5"):
        raise AssertionError(f"answered {answer[:80]!r}")
    if failures.seen:
        raise AssertionError(f"logged a failure: {failures.seen[0]!r}")


def one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    if provider.ConsumeIntInRange(0, 3) == 0:
        exchange(provider.ConsumeBytes(provider.remaining_bytes()))
    else:
        parse_one(provider)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
