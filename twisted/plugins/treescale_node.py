"""The twistd plugin ``treescale-node``: ``twistd -n treescale-node --config FILE``."""

from pathlib import Path
from typing import ClassVar

from twisted.application.service import IService, IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

DEFAULT_CONFIG = Path("conf") / "local.toml"


class Options(usage.Options):
    """Command line of one treescale process."""

    optParameters: ClassVar[list[list[str | None]]] = [
        ["config", "c", None, "topology file (default: conf/local.toml)"],
        ["data-dir", "d", None, "folder for node data (overrides the file's data_dir)"],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["nodes"] = []

    def opt_node(self, name: str) -> None:
        """Run this node of the file (repeat for several; default: every local one)"""
        self["nodes"].append(name)

    opt_n = opt_node


@implementer(IServiceMaker, IPlugin)
class TreescaleNodeMaker:
    """Builds the services of every node this process runs."""

    tapname = "treescale-node"
    description = "A treescale node: registry and/or store relay on a tree of relays"
    options = Options

    def makeService(self, options: Options) -> IService:
        from twisted.internet import reactor

        from treescale.config import ConfigError, load
        from treescale.ops.logsetup import with_log
        from treescale.service import fail_start, make_process_service

        path = Path(options["config"] or DEFAULT_CONFIG)
        if options["config"] is None and not path.exists():
            fail_start(f"no --config given and {path.resolve()} does not exist")
        try:
            topology = load(path, options["data-dir"])
            service = make_process_service(
                topology, options["nodes"], reactor, options["data-dir"]
            )
        except (ConfigError, ValueError) as e:
            fail_start(str(e))
        twistd = getattr(options, "parent", None) or {}
        return with_log(service, topology.log, twistd)


service_maker = TreescaleNodeMaker()
