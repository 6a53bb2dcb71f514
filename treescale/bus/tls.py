"""Mutual TLS on the bus: one node's credentials, the connections made from them,
and the checks that a peer is the node it says it is.

Who may link, in three gates:

1. The TLS handshake. Both ends present a certificate and both require one; a chain
   is accepted only up to the cluster's CA (never the system's trust store), and
   only while every certificate in it is in its validity period. TLS 1.2 or newer.
2. The dialer's name check, in the handshake too: a child checks with
   service-identity that its parent's certificate carries the parent's DNS-ID
   (`node_identity`), before its HELLO leaves.
3. The HELLO. Whichever end, a peer's HELLO names a node; its certificate must carry
   that node's DNS-ID (`BusTls.refusal`), and `BusNode.check_hello` has already
   checked that the node is the one dialled or a child of ours. A certificate with a
   wildcard name is refused: a node certificate names one node.

Our own verify callback runs on both ends (`BusTls.make_connection`), so a refusal
is logged with its reason ("its certificate (...) has expired") rather than
OpenSSL's "certificate verify failed"; the far end sees the TLS alert.

Without a ``[tls]`` table the bus is plain TCP, which `plain_bus_refusal` allows only
when every bus address of the file is loopback (the embedded default), or when the
operator has set ``insecure_plain_bus``.
"""

import datetime
from collections.abc import Sequence
from pathlib import Path
from weakref import WeakKeyDictionary

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import extract_patterns
from service_identity.hazmat import DNS_ID, DNSPattern, verify_service_identity
from twisted.internet import ssl
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from treescale.bus.tls_settings import TlsFiles, node_identity
from treescale.config import Topology, is_loopback_host

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2

NodeKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

VERIFY_BOTH_ENDS = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT


class TlsUnusable(Exception):
    """A node's CA, certificate or key that cannot be used, and why."""


class BusTls:
    """One node's TLS credentials on the bus, and the connections made from them.

    Built once per node as it starts (`load_bus_tls`); the same certificate serves
    the links it accepts and the one it dials. It remembers, per connection, why it
    refused the peer's certificate, for the link to log.
    """

    # Shortcoming: there is no revocation. A node certificate is accepted until it
    # expires; shutting out a stolen key takes a new CA and new certificates for
    # every node.

    def __init__(
        self,
        cluster: str,
        node: str,
        authorities: Sequence[x509.Certificate],
        certificate: x509.Certificate,
        key: NodeKey,
    ) -> None:
        self.cluster = cluster
        self.node = node
        self.certificate = certificate
        trust = ssl.trustRootFromCertificates(  # type: ignore[no-untyped-call]
            [
                ssl.Certificate.loadPEM(ca.public_bytes(serialization.Encoding.PEM))
                for ca in authorities
            ]
        )
        # One context for every link, accepted or dialled: CertificateOptions
        # builds it once. It takes cryptography's objects (pyOpenSSL's own are
        # deprecated there) though its annotations still name pyOpenSSL's.
        self._options = ssl.CertificateOptions(
            privateKey=key,  # type: ignore[arg-type]
            certificate=certificate,  # type: ignore[arg-type]
            trustRoot=trust,
            raiseMinimumTo=MINIMUM_VERSION,
        )
        self._refusals: WeakKeyDictionary[TLSMemoryBIOProtocol, str] = (
            WeakKeyDictionary()
        )

    @property
    def not_after(self) -> datetime.datetime:
        """When this node's certificate expires."""
        return self.certificate.not_valid_after_utc

    # The TLS layer gathers small writes and sends them on the next turn of
    # `clock`: the node's clock, so tests that drive it see them go.

    def listening_factory(
        self, factory: IProtocolFactory, clock: IReactorTime
    ) -> TLSMemoryBIOFactory:
        """`factory`'s protocols behind the TLS server end of each accepted link."""
        return TLSMemoryBIOFactory(_Checked(self, None), False, factory, clock)

    def dialing_factory(
        self, factory: IProtocolFactory, peer: str, clock: IReactorTime
    ) -> TLSMemoryBIOFactory:
        """`factory`'s protocols behind the TLS client end of a link to `peer`."""
        return TLSMemoryBIOFactory(_Checked(self, peer), True, factory, clock)

    def dialing_endpoint(
        self, endpoint: IStreamClientEndpoint, peer: str, clock: IReactorTime
    ) -> IStreamClientEndpoint:
        """`endpoint` with TLS to node `peer` on top."""
        return wrapClientTLS(_Checked(self, peer), endpoint, clock)

    def make_connection(
        self, protocol: TLSMemoryBIOProtocol, peer: str | None, *, client: bool
    ) -> SSL.Connection:
        """An OpenSSL connection for `protocol`, its peer's certificate checked by
        our callback: OpenSSL's verdict on the chain and dates, then, when we
        dial node `peer`, the leaf's name."""
        if client:
            connection = self._options.clientConnectionForTLS(protocol)
        else:
            connection = self._options.serverConnectionForTLS(protocol)
        identity = None if peer is None else node_identity(self.cluster, peer)
        if identity is not None:
            connection.set_tlsext_host_name(identity.encode("ascii"))

        def verify(
            connection: SSL.Connection,
            certificate: crypto.X509,
            error: int,
            depth: int,
            ok: int,
        ) -> bool:
            why = None
            if not ok:
                why = _verification_reason(certificate, error, depth)
            elif depth == 0 and identity is not None:
                why = identity_mismatch(certificate.to_cryptography(), identity)
            if why is not None:
                # The TLS layer sets itself as the connection's app data.
                self._refusals.setdefault(connection.get_app_data(), why)
                return False
            return True

        connection.set_verify(VERIFY_BOTH_ENDS, verify)
        return connection

    def refusal(self, peer: str, certificate: x509.Certificate | None) -> str | None:
        """Why a peer whose HELLO names `peer` is refused, None when its certificate
        names exactly that node."""
        if certificate is None:
            return f"{peer!r} sent no certificate"
        why = identity_mismatch(certificate, node_identity(self.cluster, peer))
        return None if why is None else f"HELLO says {peer!r} but {why}"

    def handshake_failure(
        self, reason: Failure | None, transport: object
    ) -> str | None:
        """Why the TLS handshake on `transport` failed, in words; None when the
        connection ended for another reason."""
        if isinstance(transport, TLSMemoryBIOProtocol):
            ours = self._refusals.get(transport)
            if ours is not None:
                return ours
        if reason is not None and isinstance(reason.value, SSL.Error):
            why = _openssl_reasons(reason.value)
            return f"the peer refused us: {why}" if "alert" in why else why
        return None


