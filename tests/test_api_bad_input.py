"""Every bad input gets a 4xx with a message that says what is wrong, and leaves the workspace exactly as it was:
same files (name, size, content hash) and same database rows before and after."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from helpers_bad_input import (
    DICOM,
    GOOD_NIFTI,
    LABELS,
    SHAPE,
    assert_refused,
    make_api,
    needs_dicom,
    nifti_bytes,
    zip_bytes,
)


def dicom_members(folder: Path, prefix: str) -> dict[str, bytes]:
    return {f"{prefix}/{f.name}": f.read_bytes() for f in sorted(folder.iterdir())}


@pytest.fixture
def api(tmp_path):
    api = make_api(tmp_path)
    yield api
    api.client.__exit__(None, None, None)


# ------------------------------------------------------------------ uploads: bad files


def test_corrupt_file(api):
    assert_refused(api, lambda: api.upload("scan.nii.gz", b"this is not a medical image" * 40), 422, "scan.nii.gz")


def test_truncated_gzip(api):
    assert_refused(api, lambda: api.upload("scan.nii.gz", GOOD_NIFTI[: len(GOOD_NIFTI) // 2]), 422, "truncated")


def test_truncated_uncompressed_nifti(api):
    raw = gzip.decompress(GOOD_NIFTI)
    assert_refused(api, lambda: api.upload("scan.nii", raw[: len(raw) - 500]), 422, "scan.nii")


def test_2d_image(api):
    data = nifti_bytes(np.zeros((16, 16), dtype=np.int16))
    assert_refused(api, lambda: api.upload("flat.nii.gz", data), 422, "3D")


def test_4d_image(api):
    data = nifti_bytes(np.zeros((8, 8, 8, 3), dtype=np.int16))
    assert_refused(api, lambda: api.upload("series.nii.gz", data), 422, "3D")


def test_nan_voxels(api):
    array = np.zeros(SHAPE, dtype=np.float32)
    array[1, 2, 3] = np.nan
    assert_refused(api, lambda: api.upload("nan.nii.gz", nifti_bytes(array)), 422, "nan")


def test_empty_file(api):
    assert_refused(api, lambda: api.upload("empty.nii.gz", b""), 422, "empty")


def test_unsupported_extension(api):
    assert_refused(api, lambda: api.upload("scan.mha", GOOD_NIFTI), 422, "scan.mha")


@pytest.mark.parametrize("name", ["../x.nii.gz", "a/b.nii.gz", "..\\x.nii.gz", "/etc/x.nii.gz"])
def test_file_name_with_a_path(api, name):
    assert_refused(api, lambda: api.upload(name, GOOD_NIFTI), 422, "name")


def test_zip_without_dicom(api):
    data = zip_bytes({"readme.txt": b"no images here", "notes/more.txt": b"still none"})
    assert_refused(api, lambda: api.upload("study.zip", data), 422, "dicom")


def test_zip_with_several_series(api):
    needs_dicom()
    members = {
        **dicom_members(DICOM / "study1_hippocampus_crop", "a"),
        **dicom_members(DICOM / "study2_hippocampus_crop", "b"),
    }
    assert_refused(api, lambda: api.upload("two.zip", zip_bytes(members)), 422, "series")


def test_zip_with_path_traversal_member(api):
    needs_dicom()
    members = dicom_members(DICOM / "study1_hippocampus_crop", "series")
    members["../../evil.dcm"] = next(iter(members.values()))
    assert_refused(api, lambda: api.upload("evil.zip", zip_bytes(members)), 422)
    assert not (api.root.parent / "evil.dcm").exists()


def test_corrupt_zip(api):
    data = zip_bytes({"x.dcm": b"DICM" * 100})[:-30]
    assert_refused(api, lambda: api.upload("broken.zip", data), 422, "broken.zip")


# ------------------------------------------------------------------ uploads: size limits


def test_upload_over_the_size_limit(tmp_path):
    api = make_api(tmp_path, max_upload_mb=0.01)  # 10 KiB
    try:
        big = np.random.default_rng(1).integers(0, 30000, size=(40, 40, 40)).astype(np.int16)
        detail = assert_refused(api, lambda: api.upload("big.nii.gz", nifti_bytes(big)), 413, "limit")
        assert "SLICEWISE_MAX_UPLOAD_MB" in detail
        assert list((api.root / "tmp" / "uploads").iterdir()) == []
    finally:
        api.client.__exit__(None, None, None)


def test_upload_over_the_size_limit_without_content_length(tmp_path):
    api = make_api(tmp_path, max_upload_mb=0.01)
    try:
        boundary = "sw-boundary"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.nii"\r\n\r\n'.encode()
            + b"\0" * 50_000
            + f"\r\n--{boundary}--\r\n".encode()
        )

        def chunks():
            for start in range(0, len(body), 4096):
                yield body[start : start + 4096]

        def send():
            return api.client.post(
                f"/api/projects/{api.project_id}/volumes",
                content=chunks(),
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )

        assert_refused(api, send, 413, "limit")
    finally:
        api.client.__exit__(None, None, None)


def test_zip_expanding_over_the_limit(tmp_path):
    api = make_api(tmp_path, max_expanded_mb=0.01)
    try:
        data = zip_bytes({"bomb/1.dcm": b"\0" * 2_000_000})
        assert_refused(api, lambda: api.upload("bomb.zip", data), 413)
    finally:
        api.client.__exit__(None, None, None)


# ------------------------------------------------------------------ uploads: bad requests


def test_upload_not_multipart(api):
    send = lambda: api.client.post(
        f"/api/projects/{api.project_id}/volumes",
        content=GOOD_NIFTI,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert_refused(api, send, 422, "multipart")


def test_upload_without_file_field(api):
    send = lambda: api.client.post(f"/api/projects/{api.project_id}/volumes", files={"image": ("a.nii.gz", GOOD_NIFTI)})
    assert_refused(api, send, 422, "file")


def test_upload_field_without_file_name(api):
    send = lambda: api.client.post(f"/api/projects/{api.project_id}/volumes", data={"file": "just text"})
    assert_refused(api, send, 422, "file")


def test_malformed_multipart(api):
    send = lambda: api.client.post(
        f"/api/projects/{api.project_id}/volumes",
        content=b"garbage without boundaries",
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert_refused(api, send, 422)


def test_upload_into_unknown_project(api):
    assert_refused(api, lambda: api.upload("good.nii.gz", GOOD_NIFTI, project_id=999), 404, "project", "999")


# ------------------------------------------------------------------ unknown ids and bad slice requests


@pytest.mark.parametrize(
    "path, words",
    [
        ("/api/projects/999", ["project", "999"]),
        ("/api/projects/999/volumes", ["project", "999"]),
        ("/api/volumes/999", ["volume", "999"]),
        ("/api/volumes/999/slices/0/0.png", ["volume", "999"]),
        ("/api/no/such/route", ["no such endpoint"]),
    ],
)
def test_unknown_ids(api, path, words):
    assert_refused(api, lambda: api.client.get(path), 404, *words)


@pytest.mark.parametrize(
    "query, status, words",
    [
        ("slices/3/0.png", 422, ["axis", "0, 1 or 2"]),
        ("slices/-1/0.png", 422, ["axis"]),
        ("slices/0/12.png", 422, ["index", "0..11"]),
        ("slices/2/-1.png", 422, ["index"]),
        ("slices/x/0.png", 422, ["axis", "integer"]),
        ("slices/0/1.5.png", 422, ["index", "integer"]),
        ("slices/0/1.png?window=0", 422, ["window", "positive"]),
        ("slices/0/1.png?window=-5&level=3", 422, ["window", "positive"]),
        ("slices/0/1.png?window=nan", 422, ["window"]),
        ("slices/0/1.png?window=wide", 422, ["window"]),
        ("slices/0/1.png?level=inf", 422, ["level", "finite"]),
    ],
)
def test_bad_slice_requests(api, query, status, words):
    assert_refused(api, lambda: api.client.get(f"/api/volumes/{api.volume_id}/{query}"), status, *words)


# ------------------------------------------------------------------ projects


@pytest.mark.parametrize(
    "body, words",
    [
        ({"name": "", "labels": LABELS}, ["name"]),
        ({"name": "   ", "labels": LABELS}, ["name"]),
        ({"labels": LABELS}, ["name"]),
        ({"name": "X"}, ["labels"]),
        ({"name": "X", "labels": []}, ["labels"]),
        ({"name": "X", "labels": [{"value": 0, "name": "bg", "color": "#000000"}]}, ["value"]),
        ({"name": "X", "labels": [{"value": 255, "name": "x", "color": "#000000"}]}, ["value"]),
        ({"name": "X", "labels": [{"value": 1, "name": "a", "color": "red"}]}, ["color"]),
        (
            {
                "name": "X",
                "labels": [
                    {"value": 1, "name": "a", "color": "#ff0000"},
                    {"value": 1, "name": "b", "color": "#00ff00"},
                ],
            },
            ["unique"],
        ),
        ({"name": "X", "labels": LABELS, "colour": "#fff"}, ["colour"]),
    ],
)
def test_bad_project(api, body, words):
    assert_refused(api, lambda: api.client.post("/api/projects", json=body), 422, *words)


def test_project_body_not_json(api):
    send = lambda: api.client.post("/api/projects", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_refused(api, send, 422)


def test_duplicate_project_name(api):
    assert_refused(api, lambda: api.client.post("/api/projects", json={"name": "P", "labels": LABELS}), 409, "exists")
