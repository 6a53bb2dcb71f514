"""Tests of the registry's pure parsers: names, digests, ranges, routes, errors."""

# Twisted's and treq's test helpers carry no annotations yet.
# mypy: disable-error-code="no-untyped-call"

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from treescale.registry import errors
from treescale.registry.errors import ApiError, error_body, render_error
from treescale.registry.names import (
    check_digest,
    check_name,
    is_digest_like,
    is_tag,
    is_well_formed_digest,
)
from treescale.registry.ranges import (
    ByteRange,
    parse_content_range,
    parse_range,
    upload_range,
)
from treescale.registry.routes import Endpoint, Route, parse_route

SHA = "sha256:" + "a" * 64


def code_of(error: pytest.ExceptionInfo[ApiError]) -> tuple[str, int]:
    """The spec code and status of a raised error."""
    return error.value.error.code, error.value.status


@pytest.mark.parametrize(
    "name",
    ["a", "library/ubuntu", "a/b/c/d", "a.b_c__d-e--f", "0/1", "x" * 255],
)
def test_valid_names_pass(name: str) -> None:
    """Names in the spec's grammar, up to the length limit, are accepted."""
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "A", "a/", "/a", "a//b", "a..b", "a___b", "-a", "a-", "a/B", "a b", "x" * 256],
)
def test_invalid_names_fail(name: str) -> None:
    """Names outside the grammar or too long are NAME_INVALID."""
    with pytest.raises(ApiError) as raised:
        check_name(name)
    assert code_of(raised) == ("NAME_INVALID", 400)


def test_name_limit_is_a_setting() -> None:
    """The length limit is the caller's: a shorter one refuses a longer name."""
    assert check_name("abcd", max_length=4) == "abcd"
    with pytest.raises(ApiError):
        check_name("abcde", max_length=4)


@pytest.mark.parametrize("tag", ["latest", "v1.0", "_x", "A-b_c.d", "a" * 128])
def test_valid_tags(tag: str) -> None:
    """Tags in the spec's grammar are tags."""
    assert is_tag(tag)


@pytest.mark.parametrize("tag", ["", ".x", "-x", "a" * 129, "a:b", "a/b", "a b"])
def test_invalid_tags(tag: str) -> None:
    """Anything else is not a tag."""
    assert not is_tag(tag)


def test_digest_like_references_hold_a_colon() -> None:
    """A reference with a colon means to be a digest; a tag cannot hold one."""
    assert is_digest_like(SHA)
    assert not is_digest_like("latest")


def test_sha256_digest_accepted() -> None:
    """A sha256 digest of 64 lowercase hex digits is accepted as is."""
    assert check_digest(SHA) == SHA


@pytest.mark.parametrize(
    "digest",
    ["sha256:" + "A" * 64, "sha256:" + "a" * 63, "sha256:", "sha256", "md5:x:y", ""],
)
def test_malformed_digests_are_digest_invalid(digest: str) -> None:
    """Malformed digests, including uppercase sha256 hex, are DIGEST_INVALID."""
    with pytest.raises(ApiError) as raised:
        check_digest(digest)
    assert code_of(raised) == ("DIGEST_INVALID", 400)


def test_sha512_digests_are_storable() -> None:
    """sha512 digests of 128 lowercase hex digits are taken; other lengths are not."""
    digest = "sha512:" + "a" * 128
    assert check_digest(digest) == digest
    with pytest.raises(ApiError) as raised:
        check_digest("sha512:" + "a" * 64)
    assert code_of(raised) == ("DIGEST_INVALID", 400)


def test_other_algorithms_are_digest_invalid_naming_the_algorithm() -> None:
    """A well-formed digest of an unknown algorithm is refused, saying why."""
    digest = "md5:" + "a" * 32
    assert is_well_formed_digest(digest)
    with pytest.raises(ApiError) as raised:
        check_digest(digest)
    assert code_of(raised) == ("DIGEST_INVALID", 400)
    assert raised.value.detail == {
        "digest": digest,
        "reason": "unsupported algorithm md5",
    }


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-3", 10, ByteRange(0, 4)),
        ("bytes=5-", 10, ByteRange(5, 10)),
        ("bytes=-3", 10, ByteRange(7, 10)),
        ("bytes=-30", 10, ByteRange(0, 10)),
        ("bytes=2-100", 10, ByteRange(2, 10)),
        ("bytes=9-9", 10, ByteRange(9, 10)),
        ("BYTES=1-2", 10, ByteRange(1, 3)),
    ],
)
def test_satisfiable_ranges(
    header: str | None, size: int, expected: ByteRange | None
) -> None:
    """Single ranges of each form are read, clamped to the blob's end."""
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=10-", 10),
        ("bytes=10-12", 10),
        ("bytes=4-2", 10),
        ("bytes=-0", 10),
        ("bytes=-", 10),
        ("bytes=0-1,3-4", 10),
        ("items=0-1", 10),
        ("bytes=a-b", 10),
        ("bytes=0-0", 0),
    ],
)
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    """Ranges past the end, reversed, multiple or malformed are 416 RANGE_INVALID."""
    with pytest.raises(ApiError) as raised:
        parse_range(header, size)
    assert code_of(raised) == ("RANGE_INVALID", 416)
    assert raised.value.headers == {"Content-Range": f"bytes */{size}"}


def test_content_range_of_a_206() -> None:
    """A range's Content-Range names its first and last byte and the total."""
    assert ByteRange(2, 5).content_range(10) == "bytes 2-4/10"
    assert ByteRange(2, 5).length == 3


