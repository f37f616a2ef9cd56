"""Reading volumes and writing masks: geometry round trips against independent references, and bad uploads."""

from __future__ import annotations

import gzip
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import SHARED_DATA, SHARED_DATA_MISSING, oblique_affine

import data.dicom_zip as dicom_zip
from data.atomic import atomic_write, atomic_write_bytes
from data.errors import InvalidInput, TooLarge
from data.io import extract_dicom_zip, lps_to_ras_affine, read_upload, read_volume, write_mask
from data.volume import Volume
from helpers_bad_input import dicom_without_pixels, zip_bytes

LIMIT = 50 * 2**20
DICOM_DIR = SHARED_DATA / "dicom"
SERIES = sorted(p.name for p in DICOM_DIR.iterdir() if p.is_dir()) if DICOM_DIR.is_dir() else []
SERIES_PARAMS = SERIES or [pytest.param("missing", marks=pytest.mark.skip(reason=SHARED_DATA_MISSING))]


def random_mask(shape, seed=0, values=(0, 1, 2)) -> np.ndarray:
    return np.random.default_rng(seed).choice(np.array(values, dtype=np.uint8), size=shape)


def sample_voxels(shape, n_random=40, seed=0) -> list[tuple[int, int, int]]:
    corners = [(i, j, k) for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)]
    rng = np.random.default_rng(seed)
    return corners + [tuple(int(rng.integers(0, n)) for n in shape) for _ in range(n_random)]


def voxel_to_world(affine, ijk) -> np.ndarray:
    return (np.asarray(affine) @ np.array([*ijk, 1.0]))[:3]


def zip_folder(folder: Path, zip_path: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, prefix + file.name)
    return zip_path


# ---------------------------------------------------------------------------------------------------------
# NIfTI


def test_nifti_round_trip_keeps_oblique_geometry_codes_and_values(tiny_nifti, tmp_path):
    source = tiny_nifti(shape=(6, 7, 8), qform_code=1, sform_code=2)
    volume = read_volume(source)
    original = nib.load(source)

    assert volume.shape == (6, 7, 8)
    assert volume.source == "nifti"
    assert np.allclose(volume.affine, original.header.get_sform(), atol=1e-6)
    assert not np.allclose(volume.affine[:3, :3], np.diag(np.diag(volume.affine[:3, :3])))  # really oblique
    assert (volume.meta["qform_code"], volume.meta["sform_code"]) == (1, 2)
    assert np.array_equal(volume.array, np.asanyarray(original.dataobj))

    mask = random_mask(volume.shape, values=(0, 1, 2, 7))
    out = write_mask(mask, volume, tmp_path / "mask.nii.gz")
    written = nib.load(out)
    assert written.shape == volume.shape
    assert written.get_data_dtype() == np.uint8
    assert np.array_equal(np.asanyarray(written.dataobj), mask)
    assert np.asanyarray(written.dataobj).dtype == np.uint8
    assert int(written.header["qform_code"]) == 1 and int(written.header["sform_code"]) == 2
    assert np.allclose(written.affine, volume.affine, atol=1e-6)
    assert np.allclose(written.header.get_qform(), original.header.get_qform(), atol=1e-6)
    assert np.allclose(written.header.get_sform(), original.header.get_sform(), atol=1e-6)
    assert read_volume(out).orientation == volume.orientation


def test_nifti_affine_follows_the_codes(tiny_nifti):
    sform = oblique_affine()
    qform = np.diag([2.0, 3.0, 4.0, 1.0])
    qform[:3, 3] = [10, 20, 30]

    both = read_volume(tiny_nifti(name="a.nii.gz", qform_affine=qform, qform_code=1, sform_code=1))
    assert np.allclose(both.affine, sform, atol=1e-5)  # sform wins when its code is set

    qform_only = read_volume(tiny_nifti(name="b.nii.gz", qform_affine=qform, qform_code=1, sform_code=0))
    assert np.allclose(qform_only.affine, qform, atol=1e-5)

    neither = read_volume(tiny_nifti(name="c.nii.gz", qform_affine=qform, qform_code=0, sform_code=0))
    assert not np.allclose(neither.affine, qform) and not np.allclose(neither.affine, sform)
    assert np.allclose(np.abs(np.diag(neither.affine))[:3], [2.0, 3.0, 4.0], atol=1e-5)  # pixdim fallback


