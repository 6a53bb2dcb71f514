"""Running hashes whose state can be saved and taken up again in another process.

An upload session that is to survive a restart of its registry node must keep the
hash of the bytes received so far. `hashlib` cannot export that state, so this module
drives the same OpenSSL code through its public low-level API, whose context structs
(``SHA256_CTX``, ``SHA512_CTX`` in ``openssl/sha.h``) are plain, documented C structs:
the chaining words, the bit count, the unprocessed tail of the last block. Those
fields are what `HashState` carries, as numbers and bytes, so a state saved on one
host is restored on another whatever its OpenSSL build or byte order.

Where the library or its low-level functions are missing (an OpenSSL built without
deprecated APIs, say), `resumable_hasher` returns None and callers fall back to
hashing the stored bytes again.
"""

# Why OpenSSL through ctypes rather than a pure-Python SHA-2: a pure-Python hash
# runs at a few MB/s, a hundredth of what an upload streams at. The library's
# ``SHAxxx_Update`` is the same code hashlib runs, so the speed is hashlib's; the
# ctypes call costs a microsecond per body piece. A self-test against hashlib at
# first use turns the whole thing off if the struct layout were ever not the
# documented one.

import base64
import ctypes
import ctypes.util
import hashlib
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

log = Logger()

_SHA_LBLOCK = 16
_SPARE = 64
"""Bytes allocated past each documented struct: were a build's struct ever larger,
the library would write into them, never past the buffer."""


class _Sha256Context(ctypes.Structure):
    """``SHA256_CTX``: 8 chaining words, the bit count, a 64-byte block."""

    _fields_ = [
        ("h", ctypes.c_uint32 * 8),
        ("nl", ctypes.c_uint32),
        ("nh", ctypes.c_uint32),
        ("data", ctypes.c_uint8 * (4 * _SHA_LBLOCK)),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
        ("_spare", ctypes.c_uint8 * _SPARE),
    ]


class _Sha512Context(ctypes.Structure):
    """``SHA512_CTX``: 8 chaining words, the bit count, a 128-byte block."""

    _fields_ = [
        ("h", ctypes.c_uint64 * 8),
        ("nl", ctypes.c_uint64),
        ("nh", ctypes.c_uint64),
        ("data", ctypes.c_uint8 * (8 * _SHA_LBLOCK)),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
        ("_spare", ctypes.c_uint8 * _SPARE),
    ]


@dataclass(frozen=True)
class _Algorithm:
    """One hash as the library offers it."""

    name: str
    context: type[ctypes.Structure]
    word_bits: int
    block: int
    digest_size: int
    init: Any
    update: Any
    final: Any


@dataclass(frozen=True)
class HashState:
    """A running hash, saved: enough to go on hashing where it stopped.

    `length` is the number of bytes hashed, `words` the chaining words after the
    last whole block, `tail` the bytes of the block not yet processed.
    """

    algorithm: str
    length: int
    words: tuple[int, ...]
    tail: bytes

    def to_json(self) -> dict[str, object]:
        return {
            "algorithm": self.algorithm,
            "length": self.length,
            "words": list(self.words),
            "tail": base64.b64encode(self.tail).decode(),
        }

    @classmethod
    def from_json(cls, document: object) -> "HashState":
        """A saved state read back; ValueError when it is not one."""
        if not isinstance(document, dict):
            raise ValueError("a hash state is a JSON object")
        try:
            algorithm = str(document["algorithm"])
            length = document["length"]
            words = tuple(document["words"])
            tail = base64.b64decode(document["tail"], validate=True)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a hash state: {e}") from e
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise ValueError("a hash state's length is a count of bytes")
        if not all(
            isinstance(word, int) and not isinstance(word, bool) for word in words
        ):
            raise ValueError("a hash state's words are numbers")
        return cls(algorithm, length, words, tail)


