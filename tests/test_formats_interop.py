"""NRRD / MetaImage import through the API with exact geometry, including the oblique DICOM series.

The reference geometry comes from SimpleITK reading the DICOM series itself (LPS), not from slicewise's
readers; each format is written by SimpleITK, uploaded, and read back from the workspace.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SHARED_DATA, SHARED_DATA_MISSING, oblique_affine
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from data.io import read_volume
from data.itk_image import image_like

OBLIQUE = SHARED_DATA / "dicom" / "study3_t1_post_contrast"
LABELS = [{"value": 1, "name": "liver", "color": "#e6194b"}, {"value": 2, "name": "tumor", "color": "#3cb44b"}]


def oblique_series() -> sitk.Image:
    if not OBLIQUE.is_dir():
        pytest.skip(SHARED_DATA_MISSING)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(OBLIQUE)))
    return reader.Execute()


def expected_affine(image: sitk.Image) -> np.ndarray:
    """voxel -> RAS from SimpleITK's own index -> LPS mapping, point by point (no shared helper)."""
    corners = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
    lps = [np.array(image.TransformIndexToPhysicalPoint(c)) for c in corners]
    ras = [p * [-1, -1, 1] for p in lps]
    affine = np.eye(4)
    affine[:3, 3] = ras[0]
    for axis in range(3):
        affine[:3, axis] = ras[axis + 1] - ras[0]
    return affine