@implementer(IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator)
class _Checked:
    """What the TLS layer asks for each connection: `BusTls.make_connection`."""

    def __init__(self, tls: BusTls, peer: str | None) -> None:
        self.tls = tls
        self.peer = peer

    def clientConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        return self.tls.make_connection(tlsProtocol, self.peer, client=True)

    def serverConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        return self.tls.make_connection(tlsProtocol, self.peer, client=False)


def identity_mismatch(certificate: x509.Certificate, identity: str) -> str | None:
    """Why `certificate` does not carry exactly the DNS-ID `identity`; None if it
    does."""
    try:
        patterns = extract_patterns(certificate)
    except CertificateError as e:
        return f"its certificate has unreadable names: {e}"
    names = [
        pattern.pattern.decode("ascii", "replace")
        for pattern in patterns
        if isinstance(pattern, DNSPattern)
    ]
    if any("*" in name for name in names):
        return f"its certificate has a wildcard name ({', '.join(names)})"
    try:
        verify_service_identity(patterns, [DNS_ID(identity)], [])
    except (CertificateError, VerificationError):
        shown = ", ".join(names) or "no DNS name"
        return f"its certificate names {shown}, not {identity}"
    return None


def peer_certificate(transport: object) -> x509.Certificate | None:
    """The certificate the far end of a TLS transport presented, if any."""
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    presented = get()
    return None if presented is None else presented.to_cryptography()


_CA_MISSING = "is not signed by the cluster's CA"

# What OpenSSL's verification codes mean for a bus peer; others keep their number.
_VERIFICATION_REASONS = {
    SSL.X509VerificationCodes.ERR_CERT_HAS_EXPIRED: "has expired",
    SSL.X509VerificationCodes.ERR_CERT_NOT_YET_VALID: "is not valid yet",
    SSL.X509VerificationCodes.ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY: _CA_MISSING,
    SSL.X509VerificationCodes.ERR_UNABLE_TO_GET_ISSUER_CERT: _CA_MISSING,
    SSL.X509VerificationCodes.ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE: _CA_MISSING,
    SSL.X509VerificationCodes.ERR_DEPTH_ZERO_SELF_SIGNED_CERT: (
        "is self-signed, not signed by the cluster's CA"
    ),
    SSL.X509VerificationCodes.ERR_CERT_SIGNATURE_FAILURE: "has a bad signature",
    SSL.X509VerificationCodes.ERR_INVALID_PURPOSE: "is not for TLS links",
    SSL.X509VerificationCodes.ERR_INVALID_CA: "was issued by a non-CA",
}