class ResumableHash:
    """A sha256 or sha512 being computed, which `save` can snapshot at any time."""

    def __init__(self, algorithm: _Algorithm) -> None:
        self._algorithm = algorithm
        self._context = algorithm.context()
        if algorithm.init(ctypes.byref(self._context)) != 1:
            raise RuntimeError(f"{algorithm.name} init failed")

    @property
    def name(self) -> str:
        return self._algorithm.name

    def update(self, data: bytes, /) -> None:
        """Hash more bytes (any bytes-like object)."""
        raw = bytes(data)
        if (
            raw
            and self._algorithm.update(ctypes.byref(self._context), raw, len(raw)) != 1
        ):
            raise RuntimeError(f"{self.name} update failed")

    def hexdigest(self) -> str:
        """The digest of everything hashed so far; the hash may go on after."""
        copy = self._algorithm.context()
        ctypes.memmove(
            ctypes.byref(copy), ctypes.byref(self._context), ctypes.sizeof(copy)
        )
        out = ctypes.create_string_buffer(self._algorithm.digest_size)
        if self._algorithm.final(out, ctypes.byref(copy)) != 1:
            raise RuntimeError(f"{self.name} final failed")
        return out.raw.hex()

    def save(self) -> HashState:
        """The state of the hash now, as plain numbers and bytes."""
        context: Any = self._context
        bits = (int(context.nh) << self._algorithm.word_bits) | int(context.nl)
        tail = bytes(context.data)[: int(context.num)]
        return HashState(self.name, bits // 8, tuple(context.h), tail)

    def restore(self, state: HashState) -> None:
        """Take up a saved state; ValueError when it cannot be this hash's."""
        block = self._algorithm.block
        mask = (1 << self._algorithm.word_bits) - 1
        if state.algorithm != self.name:
            raise ValueError(f"a {state.algorithm} state is not a {self.name} state")
        if len(state.words) != 8 or any(not 0 <= word <= mask for word in state.words):
            raise ValueError("a hash state needs 8 chaining words in range")
        if len(state.tail) != state.length % block:
            raise ValueError("a hash state's tail does not match its length")

        context: Any = self._algorithm.context()
        if self._algorithm.init(ctypes.byref(context)) != 1:
            raise RuntimeError(f"{self.name} init failed")
        for index, word in enumerate(state.words):
            context.h[index] = word
        bits = state.length * 8
        context.nl = bits & mask
        context.nh = bits >> self._algorithm.word_bits
        ctypes.memmove(context.data, state.tail, len(state.tail))
        context.num = len(state.tail)
        self._context = context


def _bind(library: ctypes.CDLL, name: str, prefix: str, context: type) -> _Algorithm:
    """The three functions of one hash, typed; AttributeError when missing."""
    init = getattr(library, f"{prefix}_Init")
    update = getattr(library, f"{prefix}_Update")
    final = getattr(library, f"{prefix}_Final")
    pointer: Any = ctypes.POINTER(context)
    init.argtypes, init.restype = [pointer], ctypes.c_int
    update.argtypes = [pointer, ctypes.c_char_p, ctypes.c_size_t]
    update.restype = ctypes.c_int
    final.argtypes, final.restype = [ctypes.c_char_p, pointer], ctypes.c_int
    if name == "sha256":
        return _Algorithm(name, context, 32, 64, 32, init, update, final)
    return _Algorithm(name, context, 64, 128, 64, init, update, final)


def _open_library() -> ctypes.CDLL | None:
    """The libcrypto hashlib uses, or any libcrypto; None when there is none."""
    try:
        import _hashlib

        return ctypes.CDLL(_hashlib.__file__)
    except (ImportError, OSError, AttributeError):
        pass
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _passes_self_test(algorithm: _Algorithm) -> bool:
    """Whether hashing, saving and restoring agree with hashlib on this host."""
    data = bytes(range(256)) * 5
    for cut in (0, 1, algorithm.block - 1, algorithm.block, 300, len(data)):
        first = ResumableHash(algorithm)
        first.update(data[:cut])
        second = ResumableHash(algorithm)
        second.restore(HashState.from_json(first.save().to_json()))
        second.update(data[cut:])
        if second.hexdigest() != hashlib.new(algorithm.name, data).hexdigest():
            return False
    return True


def _load() -> dict[str, _Algorithm]:
    """The hashes whose state can be saved here, checked against hashlib."""
    library = _open_library()
    if library is None:
        log.warn("no libcrypto found: upload sessions resume by hashing again")
        return {}

    found: dict[str, _Algorithm] = {}
    for name, prefix, context in (
        ("sha256", "SHA256", _Sha256Context),
        ("sha512", "SHA512", _Sha512Context),
    ):
        try:
            algorithm = _bind(library, name, prefix, context)
        except AttributeError:
            log.warn(
                "libcrypto has no {prefix}_Init: {algorithm} uploads resume by "
                "hashing again",
                prefix=prefix,
                algorithm=name,
            )
            continue
        if _passes_self_test(algorithm):
            found[name] = algorithm
        else:
            log.error(
                "libcrypto's {algorithm} state is not laid out as documented; "
                "uploads resume by hashing again",
                algorithm=name,
            )
    return found


_ALGORITHMS: dict[str, _Algorithm] | None = None


def resumable_hasher(algorithm: str) -> ResumableHash | None:
    """A new running hash whose state can be saved, or None where there is none."""
    global _ALGORITHMS
    if _ALGORITHMS is None:
        _ALGORITHMS = _load()
    found = _ALGORITHMS.get(algorithm)
    return None if found is None else ResumableHash(found)
