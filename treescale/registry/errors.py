"""The spec's API error codes, the exception that carries one, and its JSON writer.

Every failure a client sees goes through here: a handler raises `ApiError` (or lets a
storage error rise), and the application's one error handler turns it into a status
and the spec's body ``{"errors": [{"code", "message", "detail"}]}``. No handler builds
an error body by hand, and no traceback is ever written to a client.

The codes are the spec's list. A few entries share a code but not a status, where the
spec asks for a status its list does not name (416 for an out-of-order chunk, 413 for
an oversized manifest, 405 for a method an endpoint lacks, 404 for no endpoint).
``MANIFEST_BLOB_UNKNOWN`` is a 400, as the CNCF distribution registry has it: the
pushed manifest is at fault, not its URL. Four codes come from outside the spec's
list, as that registry uses them: ``RANGE_INVALID`` (416, a read past a blob's end),
``PAGINATION_NUMBER_INVALID`` (400, a bad ``n``), ``UNAVAILABLE`` (503, the storage
cannot answer now) and ``UNKNOWN`` (500, a bug); clients treat codes they do not
know as ``UNKNOWN``. The spec spells the rate-limit
code ``TOOMANYREQUESTS``, without underscores.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from twisted.web.server import Request
from werkzeug.exceptions import HTTPException

from treescale.store.errors import (
    BlobUnknown,
    DigestMismatch,
    StorageUnavailable,
    UploadFailed,
)

JSON = bool | int | float | str | Sequence["JSON"] | Mapping[str, "JSON"] | None
"""A value JSON can carry, as the ``detail`` of an error."""


@dataclass(frozen=True)
class ErrorCode:
    """One entry of the registry: the code a client reads, its status, its message."""

    code: str
    status: int
    message: str


BLOB_UNKNOWN = ErrorCode("BLOB_UNKNOWN", 404, "blob unknown to registry")
BLOB_UPLOAD_INVALID = ErrorCode("BLOB_UPLOAD_INVALID", 400, "blob upload invalid")
BLOB_UPLOAD_RANGE = ErrorCode(
    "BLOB_UPLOAD_INVALID", 416, "chunk does not start at the upload's offset"
)
BLOB_UPLOAD_UNKNOWN = ErrorCode(
    "BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry"
)
DIGEST_INVALID = ErrorCode(
    "DIGEST_INVALID", 400, "provided digest did not match uploaded content"
)
MANIFEST_BLOB_UNKNOWN = ErrorCode(
    "MANIFEST_BLOB_UNKNOWN",
    400,
    "manifest references a manifest or blob unknown to registry",
)
MANIFEST_INVALID = ErrorCode("MANIFEST_INVALID", 400, "manifest invalid")
MANIFEST_TOO_LARGE = ErrorCode("SIZE_INVALID", 413, "manifest exceeds the size limit")
MANIFEST_UNKNOWN = ErrorCode("MANIFEST_UNKNOWN", 404, "manifest unknown to registry")
NAME_INVALID = ErrorCode("NAME_INVALID", 400, "invalid repository name")
NAME_UNKNOWN = ErrorCode("NAME_UNKNOWN", 404, "repository name not known to registry")
SIZE_INVALID = ErrorCode(
    "SIZE_INVALID", 400, "provided length did not match content length"
)
UNSUPPORTED = ErrorCode("UNSUPPORTED", 415, "the operation is unsupported")
QUERY_INVALID = ErrorCode("UNSUPPORTED", 400, "a query parameter is invalid")
METHOD_NOT_ALLOWED = ErrorCode(
    "UNSUPPORTED", 405, "the endpoint does not support this method"
)
ENDPOINT_UNKNOWN = ErrorCode("UNSUPPORTED", 404, "no such endpoint")
URL_INVALID = ErrorCode("UNSUPPORTED", 400, "the URL or the Host header is not UTF-8")
RANGE_INVALID = ErrorCode("RANGE_INVALID", 416, "requested range not satisfiable")
TOO_MANY_REQUESTS = ErrorCode("TOOMANYREQUESTS", 429, "too many requests")
UNAVAILABLE = ErrorCode("UNAVAILABLE", 503, "service unavailable, retry later")
UNKNOWN = ErrorCode("UNKNOWN", 500, "internal error")
TAG_INVALID = ErrorCode("TAG_INVALID", 400, "manifest tag did not match URI")
UNAUTHORIZED = ErrorCode("UNAUTHORIZED", 401, "authentication required")
DENIED = ErrorCode("DENIED", 403, "requested access to the resource is denied")
DELETE_DISABLED = ErrorCode("UNSUPPORTED", 405, "deletes are disabled on this registry")
PAGINATION_NUMBER_INVALID = ErrorCode(
    "PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested"
)

ERROR_CODES: tuple[ErrorCode, ...] = (
    BLOB_UNKNOWN,
    BLOB_UPLOAD_INVALID,
    BLOB_UPLOAD_RANGE,
    BLOB_UPLOAD_UNKNOWN,
    DIGEST_INVALID,
    MANIFEST_BLOB_UNKNOWN,
    MANIFEST_INVALID,
    MANIFEST_TOO_LARGE,
    MANIFEST_UNKNOWN,
    NAME_INVALID,
    NAME_UNKNOWN,
    SIZE_INVALID,
    UNSUPPORTED,
    QUERY_INVALID,
    METHOD_NOT_ALLOWED,
    ENDPOINT_UNKNOWN,
    URL_INVALID,
    RANGE_INVALID,
    TOO_MANY_REQUESTS,
    UNAVAILABLE,
    UNKNOWN,
    TAG_INVALID,
    UNAUTHORIZED,
    DENIED,
    DELETE_DISABLED,
    PAGINATION_NUMBER_INVALID,
)


class ApiError(Exception):
    """A failure the client is told about, in the spec's terms.

    `detail` is any JSON value that helps the client (or an operator reading the
    log) see what was wrong; `headers` are added to the error response, such as
    ``Content-Range`` on a 416 or ``Allow`` on a 405.
    """

    def __init__(
        self,
        error: ErrorCode,
        detail: JSON = None,
        *,
        message: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(error.code, message or error.message, detail)
        self.error = error
        self.message = message or error.message
        self.detail = detail
        self.headers: Mapping[str, str] = dict(headers or {})

    @property
    def status(self) -> int:
        """The HTTP status of the response."""
        return self.error.status

    def __str__(self) -> str:
        return f"{self.error.code}: {self.message} ({self.detail!r})"


def error_body(error: ApiError) -> bytes:
    """The spec's JSON error document for one error."""
    entry: dict[str, JSON] = {"code": error.error.code, "message": error.message}
    if error.detail is not None:
        entry["detail"] = error.detail
    return json.dumps({"errors": [entry]}, sort_keys=True).encode("utf-8")