@pytest.mark.parametrize(
    ("header", "expected"),
    [("0-9", (0, 9)), ("10-10", (10, 10)), ("bytes 3-4/10", (3, 4)), ("5-6/*", (5, 6))],
)
def test_chunk_content_ranges(header: str, expected: tuple[int, int]) -> None:
    """An upload chunk's Content-Range gives its first and last byte, inclusive."""
    assert parse_content_range(header) == expected


@pytest.mark.parametrize("header", ["", "5", "a-b", "9-3", "-3", "0-"])
def test_bad_chunk_content_ranges(header: str) -> None:
    """Malformed or reversed chunk ranges are 416 BLOB_UPLOAD_INVALID."""
    with pytest.raises(ApiError) as raised:
        parse_content_range(header)
    assert code_of(raised) == ("BLOB_UPLOAD_INVALID", 416)


def test_upload_range_reports_last_byte() -> None:
    """An upload reports 0-<last byte>, and 0-0 before any byte."""
    assert upload_range(0) == "0-0"
    assert upload_range(1) == "0-0"
    assert upload_range(10) == "0-9"


@pytest.mark.parametrize(
    ("path", "route"),
    [
        (b"/v2/", Route(Endpoint.VERSION)),
        (b"/v2", Route(Endpoint.VERSION)),
        (b"/v2/a/b/tags/list", Route(Endpoint.TAGS, "a/b")),
        (b"/v2/a/blobs/uploads/", Route(Endpoint.UPLOAD_START, "a")),
        (b"/v2/a/blobs/uploads", Route(Endpoint.UPLOAD_START, "a")),
        (b"/v2/a/b/c/blobs/uploads/u-1", Route(Endpoint.UPLOAD, "a/b/c", "u-1")),
        (b"/v2/a/b/blobs/" + SHA.encode(), Route(Endpoint.BLOB, "a/b", SHA)),
        (b"/v2/a/blobs/sha256%3Aab", Route(Endpoint.BLOB, "a", "sha256:ab")),
        (b"/v2/a/manifests/latest", Route(Endpoint.MANIFEST, "a", "latest")),
        (b"/v2/x/blobs/blobs/d", Route(Endpoint.BLOB, "x/blobs", "d")),
        (b"/v2/x/manifests/manifests/t", Route(Endpoint.MANIFEST, "x/manifests", "t")),
        (b"/v2/blobs/d", Route(Endpoint.BLOB, "", "d")),
    ],
)
def test_routes(path: bytes, route: Route) -> None:
    """Paths are read from the right: the tail names the endpoint, the rest the name."""
    assert parse_route(path) == route


@pytest.mark.parametrize(
    "path",
    [b"/", b"/v1/", b"/v2/a", b"/v2/a/blobs/", b"/v2/a/manifests/", b"/v2/a/\xff/x"],
)
def test_paths_naming_no_endpoint(path: bytes) -> None:
    """Paths that name no endpoint of the spec have no route."""
    assert parse_route(path) is None


@given(st.binary(max_size=64))
def test_any_path_parses_or_is_refused(tail: bytes) -> None:
    """Hostile paths never raise: they route somewhere or nowhere."""
    route = parse_route(b"/v2/" + tail)
    assert route is None or isinstance(route.endpoint, Endpoint)


@pytest.mark.parametrize("code", errors.ERROR_CODES, ids=lambda code: code.message)
def test_every_error_code_renders_the_spec_body(code: errors.ErrorCode) -> None:
    """Every registry entry renders its status and the spec's JSON error body."""
    request = Request(DummyChannel())
    body = render_error(request, ApiError(code, {"why": "test"}))
    assert request.code == code.status
    assert request.responseHeaders.getRawHeaders("Content-Type") == ["application/json"]
    assert json.loads(body) == {
        "errors": [
            {"code": code.code, "message": code.message, "detail": {"why": "test"}}
        ]
    }


def test_error_codes_match_the_brief() -> None:
    """The main codes carry the statuses the spec and the brief give them."""
    statuses = {(code.code, code.status) for code in errors.ERROR_CODES}
    assert {
        ("BLOB_UNKNOWN", 404),
        ("BLOB_UPLOAD_INVALID", 400),
        ("BLOB_UPLOAD_UNKNOWN", 404),
        ("DIGEST_INVALID", 400),
        ("MANIFEST_BLOB_UNKNOWN", 400),
        ("MANIFEST_INVALID", 400),
        ("MANIFEST_UNKNOWN", 404),
        ("NAME_INVALID", 400),
        ("NAME_UNKNOWN", 404),
        ("SIZE_INVALID", 400),
        ("UNSUPPORTED", 415),
        ("UNSUPPORTED", 405),
        ("RANGE_INVALID", 416),
        ("TOOMANYREQUESTS", 429),
        ("UNAVAILABLE", 503),
    } <= statuses


def test_error_without_detail_omits_it() -> None:
    """The optional detail field is left out when there is none."""
    body = error_body(ApiError(errors.BLOB_UNKNOWN, message="gone"))
    assert json.loads(body) == {"errors": [{"code": "BLOB_UNKNOWN", "message": "gone"}]}


def test_error_headers_reach_the_response() -> None:
    """Headers an error carries are set on its response."""
    request = Request(DummyChannel())
    render_error(
        request, ApiError(errors.RANGE_INVALID, headers={"Content-Range": "x"})
    )
    assert request.responseHeaders.getRawHeaders("Content-Range") == ["x"]