def test_nifti_without_codes_round_trips_with_codes_zero(tiny_nifti, tmp_path):
    volume = read_volume(tiny_nifti(qform_code=0, sform_code=0))
    written = nib.load(write_mask(np.zeros(volume.shape, np.uint8), volume, tmp_path / "m.nii"))
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (0, 0)
    assert np.allclose(written.header.get_best_affine(), volume.affine)


def test_float_scaled_source_writes_unscaled_uint8_mask(tmp_path):
    image = nib.Nifti1Image(np.random.default_rng(1).normal(size=(4, 5, 6)).astype(np.float32), oblique_affine())
    image.header.set_slope_inter(2.5, -3.0)
    nib.save(image, tmp_path / "f.nii.gz")
    volume = read_volume(tmp_path / "f.nii.gz")
    mask = random_mask(volume.shape)
    written = nib.load(write_mask(mask, volume, tmp_path / "m.nii.gz"))
    assert np.array_equal(np.asanyarray(written.dataobj), mask)


def test_volume_properties_and_json_summary(tiny_nifti):
    volume = read_volume(tiny_nifti())
    assert volume.spacing == pytest.approx((0.7, 1.3, 2.5), abs=1e-5)
    assert volume.orientation == "".join(nib.aff2axcodes(oblique_affine()))
    summary = json.loads(json.dumps(volume.summary()))
    assert summary["shape"] == [6, 7, 8]
    assert summary["source"] == "nifti" and summary["dtype"] == "int16"
    assert summary["meta"] == {"qform_code": 1, "sform_code": 2}
    assert np.allclose(summary["affine"], volume.affine)


def test_volume_rejects_non_3d_arrays():
    with pytest.raises(ValueError):
        Volume(array=np.zeros((3, 4)), affine=np.eye(4), source="nifti", meta={})


def test_trailing_singleton_dimension_is_squeezed(tiny_nifti, tmp_path):
    volume = read_upload(tiny_nifti(shape=(4, 5, 6, 1)), "t.nii.gz", LIMIT)
    assert volume.shape == (4, 5, 6)
    written = nib.load(write_mask(np.ones(volume.shape, np.uint8), volume, tmp_path / "m.nii.gz"))
    assert written.shape == (4, 5, 6)
    assert np.allclose(written.affine, volume.affine)


def test_hippocampus_nifti_reads(shared_data):
    volume = read_volume(shared_data / "hippocampus" / "imagesTr" / "hippocampus_001.nii.gz")
    assert volume.array.ndim == 3 and volume.spacing == pytest.approx((1, 1, 1))
    json.dumps(volume.summary())


# ---------------------------------------------------------------------------------------------------------
# DICOM geometry


def test_lps_to_ras_flips_x_and_y_only():
    affine = lps_to_ras_affine(np.eye(3).ravel(), (0.5, 2.0, 3.0), (10.0, 20.0, 30.0))
    assert np.allclose(affine, [[-0.5, 0, 0, -10], [0, -2, 0, -20], [0, 0, 3, 30], [0, 0, 0, 1]])


@pytest.mark.parametrize("series", SERIES_PARAMS)
def test_dicom_series_mask_nifti_maps_voxels_where_simpleitk_does(series, shared_data, tmp_path):
    folder = shared_data / "dicom" / series
    volume = read_volume(folder)
    mask = random_mask(volume.shape, seed=3)
    written = nib.load(write_mask(mask, volume, tmp_path / "mask.nii.gz"))

    # reference, computed without data.io: SimpleITK reads the series in LPS
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    reference = reader.Execute()
    assert written.shape == reference.GetSize() == volume.shape
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (1, 1)
    assert np.array_equal(np.asanyarray(written.dataobj), mask)
    for ijk in sample_voxels(volume.shape):
        x, y, z = reference.TransformIndexToPhysicalPoint(ijk)
        expected_ras = np.array([-x, -y, z])
        assert np.allclose(voxel_to_world(written.affine, ijk), expected_ras, atol=1e-3), ijk
        # the qform is a pure rotation; slice positions make the oblique series a hair non-orthogonal, so the
        # qform may be micrometres off (readers use the exact sform, code 1 too)
        assert np.allclose(voxel_to_world(written.header.get_qform(), ijk), expected_ras, atol=0.02), ijk
        assert volume.array[ijk] == reference.GetPixel(ijk)

    # second reference straight from the DICOM headers: slice k's position and in-plane direction cosines
    for k in (0, volume.shape[2] // 2, volume.shape[2] - 1):
        ds = pydicom.dcmread(Path(volume.meta["source_files"][k]), stop_before_pixels=True)
        row_cos, col_cos = np.array(ds.ImageOrientationPatient[:3]), np.array(ds.ImageOrientationPatient[3:])
        row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
        i, j = volume.shape[0] - 1, volume.shape[1] - 1
        lps = np.array(ds.ImagePositionPatient, dtype=float) + i * col_spacing * row_cos + j * row_spacing * col_cos
        assert np.allclose(voxel_to_world(written.affine, (i, j, k)), lps * [-1, -1, 1], atol=1e-3)
        assert ds.SOPInstanceUID == volume.meta["sop_instance_uids"][k]
        assert np.allclose(volume.meta["slice_positions"][k], ds.ImagePositionPatient)


def test_oblique_series_is_really_oblique(shared_data):
    volume = read_volume(shared_data / "dicom" / "study3_t1_post_contrast")
    direction = volume.affine[:3, :3] / np.array(volume.spacing)
    assert not np.allclose(np.abs(direction), np.eye(3), atol=1e-3)
    assert volume.shape == (280, 320, 22)
    assert volume.spacing == pytest.approx((0.6875, 0.6875, 6.5), abs=1e-3)


@pytest.mark.parametrize("series", SERIES_PARAMS)
def test_dicom_meta_is_filled(series, shared_data):
    volume = read_volume(shared_data / "dicom" / series)
    first = pydicom.dcmread(volume.meta["source_files"][0], stop_before_pixels=True)
    assert volume.source == "dicom"
    assert volume.meta["study_uid"] == first.StudyInstanceUID
    assert volume.meta["series_uid"] == first.SeriesInstanceUID
    assert volume.meta["frame_of_reference_uid"] == first.FrameOfReferenceUID
    assert volume.meta["modality"] == "MR"
    n = volume.shape[2]
    assert len(volume.meta["source_files"]) == len(volume.meta["sop_instance_uids"]) == n
    assert len(set(volume.meta["sop_instance_uids"])) == n
    summary = json.loads(json.dumps(volume.summary()))
    assert summary["meta"]["series_uid"] == first.SeriesInstanceUID
    assert "source_files" not in summary["meta"]


@pytest.mark.parametrize("series", ["study1_hippocampus_crop", "study3_t1_post_contrast"])
def test_dicom_zip_reads_like_the_folder(series, shared_data, tmp_path):
    folder = shared_data / "dicom" / series
    from_folder = read_volume(folder)
    archive = zip_folder(folder, tmp_path / "series.zip", prefix="export/nested/")
    for from_zip in (read_volume(archive), read_upload(archive, "series.zip", LIMIT)):
        assert np.array_equal(from_zip.array, from_folder.array)
        assert from_zip.array.dtype == from_folder.array.dtype
        assert np.allclose(from_zip.affine, from_folder.affine)
        for key in ("study_uid", "series_uid", "frame_of_reference_uid", "sop_instance_uids", "slice_positions"):
            assert from_zip.meta[key] == from_folder.meta[key]
        assert [Path(f).name for f in from_zip.meta["source_files"]] == [
            Path(f).name for f in from_folder.meta["source_files"]
        ]


def test_extract_dicom_zip_puts_files_in_an_empty_destination(shared_data, tmp_path):
    archive = zip_folder(shared_data / "dicom" / "study1_hippocampus_crop", tmp_path / "s.zip", prefix="a/")
    (tmp_path / "dest").mkdir()
    out = extract_dicom_zip(archive, tmp_path / "dest", LIMIT)
    assert out == tmp_path / "dest"
    assert len(list((out / "a").iterdir())) == len(list((shared_data / "dicom" / "study1_hippocampus_crop").iterdir()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "s.zip"]


# ---------------------------------------------------------------------------------------------------------
# write_mask errors and atomic writes


def test_write_mask_refuses_wrong_shape_values_and_format(tiny_nifti, tmp_path):
    volume = read_volume(tiny_nifti())
    with pytest.raises(InvalidInput, match="shape"):
        write_mask(np.zeros((2, 2, 2), np.uint8), volume, tmp_path / "m.nii.gz")
    with pytest.raises(InvalidInput, match="between 0 and 255"):
        write_mask(np.full(volume.shape, 300, np.int32), volume, tmp_path / "m.nii.gz")
    with pytest.raises(InvalidInput, match="format"):
        write_mask(np.zeros(volume.shape, np.uint8), volume, tmp_path / "m.nii.gz", format="png")
    with pytest.raises(InvalidInput, match="DICOM"):
        write_mask(np.ones(volume.shape, np.uint8), volume, tmp_path / "m.dcm", format="dicom-seg")
    assert list(tmp_path.glob("m*")) == []


def test_atomic_write_replaces_or_keeps_old_content(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash")
    assert target.read_bytes() == b"old"
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


# ---------------------------------------------------------------------------------------------------------
# bad uploads: each gives the right error and leaves no file behind


def nifti_bytes(shape=(4, 5, 6), dtype=np.int16, data=None) -> bytes:
    data = np.zeros(shape, dtype) if data is None else data
    return nib.Nifti1Image(data, oblique_affine()).to_bytes()


def nifti_header_only(shape) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(shape)
    return header.binaryblock + b"\x00" * 4 + b"\x00" * 64  # vox_offset 352 and a few voxels


def zip_with_link() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo("link.dcm")
        link.external_attr = 0o120777 << 16  # a symlink entry pointing at /etc/passwd
        archive.writestr(link, "/etc/passwd")
    return buffer.getvalue()


def series_members(folder: Path, prefix: str = "") -> dict[str, bytes]:
    return {prefix + f.name: f.read_bytes() for f in sorted(folder.iterdir())}


def bad_uploads():
    """(case id, filename, bytes or builder(shared_data) -> bytes, error type, message fragment, needs data)."""
    good = gzip.compress(nifti_bytes())
    corrupt = bytearray(gzip.compress(nifti_bytes(data=np.arange(120, dtype=np.int16).reshape(4, 5, 6))))
    corrupt[30:40] = b"\xff" * 10
    nan = np.zeros((4, 5, 6), np.float32)
    nan[1, 2, 3] = np.nan
    inf = np.zeros((4, 5, 6), np.float32)
    inf[0, 0, 0] = np.inf
    crop = lambda d: d / "dicom" / "study1_hippocampus_crop"  # noqa: E731
    return [
        ("path-parent", "../x.nii.gz", good, InvalidInput, "plain name", False),
        ("path-slash", "a/x.nii.gz", good, InvalidInput, "plain name", False),
        ("path-backslash", "a\\x.nii.gz", good, InvalidInput, "plain name", False),
        ("no-name", "", good, InvalidInput, "no file name", False),
        ("extension", "x.png", good, InvalidInput, "extension", False),
        ("empty", "x.nii.gz", b"", InvalidInput, "empty", False),
        ("truncated-gzip", "x.nii.gz", good[: len(good) // 2], InvalidInput, "truncated", False),
        ("corrupt-gzip", "x.nii.gz", bytes(corrupt), InvalidInput, "corrupt", False),
        ("not-gzip", "x.nii.gz", b"hello world, not an image", InvalidInput, "not gzip", False),
        ("garbage-nii", "x.nii", os.urandom(2000), InvalidInput, "NIfTI", False),
        ("garbage-zip", "x.zip", os.urandom(2000), InvalidInput, "zip", False),
        ("2d", "x.nii.gz", gzip.compress(nifti_bytes((8, 9))), InvalidInput, "2D", False),
        ("one-slice", "x.nii", nifti_bytes((8, 9, 1)), InvalidInput, "2D", False),
        ("4d", "x.nii.gz", gzip.compress(nifti_bytes((4, 5, 6, 3))), InvalidInput, "dimensions", False),
        ("nan", "x.nii.gz", gzip.compress(nifti_bytes(data=nan)), InvalidInput, "NaN", False),
        ("inf", "x.nii", nifti_bytes(data=inf), InvalidInput, "infinite", False),
        ("absurd-dims", "x.nii", nifti_header_only((5000, 5000, 5000)), TooLarge, "limit", False),
        ("data-short", "x.nii", nifti_header_only((40, 40, 40)), InvalidInput, "truncated", False),
        ("gzip-bomb", "x.nii.gz", gzip.compress(nifti_bytes((200, 200, 200), np.uint8)), TooLarge, "limit", False),
        ("zip-parent", "x.zip", zip_bytes({"../evil.dcm": b"x"}), InvalidInput, "outside", False),
        ("zip-nested-parent", "x.zip", zip_bytes({"a/../../evil.dcm": b"x"}), InvalidInput, "outside", False),
        ("zip-absolute", "x.zip", zip_bytes({"/tmp/evil.dcm": b"x"}), InvalidInput, "outside", False),
        ("zip-link", "x.zip", zip_with_link(), InvalidInput, "link", False),
        ("zip-bomb", "x.zip", zip_bytes({"big.dcm": b"\x00" * (2 * 2**20)}), TooLarge, "limit", False),
        ("zip-empty", "x.zip", zip_bytes({}), InvalidInput, "empty", False),
        ("zip-no-series", "x.zip", zip_bytes({"readme.txt": b"no dicom here"}), InvalidInput, "no DICOM series", False),
        (
            "zip-two-series",
            "x.zip",
            lambda d: zip_bytes(
                series_members(crop(d), "a/") | series_members(d / "dicom" / "study2_hippocampus_crop", "b/")
            ),
            InvalidInput,
            "2 DICOM series",
            True,
        ),
        (
            "zip-missing-pixels",
            "x.zip",
            lambda d: zip_bytes(series_members(crop(d)) | {"5.dcm": dicom_without_pixels(crop(d) / "5.dcm")}),
            InvalidInput,
            "no pixel data",
            True,
        ),
        (
            "zip-missing-slice",
            "x.zip",
            lambda d: zip_bytes({k: v for k, v in series_members(crop(d)).items() if k != "7.dcm"}),
            InvalidInput,
            "evenly spaced",
            True,
        ),
    ]


BAD_UPLOADS = bad_uploads()


@pytest.mark.parametrize(
    "filename,content,error,fragment,needs_data", [case[1:] for case in BAD_UPLOADS], ids=[c[0] for c in BAD_UPLOADS]
)
def test_bad_upload_is_refused_and_leaves_nothing(
    filename, content, error, fragment, needs_data, tmp_path, monkeypatch
):
    if needs_data:
        if not SHARED_DATA.is_dir():
            pytest.skip(SHARED_DATA_MISSING)
        content = content(SHARED_DATA)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    upload = tmp_path / "upload.bin"
    upload.write_bytes(content)

    with pytest.raises(error) as caught:
        read_upload(upload, filename, max_bytes_expanded=2**20)
    assert fragment.lower() in str(caught.value).lower()
    assert list(scratch.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scratch", "upload.bin"]
    assert not (tmp_path.parent / "evil.dcm").exists()


def test_two_series_error_names_both_series(shared_data, tmp_path):
    members = series_members(shared_data / "dicom" / "study1_hippocampus_crop", "a/")
    members |= series_members(shared_data / "dicom" / "study2_hippocampus_crop", "b/")
    (tmp_path / "two.zip").write_bytes(zip_bytes(members))
    with pytest.raises(InvalidInput) as caught:
        read_upload(tmp_path / "two.zip", "two.zip", LIMIT)
    for series in ("study1_hippocampus_crop", "study2_hippocampus_crop"):
        uid = pydicom.dcmread(shared_data / "dicom" / series / "1.dcm", stop_before_pixels=True).SeriesInstanceUID
        assert uid in str(caught.value)


def test_zip_extraction_stops_when_actual_bytes_exceed_the_limit(tmp_path, monkeypatch):
    # declared sizes can lie; the byte count while extracting is the last line of defence
    monkeypatch.setattr(dicom_zip, "_declared_uncompressed_size", lambda members: 0)
    (tmp_path / "z.zip").write_bytes(zip_bytes({"a.dcm": b"\x00" * 3000, "b.dcm": b"\x00" * 3000}))
    with pytest.raises(TooLarge, match="more than the limit"):  # raised while extracting, not from the declared sizes
        extract_dicom_zip(tmp_path / "z.zip", tmp_path / "dest", max_bytes_expanded=4000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.zip"]


def test_failed_extraction_keeps_an_existing_empty_destination(tmp_path):
    (tmp_path / "z.zip").write_bytes(zip_bytes({"ok.dcm": b"1", "../evil.dcm": b"x"}))
    (tmp_path / "dest").mkdir()
    with pytest.raises(InvalidInput):
        extract_dicom_zip(tmp_path / "z.zip", tmp_path / "dest", LIMIT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "z.zip"]
    assert list((tmp_path / "dest").iterdir()) == []


def test_good_upload_leaves_no_temp_files(shared_data, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    archive = zip_folder(shared_data / "dicom" / "study2_hippocampus_crop", tmp_path / "s.zip")
    volume = read_upload(archive, "s.zip", LIMIT)
    assert volume.shape == (36, 48, 35)
    assert list(scratch.iterdir()) == []