# Reason phrases twisted.web does not know; it would send "Unknown Status".
_REASONS = {429: b"Too Many Requests"}


def render_error(request: Request, error: ApiError) -> bytes:
    """Set the status and headers of an error response; return its body."""
    body = error_body(error)
    request.setResponseCode(error.status, _REASONS.get(error.status))
    headers = request.responseHeaders
    for name, value in error.headers.items():
        headers.setRawHeaders(name, [value])
    headers.setRawHeaders(b"Content-Type", [b"application/json"])
    headers.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
    return body


def api_error_for(exception: BaseException | None) -> ApiError | None:
    """The client's view of an exception, or None when it is a bug of ours."""
    if isinstance(exception, ApiError):
        return exception

    if isinstance(exception, BlobUnknown):
        return ApiError(BLOB_UNKNOWN, str(exception) or None)

    if isinstance(exception, DigestMismatch):
        return ApiError(DIGEST_INVALID, str(exception) or None)

    if isinstance(exception, UploadFailed):
        return ApiError(
            UNAVAILABLE,
            str(exception) or None,
            message="the upload failed: a chunk could not be stored; "
            "start the upload again",
        )

    if isinstance(exception, StorageUnavailable):
        return ApiError(
            UNAVAILABLE,
            str(exception) or None,
            message="too few storage nodes answered; retry later",
        )

    if isinstance(exception, HTTPException) and exception.code == 405:
        return ApiError(METHOD_NOT_ALLOWED)

    if isinstance(exception, HTTPException) and exception.code == 404:
        return ApiError(ENDPOINT_UNKNOWN)

    return None
