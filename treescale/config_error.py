"""The error of a topology file that cannot be used.

It lives apart from `treescale.config` so the parsers of other parts' tables (the
registry's, logins') can raise it without importing the topology parser that calls
them.
"""

from pathlib import Path


class ConfigError(Exception):
    """A topology file that cannot be used, with where and why in the message."""

    def __init__(
        self, source: Path | str, node: str | None, field: str | None, why: str
    ):
        where = f"{source}: node {node!r}" if node else f"{source}"
        if field is not None:
            where += f": field {field!r}"
        super().__init__(f"{where}: {why}")
        self.source = source
        self.node = node
        self.field = field
