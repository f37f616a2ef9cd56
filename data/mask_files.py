"""Reading a mask volume made elsewhere (NIfTI, NRRD, MetaImage, Slicer .seg.nrrd, DICOM-SEG) onto a volume's grid.

The mask must lie on the volume's voxel grid: the same directions and spacing, and an origin a whole number of
voxels away (Slicer may save a segmentation cropped to its extent); nothing is resampled. Its values become
label values of the project: a plain label map's values must be in the label map; segments of a
.seg.nrrd or DICOM-SEG are matched by name, then (.seg.nrrd only) by label value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.errors import InvalidInput
from data.itk_image import itk_affine, itk_array, itk_kind, read_itk_image
from data.nifti import read_nifti
from data.volume import IGNORE, Volume

GRID_TOLERANCE = 1e-3  # in voxels
MASK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".seg.nrrd", ".dcm")


def read_mask_file(path: Path, filename: str, like: Volume, labels: list[dict], max_bytes: int | None) -> np.ndarray:
    """The mask as uint8 label values on like's grid (0 outside a cropped mask)."""
    path, lower = Path(path), filename.lower()
    if lower.endswith(".dcm"):
        return _dicom_seg_mask(path, filename, like, labels)
    if lower.endswith((".nii", ".nii.gz")):
        mask = read_nifti(path, filename, max_bytes)
        return place_on_grid(_plain_label_map(mask.array, labels, filename), mask.affine, like, filename)
    if itk_kind(filename) in ("nrrd", "mha"):
        image = read_itk_image(path, filename, max_bytes, vector=True)
        keys = set(image.GetMetaDataKeys())
        if "Segment0_Name" in keys or "Segment0_LabelValue" in keys:
            array = _slicer_segments(image, keys, labels, filename)
        else:
            array = itk_array(image, filename)
            if array.ndim != 3:
                raise InvalidInput(
                    f"{filename}: a label map has one value per voxel, this file has "
                    f"{array.shape[-1]} (a .seg.nrrd names its segments in its header)"
                )
            array = _plain_label_map(array, labels, filename)
        return place_on_grid(array, itk_affine(image, filename), like, filename)
    raise InvalidInput(
        f"{filename}: a mask must be NIfTI (.nii, .nii.gz), NRRD (.nrrd, .seg.nrrd), MetaImage "
        "(.mha) or DICOM-SEG (.dcm)"
    )


def place_on_grid(array: np.ndarray, affine: np.ndarray, like: Volume, name: str) -> np.ndarray:
    """Copy a mask onto like's grid; refuse one whose voxels do not coincide with the volume's."""
    array = np.asarray(array, dtype=np.uint8)  # label values, checked by the caller
    if array.ndim != 3:
        raise InvalidInput(f"{name}: a mask must be 3D, got shape {array.shape}")
    to_volume = np.linalg.inv(like.affine) @ np.asarray(affine, dtype=np.float64)
    offset = to_volume[:3, 3]
    if not np.allclose(to_volume[:3, :3], np.eye(3), atol=GRID_TOLERANCE) or not np.allclose(
        offset, np.round(offset), atol=GRID_TOLERANCE
    ):
        raise InvalidInput(
            f"{name}: the mask's geometry (orientation, spacing or origin) does not match the "
            "volume's voxel grid; export it on the volume's grid (no resampling is done)"
        )
    start = np.round(offset).astype(int)
    stop = start + np.array(array.shape)
    if (start < 0).any() or (stop > np.array(like.shape)).any():
        raise InvalidInput(
            f"{name}: the mask (shape {array.shape} at voxel {tuple(start)}) reaches outside the "
            f"volume of shape {like.shape}"
        )
    out = np.zeros(like.shape, dtype=np.uint8)
    out[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]] = array
    return out


