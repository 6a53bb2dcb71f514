"""Tests of manifest parsing and validation, one media type at a time."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from treescale.registry.errors import ApiError
from treescale.registry.manifests import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    media_type_of,
    parse_manifest,
)

CONFIG = Descriptor("application/vnd.oci.image.config.v1+json", "sha256:" + "c" * 64, 7)
LAYER = Descriptor(
    "application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + "1" * 64, 9
)
CHILD = Descriptor(OCI_MANIFEST, "sha256:" + "d" * 64, 300)


def descriptor(entry: Descriptor) -> dict[str, object]:
    """The JSON form of a descriptor."""
    return {"mediaType": entry.media_type, "digest": entry.digest, "size": entry.size}


def image(**fields: object) -> dict[str, object]:
    """An OCI image manifest, with fields replaced or added."""
    document: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(CONFIG),
        "layers": [descriptor(LAYER)],
    }
    document.update(fields)
    return {key: value for key, value in document.items() if value is not None}


def index(**fields: object) -> dict[str, object]:
    """An OCI index, with fields replaced or added."""
    document: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor(CHILD)],
    }
    document.update(fields)
    return {key: value for key, value in document.items() if value is not None}


def encode(document: object) -> bytes:
    """A manifest's bytes."""
    return json.dumps(document).encode()


def refused(data: bytes, content_type: str | None) -> tuple[str, int, object]:
    """The code, status and detail a manifest is refused with."""
    with pytest.raises(ApiError) as raised:
        parse_manifest(data, content_type)
    return raised.value.error.code, raised.value.status, raised.value.detail


def test_oci_image_manifest_lists_config_and_layers() -> None:
    """An OCI image manifest references its config and layers as blobs."""
    manifest = parse_manifest(encode(image()), OCI_MANIFEST)
    assert manifest.media_type == OCI_MANIFEST
    assert manifest.blobs == (CONFIG, LAYER)
    assert manifest.manifests == ()
    assert manifest.subject is None


def test_media_type_from_content_type_when_field_absent() -> None:
    """Without a mediaType field (as umoci pushes) the Content-Type gives the type."""
    manifest = parse_manifest(encode(image(mediaType=None)), OCI_MANIFEST)
    assert manifest.media_type == OCI_MANIFEST


def test_media_type_from_field_when_no_content_type() -> None:
    """Without a Content-Type the field gives the type."""
    assert parse_manifest(encode(image()), None).media_type == OCI_MANIFEST


def test_content_type_parameters_are_ignored() -> None:
    """Parameters on the Content-Type do not change the media type."""
    manifest = parse_manifest(encode(image()), OCI_MANIFEST + "; charset=utf-8")
    assert manifest.media_type == OCI_MANIFEST
    assert media_type_of(" Application/JSON ; q=1") == "application/json"
    assert media_type_of(None) is None
    assert media_type_of("") is None


def test_field_and_content_type_must_agree() -> None:
    """A mediaType field that differs from the Content-Type is MANIFEST_INVALID."""
    code, status, _ = refused(encode(image()), DOCKER_MANIFEST)
    assert (code, status) == ("MANIFEST_INVALID", 400)


def test_no_media_type_at_all_is_invalid() -> None:
    """A manifest with neither a mediaType field nor a Content-Type is invalid."""
    code, status, _ = refused(encode(image(mediaType=None)), None)
    assert (code, status) == ("MANIFEST_INVALID", 400)


@pytest.mark.parametrize(
    "media_type",
    [
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/json",
        "application/vnd.oci.artifact.manifest.v1+json",
    ],
)
def test_unsupported_media_types(media_type: str) -> None:
    """Media types other than the four supported are 415 UNSUPPORTED."""
    code, status, detail = refused(encode(image(mediaType=None)), media_type)
    assert (code, status) == ("UNSUPPORTED", 415)
    assert isinstance(detail, dict)
    assert detail["mediaType"] == media_type


def test_docker_schema2_manifest() -> None:
    """A Docker schema 2 manifest references its config and layers."""
    document = image(mediaType=DOCKER_MANIFEST)
    manifest = parse_manifest(encode(document), DOCKER_MANIFEST)
    assert manifest.media_type == DOCKER_MANIFEST
    assert manifest.blobs == (CONFIG, LAYER)


def test_oci_index_lists_child_manifests() -> None:
    """An OCI index references its manifests, not blobs."""
    manifest = parse_manifest(encode(index()), OCI_INDEX)
    assert manifest.media_type == OCI_INDEX
    assert manifest.blobs == ()
    assert manifest.manifests == (CHILD,)