def _verification_reason(certificate: crypto.X509, error: int, depth: int) -> str:
    names = certificate.to_cryptography().subject.get_attributes_for_oid(
        NameOID.COMMON_NAME
    )
    subject = ", ".join(str(name.value) for name in names) or "no name"
    if error == SSL.X509VerificationCodes.ERR_SELF_SIGNED_CERT_IN_CHAIN:
        return f"its certificate chains to {subject}, which is not the cluster's CA"
    meaning = _VERIFICATION_REASONS.get(error, f"failed verification (code {error})")
    if depth == 0:
        return f"its certificate ({subject}) {meaning}"
    return f"the CA {subject} in its chain {meaning}"


def _openssl_reasons(error: SSL.Error) -> str:
    """The reasons OpenSSL gave, without its library and function codes."""
    reasons = []
    for entry in error.args[0] if error.args else []:
        if isinstance(entry, tuple) and len(entry) == 3:
            reasons.append(str(entry[2]))
        else:
            reasons.append(str(entry))
    return "; ".join(reasons) or "TLS error"


def plain_bus_refusal(topology: Topology) -> str | None:
    """Why this tree's bus may not run as plain TCP; None when it may.

    Plain TCP believes any HELLO: it is the embedded default's, where every bus
    port is on loopback, and nothing else's unless the operator says so.
    """
    if topology.tls is not None or topology.insecure_plain_bus:
        return None
    for node in topology.nodes:
        if not is_loopback_host(node.bus.host):
            return (
                f"{topology.source}: node {node.name!r}: field 'bus': {node.bus} is "
                "not loopback, and without a [tls] table the bus is plain TCP that "
                "anyone could join; add [tls] (`treescale certs` makes its files)"
            )
    return None


def load_bus_tls(topology: Topology, node: str, files: TlsFiles) -> BusTls:
    """Read and check node `node`'s TLS files; `TlsUnusable` says what is wrong.

    Checked here so a node with the wrong files stops at start-up with one line,
    not with links that fail later: the certificate must be signed by the CA, name
    this node, be in its validity period, and match the key.
    """
    # Shortcoming: a node certificate must be signed by a certificate of the CA
    # file directly; intermediate CAs are neither sent nor accepted.
    authorities = _read_certificates(files.ca, "CA")
    certificate = _read_certificates(files.cert, "certificate")[0]
    key_pem = _read(files.key, "key")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise TlsUnusable(f"key {str(files.key)!r} cannot be read: {e}") from e
    if not isinstance(key, NodeKey):
        raise TlsUnusable(f"key {str(files.key)!r} is neither an EC nor an RSA key")
    if key.public_key() != certificate.public_key():
        raise TlsUnusable(
            f"key {str(files.key)!r} does not belong to certificate {str(files.cert)!r}"
        )
    if not any(_issued_by(certificate, ca) for ca in authorities):
        raise TlsUnusable(
            f"certificate {str(files.cert)!r} is not signed by the CA in "
            f"{str(files.ca)!r}"
        )
    why = identity_mismatch(certificate, node_identity(topology.cluster, node))
    if why is not None:
        raise TlsUnusable(
            f"certificate {str(files.cert)!r} is not for node {node!r}: {why}"
        )
    _check_dates(certificate, files.cert)
    return BusTls(topology.cluster, node, authorities, certificate, key)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TlsUnusable(f"cannot read the {what} {str(path)!r}: {e.strerror}") from e


def _read_certificates(path: Path, what: str) -> list[x509.Certificate]:
    try:
        found = x509.load_pem_x509_certificates(_read(path, what))
    except ValueError as e:
        raise TlsUnusable(f"{what} {str(path)!r} holds no PEM certificate") from e
    if not found:
        raise TlsUnusable(f"{what} {str(path)!r} holds no PEM certificate")
    return found


def _issued_by(certificate: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_dates(certificate: x509.Certificate, path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    if now < certificate.not_valid_before_utc:
        raise TlsUnusable(
            f"certificate {str(path)!r} is not valid before "
            f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    if now > certificate.not_valid_after_utc:
        raise TlsUnusable(
            f"certificate {str(path)!r} expired on "
            f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