def write_formats(image: sitk.Image, folder: Path) -> dict[str, tuple[str, bytes]]:
    """{format: (upload file name, bytes)}: .nrrd, .mha, and .nhdr/.mhd zipped with their data file."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for suffix in ("nrrd", "mha"):
        sitk.WriteImage(image, str(folder / f"scan.{suffix}"), useCompression=suffix == "nrrd")
        out[suffix] = (f"scan.{suffix}", (folder / f"scan.{suffix}").read_bytes())
    for suffix in ("nhdr", "mhd"):
        sub = folder / suffix
        sub.mkdir()
        sitk.WriteImage(image, str(sub / f"scan.{suffix}"))
        zip_path = folder / f"{suffix}.zip"
        with zipfile.ZipFile(zip_path, "w") as archive:
            for member in sub.iterdir():
                archive.write(member, member.name)
        assert len(list(sub.iterdir())) == 2  # the header and its separate data file
        out[suffix] = (f"scan_{suffix}.zip", zip_path.read_bytes())
    return out


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(Settings(workspace=tmp_path / "ws", demo=False))) as client:
        project = client.post("/api/projects", json={"name": "p", "labels": LABELS}).json()
        client.project_id = project["id"]
        yield client


@pytest.mark.parametrize("fmt", ["nrrd", "mha", "nhdr", "mhd"])
def test_oblique_series_in_each_format_keeps_its_geometry(fmt, client, tmp_path):
    image = oblique_series()
    name, data = write_formats(image, tmp_path / "files")[fmt]
    r = client.post(f"/api/projects/{client.project_id}/volumes", files={"file": (name, data)})
    assert r.status_code == 201, r.text
    volume = r.json()
    assert volume["source"] == "itk"
    assert np.allclose(volume["affine"], expected_affine(image), atol=1e-6)
    assert volume["shape"] == list(image.GetSize())
    dicom = read_volume(OBLIQUE)
    assert np.allclose(volume["affine"], dicom.affine, atol=1e-6)
    assert volume["orientation"] == dicom.orientation

    ws = client.app.state.workspace
    stored = ws.load_volume(volume["id"])
    assert np.allclose(stored.affine, dicom.affine, atol=1e-6)
    assert np.array_equal(stored.array, dicom.array)
    assert np.array_equal(ws.volume_array(volume["id"]), dicom.array)


def test_synthetic_oblique_float_volume_round_trips_exactly(client, tmp_path):
    array = np.random.default_rng(3).normal(size=(9, 7, 5)).astype(np.float32)
    affine = oblique_affine()
    path = tmp_path / "vol.nrrd"
    sitk.WriteImage(image_like(array, affine), str(path))
    r = client.post(f"/api/projects/{client.project_id}/volumes", files={"file": ("vol.nrrd", path.read_bytes())})
    assert r.status_code == 201, r.text
    assert np.allclose(r.json()["affine"], affine, atol=1e-9)
    assert np.array_equal(client.app.state.workspace.volume_array(r.json()["id"]), array)


def test_prediction_mask_of_an_nrrd_volume_is_written_in_its_geometry(tmp_path):
    import nibabel as nib

    from data.io import write_mask

    image = oblique_series()
    sitk.WriteImage(image, str(tmp_path / "scan.mha"))
    volume = read_volume(tmp_path / "scan.mha")
    mask = (np.arange(np.prod(volume.shape)).reshape(volume.shape) % 3).astype(np.uint8)
    written = nib.load(write_mask(mask, volume, tmp_path / "mask.nii.gz"))
    assert np.allclose(written.affine, expected_affine(image), atol=1e-3)
    assert np.array_equal(np.asanyarray(written.dataobj), mask)


# ------------------------------------------------------------------ hostile NRRD / MetaImage uploads


def _nrrd_header(data_file: str | None, extra: str = "") -> bytes:
    lines = [
        "NRRD0004",
        "type: uint8",
        "dimension: 3",
        "sizes: 4 4 4",
        "encoding: raw",
        "endian: little",
        "space: left-posterior-superior",
        "space directions: (1,0,0) (0,1,0) (0,0,1)",
        "space origin: (0,0,0)",
    ]
    if data_file is not None:
        lines.append(f"data file: {data_file}")
    return ("\n".join(lines) + extra + "\n\n").encode()


SECRET = b"\x07" * 64


@pytest.fixture
def api(tmp_path):
    from helpers_bad_input import make_api

    api = make_api(tmp_path)
    yield api
    api.client.__exit__(None, None, None)


@pytest.mark.parametrize(
    "name, body, words",
    [
        ("evil.nrrd", _nrrd_header("/etc/hostname"), ["separate data file"]),
        ("evil.nrrd", _nrrd_header("../secret.raw"), ["separate data file"]),
        ("evil.nhdr", _nrrd_header("scan.raw"), ["zip"]),
        (
            "evil.mha",
            b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_UCHAR\n"
            b"ElementDataFile = /etc/hostname\n",
            ["separate data file"],
        ),
        ("short.nrrd", _nrrd_header(None) + b"\x00" * 10, ["voxel data"]),
        ("huge.nrrd", _nrrd_header(None).replace(b"sizes: 4 4 4", b"sizes: 60000 60000 60000"), ["limit"]),
        ("flat.nrrd", _nrrd_header(None).replace(b"sizes: 4 4 4", b"sizes: 4 4 1") + b"\x00" * 16, ["3d"]),
        ("notnrrd.nrrd", b"hello world\n\n" + b"\x00" * 64, ["nrrd"]),
        ("nohdr.mha", b"\x00" * 128, ["metaimage"]),
    ],
)
def test_hostile_itk_uploads_are_refused_and_change_nothing(api, name, body, words, tmp_path):
    from helpers_bad_input import assert_refused

    (tmp_path / "secret.raw").write_bytes(SECRET)
    assert_refused(api, lambda: api.upload(name, body), (413, 422), name, *words)


@pytest.mark.parametrize(
    "members, words",
    [
        ({"scan.nhdr": _nrrd_header("../secret.raw")}, ["plain file name"]),
        ({"scan.nhdr": _nrrd_header("/etc/hostname")}, ["plain file name"]),
        ({"scan.nhdr": _nrrd_header("missing.raw")}, ["missing"]),
        ({"scan.nhdr": _nrrd_header("LIST")}, ["missing"]),
        ({"a.nhdr": _nrrd_header("a.raw"), "b.mhd": b"ElementDataFile = b.raw\n", "a.raw": b"\x00" * 64}, ["headers"]),
    ],
)
def test_hostile_header_zips_are_refused(api, members, words):
    from helpers_bad_input import assert_refused, zip_bytes

    assert_refused(api, lambda: api.upload("scan.zip", zip_bytes(members)), 422, "scan.zip", *words)


# ------------------------------------------------------------------ enhanced multi-frame DICOM


def multiframe_of(series: Path):
    import highdicom as hd
    import pydicom

    legacy = [pydicom.dcmread(p) for p in sorted(series.iterdir())]
    return hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=legacy,
        series_instance_uid=hd.UID(),
        series_number=99,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )


def test_enhanced_multiframe_dicom_keeps_the_oblique_geometry(client, tmp_path):
    from helpers_bad_input import zip_bytes

    oblique_series()  # skips without the shared data
    enhanced = multiframe_of(OBLIQUE)
    assert int(enhanced.NumberOfFrames) == 22
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path)
    r = client.post(
        f"/api/projects/{client.project_id}/volumes",
        files={"file": ("enhanced.zip", zip_bytes({"enhanced.dcm": path.read_bytes()}))},
    )
    assert r.status_code == 201, r.text
    volume = r.json()
    single_frames = read_volume(OBLIQUE)
    assert volume["source"] == "dicom" and volume["shape"] == list(single_frames.shape)
    assert np.allclose(volume["affine"], single_frames.affine, atol=1e-4)
    assert np.allclose(volume["affine"], expected_affine(oblique_series()), atol=1e-4)
    assert np.array_equal(client.app.state.workspace.volume_array(volume["id"]), single_frames.array)
    assert volume["meta"]["series_uid"] == str(enhanced.SeriesInstanceUID)


def test_multiframe_with_repeated_positions_is_refused(api, tmp_path):
    from helpers_bad_input import assert_refused, zip_bytes

    oblique_series()
    enhanced = multiframe_of(OBLIQUE)
    first = enhanced.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient
    enhanced.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0].ImagePositionPatient = first
    path = tmp_path / "stacks.dcm"
    enhanced.save_as(path)
    body = zip_bytes({"stacks.dcm": path.read_bytes()})
    assert_refused(api, lambda: api.upload("stacks.zip", body), 422, "same position")


def test_dicom_seg_of_a_multiframe_volume_with_shuffled_frames_round_trips(tmp_path):
    import shutil
    import subprocess

    import pydicom

    from data.dicom_seg import write_mask_dicom_seg
    from data.mask_files import read_mask_file

    oblique_series()
    enhanced = multiframe_of(OBLIQUE)
    order = np.random.default_rng(5).permutation(int(enhanced.NumberOfFrames))
    pixels = enhanced.pixel_array[order]
    enhanced.PerFrameFunctionalGroupsSequence = [enhanced.PerFrameFunctionalGroupsSequence[i] for i in order]
    enhanced.PixelData = np.ascontiguousarray(pixels).tobytes()
    (tmp_path / "src").mkdir()
    enhanced.save_as(tmp_path / "src" / "e.dcm")
    volume = read_volume(tmp_path / "src")
    single_frames = read_volume(OBLIQUE)
    assert np.allclose(volume.affine, single_frames.affine, atol=1e-4)
    assert np.array_equal(volume.array, single_frames.array)  # sorted along the normal again

    mask = np.zeros(volume.shape, np.uint8)
    mask[100:150, 120:160, 5] = 1
    mask[130:140, 140:150, 11] = 2
    labels = [{"value": 1, "name": "liver", "color": "#ff0000"}, {"value": 2, "name": "tumor", "color": "#00ff00"}]
    path = write_mask_dicom_seg(mask, volume, tmp_path / "seg.dcm", labels=labels)
    seg = pydicom.dcmread(path)
    first = seg.PerFrameFunctionalGroupsSequence[0]
    referenced_frame = int(first.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
    position = first.PlanePositionSequence[0].ImagePositionPatient
    source_frame = enhanced.PerFrameFunctionalGroupsSequence[referenced_frame - 1]
    assert np.allclose(position, source_frame.PlanePositionSequence[0].ImagePositionPatient)
    assert np.array_equal(read_mask_file(path, "seg.dcm", volume, labels, None), mask)
    if shutil.which("dciodvfy"):
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        assert [line for line in (report.stdout + report.stderr).splitlines() if "Error" in line] == []
