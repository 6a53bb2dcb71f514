"""The ``treescale`` command: tools an operator runs beside the nodes, one
subcommand each.

    treescale certs TOPOLOGY --out DIR    the cluster's CA and a certificate per node

``certs`` reads the topology file for the cluster's name and its nodes' names and
writes, in DIR: ``ca.pem`` and ``ca.key`` (the CA), then ``NODE.pem`` and ``NODE.key``
for every node, the names the example ``[tls]`` table expects. Keys are written
with mode 0600. A file that exists is never replaced without ``--force``; with
``--reuse-ca`` the CA already in DIR signs the new node certificates, which is how
a node is added or a certificate renewed without touching the others.

Exit status: 0 done, 1 refused (files exist, the CA in DIR is unusable), 2 a bad
command line or topology file.
"""

import argparse
import datetime
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from treescale.bus.certs import (
    DEFAULT_CA_DAYS,
    DEFAULT_NODE_DAYS,
    CertificateError,
    Issued,
    load_ca,
    make_ca,
    make_node_certificate,
)
from treescale.bus.tls_settings import check_tls_names, node_identity
from treescale.config import ConfigError, Topology, load

PROGRAM = "treescale"
CA_CERTIFICATE = "ca.pem"
CA_KEY = "ca.key"
KEY_MODE = 0o600
CERTIFICATE_MODE = 0o644
DIRECTORY_MODE = 0o700


class Refused(Exception):
    """The command would do something it must not; the message says what."""


@dataclass(frozen=True)
class Output:
    """One file to write: where, what, and with which mode."""

    path: Path
    data: bytes
    mode: int
    about: str


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args, sys.stdout))
    except ConfigError as e:
        print(f"{PROGRAM}: {e}", file=sys.stderr)
        return 2
    except Refused as e:
        print(f"{PROGRAM} {args.command}: {e}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The command line, one subparser per subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="Tools for running a treescale cluster."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    certs = commands.add_parser(
        "certs",
        help="make the cluster's CA and every node's TLS certificate",
        description="Make the CA of the cluster a topology file describes, and one "
        "key and certificate per node, for the file's [tls] table.",
    )
    certs.add_argument("topology", type=Path, help="the topology file")
    certs.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder to write the files in",
    )
    certs.add_argument(
        "--force", action="store_true", help="replace files that already exist"
    )
    certs.add_argument(
        "--reuse-ca",
        action="store_true",
        help=f"sign with the {CA_CERTIFICATE} and {CA_KEY} already in --out "
        "instead of making a new CA",
    )
    certs.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME",
        help="only this node (repeat for several; default: every node)",
    )
    certs.add_argument(
        "--ca-days",
        type=_positive_days,
        metavar="DAYS",
        default=DEFAULT_CA_DAYS,
        help=f"days a new CA is valid (default {DEFAULT_CA_DAYS})",
    )
    certs.add_argument(
        "--node-days",
        type=_positive_days,
        metavar="DAYS",
        default=DEFAULT_NODE_DAYS,
        help=f"days a node certificate is valid (default {DEFAULT_NODE_DAYS})",
    )
    certs.set_defaults(run=run_certs)
    return parser


def _positive_days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not 1 <= days <= 100 * 366:
        raise argparse.ArgumentTypeError(f"{days} is not in 1..36600")
    return days


def run_certs(args: argparse.Namespace, out: TextIO) -> int:
    """``treescale certs``: plan every file, refuse before writing any, then write."""
    topology = load(args.topology)
    names = [topology.node(name).name for name in args.node] or [
        node.name for node in topology.nodes
    ]
    check_tls_names(topology.cluster, names, topology.source)

    ca, outputs = _plan_ca(topology, args.out, args.reuse_ca, args.ca_days)
    outputs += _plan_nodes(ca, topology, names, args.out, args.node_days)
    existing = [str(output.path) for output in outputs if output.path.exists()]
    if existing and not args.force:
        raise Refused(f"would replace {', '.join(existing)}; use --force to do so")

    _write_all(outputs, args.out, out, replace=args.force)
    print(
        f"{args.out / CA_KEY} signs node certificates: keep it off the nodes. Each "
        f"node needs {CA_CERTIFICATE}, its own .pem and its own .key.",
        file=out,
    )
    return 0


def _plan_nodes(
    ca: Issued, topology: Topology, names: Sequence[str], folder: Path, days: int
) -> list[Output]:
    """A new key and certificate of `ca` for each node named."""
    outputs = []
    for name in names:
        issued = make_node_certificate(ca, topology.cluster, name, days)
        until = _day(issued.certificate.not_valid_after_utc)
        about = f"{node_identity(topology.cluster, name)}, valid until {until}"
        outputs += [
            Output(
                folder / f"{name}.pem",
                issued.certificate_pem,
                CERTIFICATE_MODE,
                f"certificate of {about}",
            ),
            Output(folder / f"{name}.key", issued.key_pem, KEY_MODE, f"key of {name}"),
        ]
    return outputs


def _write_all(
    outputs: Sequence[Output], folder: Path, out: TextIO, *, replace: bool
) -> None:
    """Write every planned file into `folder` (made 0700 if new), saying so."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=DIRECTORY_MODE)
    except OSError as e:
        raise Refused(f"cannot make {folder}: {e.strerror}") from e
    for output in outputs:
        try:
            write_file(output.path, output.data, output.mode, replace=replace)
        except FileExistsError:
            raise Refused(f"{output.path} appeared meanwhile; not replaced") from None
        except OSError as e:
            raise Refused(f"cannot write {output.path}: {e.strerror}") from e
        print(f"wrote {output.path} ({output.about})", file=out)


def _plan_ca(
    topology: Topology, folder: Path, reuse: bool, days: int
) -> tuple[Issued, list[Output]]:
    """The CA to sign with, and the CA files to write (none when it is reused)."""
    if reuse:
        try:
            ca = load_ca(
                (folder / CA_CERTIFICATE).read_bytes(), (folder / CA_KEY).read_bytes()
            )
        except OSError as e:
            raise Refused(f"--reuse-ca: cannot read {e.filename}: {e.strerror}") from e
        except CertificateError as e:
            raise Refused(f"--reuse-ca: {folder}: {e}") from e
        return ca, []

    ca = make_ca(topology.cluster, days)
    until = _day(ca.certificate.not_valid_after_utc)
    return ca, [
        Output(
            folder / CA_CERTIFICATE,
            ca.certificate_pem,
            CERTIFICATE_MODE,
            f"CA of cluster {topology.cluster}, valid until {until}",
        ),
        Output(folder / CA_KEY, ca.key_pem, KEY_MODE, "CA key"),
    ]


def write_file(path: Path, data: bytes, mode: int, *, replace: bool) -> None:
    """Write `data` to `path` with `mode` from its first byte on.

    Without `replace` the file is created exclusively, so one that appeared since
    the check is still not replaced. With it, a temporary file beside it is renamed
    over it: a reader never sees half a key, and an old file's looser mode is not
    kept.
    """
    if not replace:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        return
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _day(moment: datetime.datetime) -> str:
    return f"{moment:%Y-%m-%d}"


if __name__ == "__main__":
    sys.exit(main())