def test_docker_manifest_list() -> None:
    """A Docker manifest list references its manifests."""
    document = index(mediaType=DOCKER_MANIFEST_LIST)
    manifest = parse_manifest(encode(document), DOCKER_MANIFEST_LIST)
    assert manifest.media_type == DOCKER_MANIFEST_LIST
    assert manifest.manifests == (CHILD,)


def test_subject_is_extracted() -> None:
    """A subject descriptor is returned apart from the blobs."""
    manifest = parse_manifest(encode(image(subject=descriptor(CHILD))), None)
    assert manifest.subject == CHILD
    assert CHILD not in manifest.blobs


def test_index_subject_is_extracted() -> None:
    """An index may carry a subject too."""
    assert parse_manifest(encode(index(subject=descriptor(CHILD))), None).subject == (
        CHILD
    )


def test_nondistributable_layers_need_not_exist() -> None:
    """Foreign (nondistributable) layers are not among the blobs to check."""
    foreign = Descriptor(
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "sha256:" + "f" * 64,
        5,
    )
    document = image(layers=[descriptor(LAYER), descriptor(foreign)])
    assert parse_manifest(encode(document), None).blobs == (CONFIG, LAYER)


def test_empty_layers_are_allowed() -> None:
    """An artifact manifest may have no layers."""
    assert parse_manifest(encode(image(layers=[])), None).blobs == (CONFIG,)


def test_annotations_must_be_strings() -> None:
    """Annotations that are not a map of strings are invalid."""
    assert parse_manifest(encode(image(annotations={"a": "b"})), None)
    code, _, detail = refused(encode(image(annotations={"a": 1})), None)
    assert code == "MANIFEST_INVALID"
    assert detail == {"field": "annotations", "reason": "must map strings to strings"}


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (image(schemaVersion=1), "schemaVersion"),
        (image(schemaVersion=True), "schemaVersion"),
        (image(schemaVersion=None), "schemaVersion"),
        (image(config=None), "config"),
        (image(config="x"), "config"),
        (image(layers=None), "layers"),
        (image(layers={}), "layers"),
        (image(layers=[{"digest": LAYER.digest, "size": 1}]), "layers[0].mediaType"),
        (image(layers=[{**descriptor(LAYER), "digest": "x"}]), "layers[0].digest"),
        (image(layers=[{**descriptor(LAYER), "size": -1}]), "layers[0].size"),
        (image(layers=[{**descriptor(LAYER), "size": "1"}]), "layers[0].size"),
        (image(layers=[{**descriptor(LAYER), "size": False}]), "layers[0].size"),
        (image(mediaType=5), "mediaType"),
        (image(subject="x"), "subject"),
        (index(manifests=None), "manifests"),
        (index(manifests=[{**descriptor(CHILD), "digest": 3}]), "manifests[0].digest"),
    ],
)
def test_malformed_fields(document: dict[str, object], field: str) -> None:
    """Each malformed field is MANIFEST_INVALID, naming the field."""
    code, status, detail = refused(encode(document), None)
    assert (code, status) == ("MANIFEST_INVALID", 400)
    assert isinstance(detail, dict)
    assert detail["field"] == field


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b'"x"', b"\xff\xfe", b"null"])
def test_not_a_json_object(data: bytes) -> None:
    """Bytes that are not a JSON object are MANIFEST_INVALID."""
    code, status, _ = refused(data, OCI_MANIFEST)
    assert (code, status) == ("MANIFEST_INVALID", 400)


def test_size_limit() -> None:
    """A manifest past the size limit is 413 SIZE_INVALID, before it is parsed."""
    data = encode(image())
    assert parse_manifest(data, None, max_size=len(data)).blobs
    with pytest.raises(ApiError) as raised:
        parse_manifest(data, None, max_size=len(data) - 1)
    assert (raised.value.error.code, raised.value.status) == ("SIZE_INVALID", 413)


@given(st.binary(max_size=200))
def test_hostile_bytes_are_refused_cleanly(data: bytes) -> None:
    """Any bytes either parse or raise the spec's error, never anything else."""
    try:
        parse_manifest(data, OCI_MANIFEST)
    except ApiError as error:
        assert error.status in (400, 413, 415)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    ["schemaVersion", "mediaType", "config", "layers", "size", "digest"]
                ),
                inner,
                max_size=4,
            )
        ),
        max_leaves=12,
    )
)
def test_hostile_json_is_refused_cleanly(document: object) -> None:
    """Any JSON either parses or raises the spec's error, never anything else."""
    try:
        parse_manifest(encode(document), OCI_MANIFEST)
    except ApiError as error:
        assert error.status in (400, 415)