def _integer_values(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype.kind == "f":
        if not np.array_equal(array, np.round(array)):
            raise InvalidInput(f"{name}: a mask must hold whole-number label values, this one has fractions")
    elif array.dtype.kind not in "biu":
        raise InvalidInput(f"{name}: a mask must hold integer label values, got {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise InvalidInput(f"{name}: mask values must be between 0 and 255, got {array.min()}..{array.max()}")
    return array.astype(np.uint8)


def _plain_label_map(array: np.ndarray, labels: list[dict], name: str) -> np.ndarray:
    array = _integer_values(np.asarray(array), name)
    allowed = {int(item["value"]) for item in labels} | {0, IGNORE}
    unknown = sorted({int(v) for v in np.unique(array)} - allowed)
    if unknown:
        raise InvalidInput(
            f"{name}: the mask holds values {unknown} that are not in the project's label map "
            f"(allowed: {sorted(allowed)})"
        )
    return array


def label_for_segment(segment_name: str, labels: list[dict]) -> int | None:
    wanted = str(segment_name).strip().lower()
    for item in labels:
        if str(item["name"]).strip().lower() == wanted:
            return int(item["value"])
    return None


def _slicer_segments(image, keys: set[str], labels: list[dict], name: str) -> np.ndarray:
    """A Slicer segmentation (one or several layers) -> one label map in the project's values."""
    layers = itk_array(image, name)
    layers = layers[..., None] if layers.ndim == 3 else layers
    layers = _integer_values(layers, name)
    values = {int(item["value"]) for item in labels}
    out = np.zeros(layers.shape[:3], dtype=np.uint8)
    number = 0
    while f"Segment{number}_Name" in keys or f"Segment{number}_LabelValue" in keys:

        def meta(field: str, default: str = "") -> str:
            key = f"Segment{number}_{field}"  # noqa: B023 (called within this iteration)
            return image.GetMetaData(key).strip() if key in keys else default

        segment = meta("Name", f"Segment_{number + 1}")
        try:
            value_in_file, layer = int(meta("LabelValue", "1")), int(meta("Layer", "0"))
        except ValueError:
            raise InvalidInput(f"{name}: segment {segment!r} has a non-numeric label value or layer") from None
        if not 0 <= layer < layers.shape[3]:
            raise InvalidInput(f"{name}: segment {segment!r} is on layer {layer}, the file has {layers.shape[3]}")
        value = label_for_segment(segment, labels)
        if value is None and value_in_file in values:
            value = value_in_file
        if value is None:
            raise InvalidInput(
                f"{name}: segment {segment!r} (label value {value_in_file}) matches no label of the "
                f"project ({', '.join(repr(item['name']) for item in labels)}); rename it"
            )
        out[layers[..., layer] == value_in_file] = value
        number += 1
    return out


def _dicom_seg_mask(path: Path, name: str, like: Volume, labels: list[dict]) -> np.ndarray:
    import highdicom as hd

    if like.source != "dicom":
        raise InvalidInput(f"{name}: a DICOM-SEG can only be imported onto a volume uploaded as DICOM")
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # pydicom/highdicom raise many types for files that are not a SEG
        raise InvalidInput(f"{name}: not a readable DICOM-SEG ({exc})") from exc
    sources = like.meta.get("sop_instance_uids") or []
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    if not referenced & set(sources):
        raise InvalidInput(f"{name}: the DICOM-SEG does not reference the images of this volume")
    numbers, values = [], []
    for description in seg.SegmentSequence:
        value = label_for_segment(description.SegmentLabel, labels)
        if value is None:
            raise InvalidInput(
                f"{name}: segment {description.SegmentLabel!r} matches no label of the project "
                f"({', '.join(repr(item['name']) for item in labels)}); rename it"
            )
        numbers.append(int(description.SegmentNumber))
        values.append(value)
    try:
        if like.meta.get("multiframe"):  # one enhanced source: frames by source frame number, in slice order
            frames = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=sources[0],
                source_frame_numbers=like.meta["frame_numbers"],
                segment_numbers=numbers,
                assert_missing_frames_are_empty=True,
                ignore_spatial_locations=True,
            )
        else:
            frames = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=sources,
                segment_numbers=numbers,
                combine_segments=False,
                assert_missing_frames_are_empty=True,
                ignore_spatial_locations=True,
            )
    except (ValueError, RuntimeError, KeyError) as exc:
        raise InvalidInput(f"{name}: cannot map the DICOM-SEG's frames onto the volume's slices ({exc})") from exc
    out = np.zeros(like.shape, dtype=np.uint8)
    for position, value in enumerate(values):
        out[np.asarray(frames[..., position]).transpose(2, 1, 0) > 0] = value
    return out


def painted_masks(labels: np.ndarray, axis: int) -> list[tuple[int, np.ndarray]]:
    """(index, mask) of every slice along `axis` with any voxel that is neither background nor IGNORE."""
    labels = np.asarray(labels)
    other = tuple(a for a in range(3) if a != axis)
    labelled = ((labels != 0) & (labels != IGNORE)).any(axis=other)
    out = []
    for index in np.flatnonzero(labelled):
        where: list = [slice(None)] * 3
        where[axis] = int(index)
        out.append((int(index), np.ascontiguousarray(labels[tuple(where)])))
    return out
