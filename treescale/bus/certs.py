"""Making a cluster's CA and its nodes' certificates, as PEM bytes; no files here.

The CA signs node certificates and nothing else (path length 0). A node certificate
carries one DNS-ID, ``<node>.<cluster>.treescale`` (`node_identity`), in its
subjectAltName, and may serve both ends of a link: a node dials its parent as a
client and accepts its children as a server, with the same certificate. Keys are EC
P-256 and written as unencrypted PKCS#8: a node must read its key unattended, so the
file's mode (0600, set by whoever writes it) is what protects it.

`treescale.cli` writes what this module makes; the tests make expired and foreign
certificates with the same functions and other dates or another CA.
"""

import datetime
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from treescale.bus.tls_settings import node_identity

DEFAULT_CA_DAYS = 3650
DEFAULT_NODE_DAYS = 365

# A certificate starts a little in the past, so a peer whose clock runs slightly
# behind the signer's still accepts it at once.
BACKDATE = datetime.timedelta(minutes=5)


class CertificateError(Exception):
    """A CA or key that cannot be used to sign node certificates."""


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(
    cluster: str,
    days: int = DEFAULT_CA_DAYS,
    *,
    not_before: datetime.datetime | None = None,
) -> Issued:
    """A new self-signed CA for cluster `cluster`, valid `days` from `not_before`."""
    key = _new_key()
    start = (not_before or _now()) - BACKDATE
    # A tag of its own tells this CA from another made for the same cluster, for
    # an operator reading a log and for OpenSSL looking for a certificate's issuer.
    tag = secrets.token_hex(4)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "treescale"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"treescale CA of {cluster} {tag}"),
        ]
    )
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
        .sign(key, hashes.SHA256())
    )
    return Issued(certificate, key)


def make_node_certificate(
    ca: Issued,
    cluster: str,
    node: str,
    days: int = DEFAULT_NODE_DAYS,
    *,
    not_before: datetime.datetime | None = None,
) -> Issued:
    """A new key and a certificate of `ca` naming node `node` of `cluster`.

    It ends no later than the CA does: a chain is only as valid as its root.
    """
    key = _new_key()
    start = (not_before or _now()) - BACKDATE
    end = min(start + datetime.timedelta(days=days), ca.certificate.not_valid_after_utc)
    identity = node_identity(cluster, node)
    public = key.public_key()
    ca_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
        .issuer_name(ca.certificate.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(identity)]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
        .add_extension(ca_key_id, critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(certificate, key)


def load_ca(certificate_pem: bytes, key_pem: bytes) -> Issued:
    """A CA written earlier, to sign more node certificates with.

    Refuses a certificate that is not a CA or a key that is not its own: signing
    with either would make certificates no node accepts.
    """
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise CertificateError(f"cannot read the CA: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("the CA key is not an EC key")
    try:
        constraints = certificate.extensions.get_extension_for_class(
            x509.BasicConstraints
        ).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CertificateError("the CA certificate is not a CA")
    if key.public_key() != certificate.public_key():
        raise CertificateError("the CA key does not belong to the CA certificate")
    return Issued(certificate, key)


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )
