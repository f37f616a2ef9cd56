"""DICOM -> Volume -> DICOM-SEG, read back with highdicom: frame of reference, references, positions, pixels."""

from __future__ import annotations

import shutil
import subprocess
import zipfile

import highdicom as hd
import numpy as np
import pytest

from data.errors import InvalidInput
from data.io import read_upload, read_volume, write_mask, write_mask_dicom_seg

LABELS = [
    {"value": 1, "name": "anterior", "color": "#ff0000"},
    {"value": 2, "name": "posterior", "color": "#00ff00"},
    {"value": 5, "name": "lesion", "color": "#0000ff"},
]


def sparse_mask(shape) -> np.ndarray:
    """Labels 1, 2 and 5 on a few slices only (so empty frames are omitted), nothing elsewhere."""
    mask = np.zeros(shape, np.uint8)
    i, j, k = shape
    mask[i // 4 : i // 2, j // 4 : j // 2, 1:3] = 1
    mask[i // 2 : i - 2, j // 3 : j - 3, 2] = 2
    mask[2:6, 3:9, k - 2] = 5
    return mask


def seg_frames(seg, volume):
    """Per frame: (slice k in the volume, segment number, image position, binary pixels as (rows, cols))."""
    uids = volume.meta["sop_instance_uids"]
    shared = seg.SharedFunctionalGroupsSequence[0]
    frames = []
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        identification = (item if "SegmentIdentificationSequence" in item else shared).SegmentIdentificationSequence
        number = int(identification[0].ReferencedSegmentNumber)
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        frames.append((uids.index(source), number, position, seg.pixel_array[f]))
    return frames


def rebuild_mask(seg, volume) -> np.ndarray:
    value_of = {
        int(s.SegmentNumber): next(label["value"] for label in LABELS if label["name"] == s.SegmentLabel)
        for s in seg.SegmentSequence
    }
    rebuilt = np.zeros(volume.shape, np.uint8)
    for k, number, _, pixels in seg_frames(seg, volume):
        rebuilt[:, :, k][pixels.T > 0] = value_of[number]
    return rebuilt


@pytest.mark.parametrize("series", ["study3_t1_post_contrast", "study1_hippocampus_crop"])
def test_dicom_seg_reads_back_with_geometry_and_pixels(series, shared_data, tmp_path):
    volume = read_volume(shared_data / "dicom" / series)
    mask = sparse_mask(volume.shape)
    path = write_mask_dicom_seg(mask, volume, tmp_path / "mask.dcm", labels=LABELS)
    seg = hd.seg.segread(path)

    assert seg.Modality == "SEG"
    assert seg.FrameOfReferenceUID == volume.meta["frame_of_reference_uid"]
    assert seg.StudyInstanceUID == volume.meta["study_uid"]
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [volume.meta["series_uid"]]
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(volume.meta["sop_instance_uids"])
    assert seg.SegmentationType == "BINARY"

    segments = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    assert [segments[n].SegmentLabel for n in sorted(segments)] == ["anterior", "posterior", "lesion"]
    for description in segments.values():
        assert description.SegmentAlgorithmType == "SEMIAUTOMATIC"
        assert description.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "slicewise"

    frames = seg_frames(seg, volume)
    value_of = {1: 1, 2: 2, 3: 5}
    expected = {
        (k, number)
        for number, value in value_of.items()
        for k in range(volume.shape[2])
        if (mask[:, :, k] == value).any()
    }
    assert {(k, number) for k, number, _, _ in frames} == expected  # empty frames omitted, no frame missing
    for k, _, position, _ in frames:
        assert np.allclose(position, volume.meta["slice_positions"][k], atol=1e-3)
    for number in value_of:  # within a segment, frames follow the order of the source files
        ks = [k for k, n, _, _ in frames if n == number]
        assert ks == sorted(ks)
    assert np.array_equal(rebuild_mask(seg, volume), mask)

    # highdicom's own decoding agrees: per source instance, pixels hold segment numbers
    by_source = seg.get_pixels_by_source_instance(
        volume.meta["sop_instance_uids"], combine_segments=True, assert_missing_frames_are_empty=True
    )
    as_segments = np.select([mask == 1, mask == 2, mask == 5], [1, 2, 3], 0)
    assert np.array_equal(by_source, as_segments.transpose(2, 1, 0))


@pytest.mark.parametrize("series", ["study3_t1_post_contrast", "study2_hippocampus_crop"])
def test_dicom_seg_passes_dciodvfy(series, shared_data, tmp_path):
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed; cannot validate the DICOM-SEG")
    volume = read_volume(shared_data / "dicom" / series)
    path = write_mask(sparse_mask(volume.shape), volume, tmp_path / "mask.dcm", format="dicom-seg")
    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    report = result.stdout + result.stderr
    errors = [line for line in report.splitlines() if "Error" in line]
    assert errors == [], report


def test_manual_algorithm_type_and_unnamed_labels(shared_data, tmp_path):
    volume = read_volume(shared_data / "dicom" / "study2_hippocampus_crop")
    mask = np.zeros(volume.shape, np.uint8)
    mask[3:9, 4:10, 5] = 3
    seg = hd.seg.segread(write_mask_dicom_seg(mask, volume, tmp_path / "m.dcm", algorithm_type="MANUAL"))
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "label 3"
    assert [k for k, _, _, _ in seg_frames(seg, volume)] == [5]
    assert segment.SegmentAlgorithmType == "MANUAL"
    assert segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "slicewise"


def test_seg_from_an_uploaded_zip_reads_sources_from_the_zip(shared_data, tmp_path):
    folder = shared_data / "dicom" / "study1_hippocampus_crop"
    archive = tmp_path / "s.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in folder.iterdir():
            z.write(f, "series/" + f.name)
    volume = read_upload(archive, "s.zip", 2**26)
    mask = sparse_mask(volume.shape)
    seg = hd.seg.segread(write_mask_dicom_seg(mask, volume, tmp_path / "m.dcm", labels=LABELS))
    assert seg.FrameOfReferenceUID == volume.meta["frame_of_reference_uid"]
    assert np.array_equal(rebuild_mask(seg, volume), mask)


def test_seg_refuses_bad_requests(shared_data, tiny_nifti, tmp_path):
    volume = read_volume(shared_data / "dicom" / "study1_hippocampus_crop")
    with pytest.raises(InvalidInput, match="no labelled voxels"):
        write_mask_dicom_seg(np.zeros(volume.shape, np.uint8), volume, tmp_path / "m.dcm")
    with pytest.raises(InvalidInput, match="shape"):
        write_mask_dicom_seg(np.ones((2, 2, 2), np.uint8), volume, tmp_path / "m.dcm")
    with pytest.raises(InvalidInput, match="MANUAL or SEMIAUTOMATIC"):
        write_mask_dicom_seg(sparse_mask(volume.shape), volume, tmp_path / "m.dcm", algorithm_type="AUTOMATIC")
    with pytest.raises(InvalidInput, match="colour"):
        write_mask_dicom_seg(
            sparse_mask(volume.shape), volume, tmp_path / "m.dcm", labels=[{"value": 1, "color": "red"}]
        )
    nifti_volume = read_volume(tiny_nifti())
    with pytest.raises(InvalidInput, match="imported from DICOM"):
        write_mask_dicom_seg(np.ones(nifti_volume.shape, np.uint8), nifti_volume, tmp_path / "m.dcm")
    assert list(tmp_path.glob("m*")) == []
