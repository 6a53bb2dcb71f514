"""The keys tokens are signed with and checked against.

treescale signs its own tokens with one EC P-256 key (ES256), kept as a PEM file
that is created on first use: written to a temporary file of mode 0600 in the same
folder, synced, then linked into place, so a reader never sees half a key and two
processes starting at once end up sharing whichever key was linked first.

An external issuer is trusted through its public key, an EC (P-256, P-384, P-521)
or RSA key, given as a PEM public key or as a PEM certificate holding one. Each key
allows only the algorithms of its own kind: a token's header cannot talk the
verifier into HMAC with a public key as the secret, nor into ``none``.

A key's id (the ``kid`` of a token's header) is computed the way CNCF distribution
and Docker's libtrust do: the first 240 bits of the SHA-256 of the key's DER
SubjectPublicKeyInfo, in base32, in groups of four joined by colons.
"""

import base64
import hashlib
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from treescale.durable import fsync_folder

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

SIGNING_ALGORITHM = "ES256"
MIN_RSA_BITS = 2048
"""RSA keys shorter than this are refused: they no longer resist factoring."""

EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})


class KeyUnusable(ValueError):
    """A key file that cannot be read, or holds a key of a kind not accepted."""


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The unencrypted EC P-256 signing key kept in `path`."""
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise KeyUnusable(
            f"{str(path)!r} does not hold an unencrypted PEM private key"
        ) from e

    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != (
        "secp256r1"
    ):
        raise KeyUnusable(f"{str(path)!r} is not an EC P-256 key (ES256 needs one)")
    return key


def load_or_create_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The signing key in `path`, made there first when the file is missing."""
    if not path.exists():
        _create_private_key(path)
    return load_private_key(path)


def load_public_key(path: Path) -> PublicKey:
    """An issuer's public key, from a PEM public key or a PEM certificate."""
    data = _read(path)
    try:
        key: object = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        try:
            key = x509.load_pem_x509_certificate(data).public_key()
        except ValueError as e:
            raise KeyUnusable(
                f"{str(path)!r} holds neither a PEM public key nor a PEM certificate"
            ) from e

    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in EC_ALGORITHMS:
            raise KeyUnusable(f"{str(path)!r}: EC curve {key.curve.name} is not used")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyUnusable(
                f"{str(path)!r}: an RSA key of {key.key_size} bits is too short "
                f"(at least {MIN_RSA_BITS})"
            )
        return key
    raise KeyUnusable(f"{str(path)!r} is neither an EC nor an RSA key")


def algorithms_for(key: PublicKey) -> frozenset[str]:
    """The signature algorithms a token checked with `key` may use."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return frozenset({EC_ALGORITHMS[key.curve.name]})
    return RSA_ALGORITHMS


def key_id(key: PublicKey) -> str:
    """The libtrust-style id of `key`, as a token's ``kid`` carries it."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    text = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii")
    return ":".join(text[i : i + 4] for i in range(0, len(text), 4))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise KeyUnusable(f"cannot read {str(path)!r}: {e.strerror}") from e


def _create_private_key(path: Path) -> None:
    """Write a new key to `path` unless another process got there first."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        descriptor, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}."
        )
    except OSError as e:
        raise KeyUnusable(f"cannot create {str(path)!r}: {e.strerror}") from e

    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path)
        fsync_folder(path.parent)
    except FileExistsError:
        pass
    except OSError as e:
        raise KeyUnusable(f"cannot create {str(path)!r}: {e.strerror}") from e
    finally:
        os.unlink(temporary)
