"""Hostile input through the API, beyond tests/test_api_bad_input.py (which covers corrupt and truncated files,
2D/4D and NaN images, file names with paths, zips without DICOM / with two series / with '../' members, size
limits and bad multipart, project bodies, unknown project and volume ids) and tests/test_retrain_api.py
(mask refusals: wrong size, RGB, values outside the map, stale If-Match).

Here: NIfTI headers that lie (negative, zero and absurd dimensions, data of another size, unreadable voxel
types, broken geometry, an infinite scale factor, an absurd data offset), infinite voxels, gzip and zip bombs
(also one whose zip directory lies about the size), absolute zip member paths, DICOM files without pixel data,
mask PNGs in every wrong mode and one whose header claims 10^10 pixels, JSON bodies over 1 MiB (declared and
streamed), and unknown or absurd ids on every endpoint group. Each answer is a 4xx with a message naming the
problem, never a 500, and the workspace (files and every database row) is exactly as before.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from helpers_bad_input import (
    DICOM,
    LABELS,
    SHAPE,
    Api,
    assert_refused,
    dicom_without_pixels,
    make_api,
    needs_dicom,
    nifti_bytes,
    workspace_snapshot,
    zip_bytes,
)

# byte offsets of NIfTI-1 header fields (little endian, as nibabel writes them)
DIM, DATATYPE, BITPIX, VOX_OFFSET, SCL_SLOPE, SROW_X = 40, 70, 72, 108, 112, 280


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    api = make_api(tmp_path_factory.mktemp("hostile"))
    yield api
    api.client.__exit__(None, None, None)


def raw_nifti(array: np.ndarray | None = None) -> bytearray:
    array = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE) if array is None else array
    return bytearray(nib.Nifti1Image(array, np.diag([1.0, 1.0, 2.0, 1.0])).to_bytes())


def with_fields(**fields) -> bytes:
    """A valid small .nii whose header fields are overwritten: dims=(...), datatype=, vox_offset=, ..."""
    raw = raw_nifti()
    if "dims" in fields:
        dims = fields["dims"]
        struct.pack_into("<8h", raw, DIM, len(dims), *dims, *([1] * (7 - len(dims))))
    if "datatype" in fields:
        struct.pack_into("<h", raw, DATATYPE, fields["datatype"])
    if "vox_offset" in fields:
        struct.pack_into("<f", raw, VOX_OFFSET, fields["vox_offset"])
    if "scl_slope" in fields:
        struct.pack_into("<f", raw, SCL_SLOPE, fields["scl_slope"])
    if "srow" in fields:
        struct.pack_into("<12f", raw, SROW_X, *fields["srow"])
    if "append" in fields:
        raw += fields["append"]
    return bytes(raw)


# ------------------------------------------------------------------ NIfTI headers that lie


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"dims": (-12, 14, 10)}, []),
        ({"dims": (12, -14, 10)}, []),
        ({"dims": (12, 0, 10)}, ["empty"]),
        ({"dims": (0, 0, 0)}, []),
        ({"dims": (32767, 32767, 32767)}, ["limit"]),  # 70 TB of voxels: refused before reading any
        ({"dims": (32767, 32767, 32767, 32767, 32767)}, []),  # 5D and absurd
        ({"dims": (120, 140, 100)}, ["truncated"]),  # header says more than the file holds
        ({"dims": (6, 7, 5)}, ["more"]),  # header says less than the file holds
        ({"dims": (12, 14, 10), "append": b"\0" * 4096}, ["more"]),  # trailing bytes after the voxels
        ({"datatype": 32}, ["voxel type"]),  # complex64
        ({"datatype": 128}, ["voxel type"]),  # RGB24
        ({"datatype": 1234}, []),  # no such code
        ({"vox_offset": 1e9}, ["truncated"]),
        ({"vox_offset": -400.0}, []),
        ({"vox_offset": float("nan")}, []),
        ({"srow": [0.0] * 12}, ["orientation"]),
        ({"srow": [float("nan")] * 12}, ["orientation"]),
    ],
)
@pytest.mark.parametrize("gz", [False, True], ids=["nii", "nii.gz"])
def test_lying_nifti_header(api, fields, words, gz):
    data = with_fields(**fields)
    name = "liar.nii.gz" if gz else "liar.nii"
    detail = assert_refused(api, lambda: api.upload(name, gzip.compress(data) if gz else data), (413, 422), *words)
    assert name in detail, detail  # the message names the file


@pytest.mark.parametrize("slope", [float("inf"), float("nan"), 1e38])
def test_absurd_scale_factor_is_refused_or_read_finite(api, slope):
    """nibabel ignores a non-finite scl_slope (reads the voxels unscaled); a huge finite one makes them inf."""
    before = workspace_snapshot(api.root)
    response = api.upload("scaled.nii", with_fields(scl_slope=slope))
    assert response.status_code in (201, 422), response.text
    if response.status_code == 422:
        assert "infinite" in response.json()["detail"]
        assert workspace_snapshot(api.root) == before
    else:
        volume = response.json()["id"]
        assert api.client.get(f"/api/volumes/{volume}/slices/0/3.png").status_code == 200


def test_infinite_voxels(api):
    array = np.zeros(SHAPE, dtype=np.float32)
    array[3, 4, 5] = np.inf
    assert_refused(api, lambda: api.upload("inf.nii.gz", nifti_bytes(array)), 422, "infinite")
    array[3, 4, 5] = -np.inf
    assert_refused(api, lambda: api.upload("inf.nii", nib.Nifti1Image(array, np.eye(4)).to_bytes()), 422, "infinite")


def test_4d_with_real_time_axis_uncompressed(api):
    data = nib.Nifti1Image(np.zeros((8, 8, 8, 2), dtype=np.int16), np.eye(4)).to_bytes()
    assert_refused(api, lambda: api.upload("fmri.nii", data), 422, "3D")


def test_nifti2_and_analyze_pairs(api):
    nifti2 = nib.Nifti2Image(np.zeros((4, 4), dtype=np.int16), np.eye(4)).to_bytes()
    assert_refused(api, lambda: api.upload("two.nii", nifti2), 422, "3D")
    pair_header = bytearray(raw_nifti()[:348])
    pair_header[344:348] = b"ni1\0"
    assert_refused(api, lambda: api.upload("pair.nii", bytes(pair_header) + b"\0" * 4000), 422, ".hdr/.img")


# ------------------------------------------------------------------ bombs


def test_gzip_bomb(tmp_path):
    api = make_api(tmp_path, max_expanded_mb=1)
    try:
        header = raw_nifti()[:352]
        bomb = gzip.compress(bytes(header) + b"\0" * 60_000_000, compresslevel=9)  # ~60 KB -> 60 MB
        assert len(bomb) < 200_000
        assert_refused(api, lambda: api.upload("bomb.nii.gz", bomb), 413, "limit")
    finally:
        api.client.__exit__(None, None, None)


def lying_zip(real_size: int, declared: int) -> bytes:
    """One member of `real_size` zero bytes whose local and central headers declare `declared` bytes."""
    data = bytearray(zip_bytes({"series/1.dcm": b"\0" * real_size}))
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, declared)
    struct.pack_into("<I", data, central + 24, declared)
    return bytes(data)


@pytest.mark.parametrize("declared", [1000, 0xFFFFFFFF])
def test_zip_bomb_whose_directory_lies(tmp_path, declared):
    api = make_api(tmp_path, max_expanded_mb=1)
    try:
        bomb = lying_zip(30_000_000, declared)
        assert len(bomb) < 100_000
        assert_refused(api, lambda: api.upload("liar.zip", bomb), (413, 422))
        assert not any((api.root / "tmp").glob("import-*"))
    finally:
        api.client.__exit__(None, None, None)


def test_zip_bomb_many_members(tmp_path):
    api = make_api(tmp_path, max_expanded_mb=1)
    try:
        members = {f"s/{n}.dcm": b"\0" * 200_000 for n in range(20)}  # 4 MB from ~20 KB
        assert_refused(api, lambda: api.upload("many.zip", zip_bytes(members)), 413, "limit")
    finally:
        api.client.__exit__(None, None, None)


# ------------------------------------------------------------------ zips with escaping paths and odd content


@pytest.mark.parametrize(
    "member",
    ["/etc/x", "/tmp/slicewise-evil.dcm", "C:/windows/x.dcm", "..\\..\\etc\\x", "series/../../x.dcm", "a/./../../x"],
)
def test_zip_member_escaping_the_archive(api, member):
    needs_dicom()
    members = {f"series/{f.name}": f.read_bytes() for f in sorted((DICOM / "study1_hippocampus_crop").iterdir())}
    members[member] = b"DICM" * 10
    assert_refused(api, lambda: api.upload("evil.zip", zip_bytes(members)), 422, "outside")
    assert not Path("/tmp/slicewise-evil.dcm").exists()


def test_zip_with_a_symlink_member(api):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("series/link.dcm")
        info.external_attr = 0o120777 << 16
        archive.writestr(info, "/etc/passwd")
    assert_refused(api, lambda: api.upload("link.zip", buffer.getvalue()), 422, "link")


def test_dicom_file_without_pixel_data(api):
    needs_dicom()
    files = sorted((DICOM / "study1_hippocampus_crop").iterdir())
    members = {f"series/{f.name}": f.read_bytes() for f in files}
    members[f"series/{files[3].name}"] = dicom_without_pixels(files[3])
    assert_refused(api, lambda: api.upload("gap.zip", zip_bytes(members)), 422, "pixel data")


def test_dicom_series_without_any_pixel_data(api):
    needs_dicom()
    files = sorted((DICOM / "study1_hippocampus_crop").iterdir())
    members = {f"series/{f.name}": dicom_without_pixels(f) for f in files}
    assert_refused(api, lambda: api.upload("nopixels.zip", zip_bytes(members)), 422)


def test_dicom_single_slice_in_a_zip(api):
    needs_dicom()
    first = sorted((DICOM / "study1_hippocampus_crop").iterdir())[0]
    assert_refused(api, lambda: api.upload("one.zip", zip_bytes({"s/1.dcm": first.read_bytes()})), 422, "2D")


# ------------------------------------------------------------------ mask PNGs


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def slice_shape() -> tuple[int, int]:
    return SHAPE[1], SHAPE[2]  # axis 0


def mask_png(mode: str) -> bytes:
    rows, cols = slice_shape()
    base = Image.fromarray(np.zeros((rows, cols), np.uint8), mode="L")
    if mode == "I;16":
        return png_bytes(Image.fromarray(np.zeros((rows, cols), np.uint16), mode="I;16"))
    return png_bytes(base.convert(mode))


def huge_png_header() -> bytes:
    """A PNG whose IHDR claims 100000 x 100000 pixels (10^10), with a few bytes of image data."""
    data = bytearray(mask_png("L"))
    width_height = struct.pack(">II", 100_000, 100_000)
    data[16:24] = width_height
    crc = zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF
    data[29:33] = struct.pack(">I", crc)
    return bytes(data)


def put_mask(api: Api, body: bytes, content_type: str = "image/png", index: int = 3, if_match: str | None = None):
    headers = {"Content-Type": content_type}
    if if_match is not None:
        headers["If-Match"] = if_match
    return api.client.put(f"/api/volumes/{api.volume_id}/annotations/0/{index}", content=body, headers=headers)


@pytest.mark.parametrize("mode", ["1", "LA", "RGBA", "I", "I;16"])
def test_mask_png_in_the_wrong_mode(api, mode):
    assert_refused(api, lambda: put_mask(api, mask_png(mode)), 422, "mode")


@pytest.mark.parametrize("shape", [(1, 1), (SHAPE[2], SHAPE[1]), (SHAPE[1] + 1, SHAPE[2])])
def test_mask_png_of_the_wrong_size(api, shape):
    body = png_bytes(Image.fromarray(np.zeros(shape, np.uint8), mode="L"))
    assert_refused(api, lambda: put_mask(api, body), 422, "slice is")


def test_mask_png_claiming_ten_billion_pixels(api):
    assert_refused(api, lambda: put_mask(api, huge_png_header()), (413, 422))


@pytest.mark.parametrize("value", [3, 7, 254])
def test_mask_label_values_not_in_the_map(api, value):
    mask = np.zeros(slice_shape(), np.uint8)
    mask[2, 3] = value
    palette = Image.fromarray(mask, mode="L").convert("P")
    for body, ctype in (
        (png_bytes(Image.fromarray(mask, mode="L")), "image/png"),
        (png_bytes(palette), "image/png"),
        (mask.tobytes(), "application/octet-stream"),
    ):
        assert_refused(api, lambda: put_mask(api, body, ctype), 422, str(value))


def test_mask_truncated_png(api):
    mask = np.random.default_rng(0).integers(0, 3, slice_shape()).astype(np.uint8)
    body = png_bytes(Image.fromarray(mask, mode="L"))
    for cut in (40, 60, len(body) // 2):  # inside the IHDR chunk, inside the image data
        assert_refused(api, lambda: put_mask(api, body[:cut]), 422)


# ------------------------------------------------------------------ request bodies over the limit


def test_json_body_over_one_mib_is_refused_before_it_is_read(api):
    big = {"name": "x" * (2 * 1024 * 1024), "labels": LABELS}
    assert_refused(api, lambda: api.client.post("/api/projects", json=big), 413, "limit", "1 MB")


def test_json_body_over_one_mib_without_content_length(api):
    chunk = b" " * 65536

    def body():
        yield b'{"name": "streamed", "labels": []'
        for _ in range(40):  # 2.5 MiB of whitespace, no Content-Length (chunked)
            yield chunk
        yield b"}"

    send = lambda: api.client.post("/api/projects", content=body(), headers={"Content-Type": "application/json"})
    assert_refused(api, send, 413, "limit")


@pytest.mark.parametrize("path", ["/api/projects/{p}/train", "/api/volumes/{v}/review/0/3"])
def test_huge_json_on_other_endpoints(api, path):
    url = path.format(p=api.project_id, v=api.volume_id)
    body = json.dumps({"preset": "quick", "comment": "y" * (3 * 1024 * 1024)}).encode()
    send = lambda: api.client.post(url, content=body, headers={"Content-Type": "application/json"})
    assert_refused(api, send, 413, "limit")


def test_deeply_nested_json(api):
    body = b'{"name": "n", "labels": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    send = lambda: api.client.post("/api/projects", content=body, headers={"Content-Type": "application/json"})
    assert_refused(api, send, (400, 413, 422))


def test_raw_mask_body_over_the_limit(api):
    body = b"\0" * (64 * 1024 * 1024 + 1)
    assert_refused(api, lambda: put_mask(api, body, "application/octet-stream"), 413, "limit")


def test_json_body_with_another_content_type(api):
    send = lambda: api.client.post(
        "/api/projects", content=b"x" * (2 * 1024 * 1024), headers={"Content-Type": "text/plain"}
    )
    assert_refused(api, send, 413)


# ------------------------------------------------------------------ unknown and absurd ids on every endpoint group


@pytest.mark.parametrize(
    "method, path, words",
    [
        ("GET", "/api/jobs/999", ["job", "999"]),
        ("POST", "/api/jobs/999/cancel", ["job", "999"]),
        ("GET", "/api/jobs/999/events", ["job", "999"]),
        ("GET", "/api/projects/999/jobs", ["project", "999"]),
        ("POST", "/api/projects/999/train", ["project", "999"]),
        ("GET", "/api/models/999", ["model", "999"]),
        ("GET", "/api/projects/999/models", ["project", "999"]),
        ("POST", "/api/projects/{p}/models/999/activate", ["model", "999"]),
        ("POST", "/api/projects/999/models/1/activate", ["999"]),
        ("GET", "/api/volumes/999/prediction", ["volume", "999"]),
        ("GET", "/api/volumes/999/prediction/slices/0/0.png", ["volume", "999"]),
        ("GET", "/api/volumes/999/prediction.nii.gz", ["volume", "999"]),
        ("GET", "/api/volumes/999/prediction.dcm", ["volume", "999"]),
        ("GET", "/api/projects/999/predictions.zip", ["project", "999"]),
        ("GET", "/api/volumes/999/annotations", ["volume", "999"]),
        ("GET", "/api/volumes/999/annotations/0/0", ["volume", "999"]),
        ("DELETE", "/api/volumes/999/annotations/0/0", ["volume", "999"]),
        ("GET", "/api/volumes/{v}/annotations/0/4", ["no annotation"]),
        ("DELETE", "/api/volumes/{v}/annotations/0/4", ["no annotation"]),
        ("GET", "/api/volumes/999/suggestions", ["volume", "999"]),
        ("GET", "/api/volumes/{v}/prediction/slices/0/0.png", ["no prediction"]),
        ("GET", "/api/projects/{p}/predictions.zip", ["no trained model"]),
        ("GET", "/api/volumes/99999999999999999999999", ["volume"]),
        ("GET", "/api/projects/99999999999999999999999/volumes", ["project"]),
        ("GET", "/api/jobs/-1", ["job"]),
        ("GET", "/api/models/9223372036854775808", ["model"]),
    ],
)
def test_unknown_ids_everywhere(api, method, path, words):
    url = path.format(p=api.project_id, v=api.volume_id)
    assert_refused(api, lambda: api.client.request(method, url), 404, *words)


def test_review_of_unknown_volume_and_without_model(api):
    send = lambda: api.client.post("/api/volumes/999/review/0/0", json={"decision": "accept"})
    assert_refused(api, send, 404, "volume", "999")
    send = lambda: api.client.post(f"/api/volumes/{api.volume_id}/review/0/3", json={"decision": "accept"})
    assert_refused(api, send, 404, "no prediction")


def test_retrain_with_nothing_painted_and_bad_bodies(api):
    url = f"/api/projects/{api.project_id}/train"
    assert_refused(api, lambda: api.client.post(url, json={"preset": "quick"}), 409, "paint")
    assert_refused(api, lambda: api.client.post(url, json={"preset": "huge"}), 422, "preset")
    assert_refused(api, lambda: api.client.post(url, json={"stages": {"finetune": {"epochs": 10**9}}}), 422, "epochs")
    assert_refused(api, lambda: api.client.post(url, json=[1, 2, 3]), 422)


def test_dicom_header_claiming_a_huge_image(api):
    """Found by tests/test_fuzz_uploads.py: Rows/Columns of 65535 made SimpleITK allocate gigabytes (the
    server was OOM-killed). The header is now checked against the pixel data present before reading."""
    needs_dicom()
    files = sorted((DICOM / "study1_hippocampus_crop").iterdir())
    members = {f"series/{f.name}": f.read_bytes() for f in files}
    ds = pydicom.dcmread(files[2])
    ds.Rows, ds.Columns = 65535, 65535
    out = io.BytesIO()
    ds.save_as(out)
    members[f"series/{files[2].name}"] = out.getvalue()
    assert_refused(api, lambda: api.upload("huge.zip", zip_bytes(members)), 422, "65535")
