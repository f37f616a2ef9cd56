"""Writing a label mask as a DICOM-SEG that references the source images of a volume read from DICOM."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom

from data.atomic import atomic_write
from data.errors import InvalidInput
from data.label_mask import as_label_mask
from data.segment_codes import segment_codes
from data.volume import IGNORE, Volume


def write_mask_dicom_seg(
    mask: np.ndarray,
    like: Volume,
    path: str | Path,
    labels: list[dict] | None = None,
    *,
    algorithm_type: str = "SEMIAUTOMATIC",
    model_version: str | None = None,
) -> Path:
    """Write a DICOM-SEG (BINARY, one segment per label value present) referencing like's source images.

    Segments are numbered 1..N in increasing label value; IGNORE (255) voxels count as background.
    `labels` ([{"value", "name", "color"}]) names and colours segments (a name such as "liver" or "tumor"
    also gives the segment its SNOMED CT concept, data.segment_codes); algorithm_type is MANUAL or
    SEMIAUTOMATIC (a prediction corrected by a person); both name slicewise as the algorithm, with
    model_version (the model version that predicted it) in the algorithm's version and the content description.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if like.source != "dicom":
        raise InvalidInput("DICOM-SEG export needs a volume imported from DICOM; use NIfTI for this volume")
    if algorithm_type not in ("MANUAL", "SEMIAUTOMATIC"):
        raise InvalidInput(f"algorithm type must be MANUAL or SEMIAUTOMATIC, got {algorithm_type!r}")
    mask = as_label_mask(mask, like)
    values = [int(v) for v in np.unique(mask) if v not in (0, IGNORE)]
    if not values:
        raise InvalidInput("the mask has no labelled voxels; a DICOM-SEG needs at least one segment")
    by_value = {int(item["value"]): item for item in (labels or [])}

    segment_numbers = np.zeros(256, dtype=np.uint8)
    for number, value in enumerate(values, start=1):
        segment_numbers[value] = number
    # frame k of the SEG is slice k of the volume as a DICOM image: rows = j (y), columns = i (x)
    frames = np.ascontiguousarray(segment_numbers[mask].transpose(2, 1, 0))
    if like.meta.get("multiframe"):  # one enhanced source: SEG frames follow the source's frame order
        in_source_order = np.empty_like(frames)
        in_source_order[np.asarray(like.meta["frame_numbers"]) - 1] = frames
        frames = in_source_order

    version = _version() if model_version is None else f"{_version()} model {model_version}"[:64]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="slicewise", family=codes.cid7162.ArtificialIntelligence, version=version
    )
    descriptions = []
    for number, value in enumerate(values, start=1):
        item = by_value.get(value, {})
        category, concept = segment_codes(str(item.get("name") or ""))
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=str(item.get("name") or f"label {value}")[:64],
                segmented_property_category=category,
                segmented_property_type=concept,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues[algorithm_type],
                algorithm_identification=algorithm,
                display_color=_hex_to_cielab(item["color"]) if item.get("color") else None,
            )
        )
    seg = hd.seg.Segmentation(
        source_images=_source_datasets(like),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="slicewise",
        manufacturer_model_name="slicewise",
        software_versions=_version(),
        device_serial_number="0",
        content_label="SLICEWISE",
        content_description="slicewise segmentation" + ("" if model_version is None else f", model {model_version}"),
        series_description="slicewise segmentation",
    )
    if not like.meta.get("multiframe"):
        _order_frames_like_sources(seg, like.meta["sop_instance_uids"])
    path = Path(path)
    with atomic_write(path) as tmp:
        seg.save_as(tmp)
    return path


def _order_frames_like_sources(seg, sop_instance_uids: list[str]) -> None:
    """Reorder SEG frames by (segment, source slice k); highdicom sorts them along its own normal instead.

    Frame order is free in a SEG without DimensionOrganizationType; every per-frame item (positions,
    dimension index values, source reference) travels with its frame, so only the order changes.
    """
    from pydicom.pixels import pack_bits, unpack_bits

    if seg.get("DimensionOrganizationType") or seg.SegmentationType != "BINARY":
        return
    items = list(seg.PerFrameFunctionalGroupsSequence)
    shared = seg.SharedFunctionalGroupsSequence[0]
    slice_of = {uid: k for k, uid in enumerate(sop_instance_uids)}

    def key(f: int) -> tuple[int, int]:
        item = items[f]
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        segment = (item if "SegmentIdentificationSequence" in item else shared).SegmentIdentificationSequence
        return int(segment[0].ReferencedSegmentNumber), slice_of[source]

    order = sorted(range(len(items)), key=key)
    if order == list(range(len(items))):
        return
    per_frame = int(seg.Rows) * int(seg.Columns)
    bits = unpack_bits(seg.PixelData)[: per_frame * len(items)].reshape(len(items), per_frame)
    seg.PixelData = pack_bits(np.ascontiguousarray(bits[order]).ravel())
    seg.PerFrameFunctionalGroupsSequence = [items[f] for f in order]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("slicewise")
    except Exception:
        return "0.1.0"


def _hex_to_cielab(color: str):
    from highdicom.color import CIELabColor

    digits = str(color).lstrip("#")
    try:
        if len(digits) != 6:
            raise ValueError
        r, g, b = (int(digits[i : i + 2], 16) for i in (0, 2, 4))
    except ValueError:
        raise InvalidInput(f"colour {color!r} is not #rrggbb") from None
    return CIELabColor.from_rgb(r, g, b)


def _source_datasets(like: Volume) -> list[pydicom.Dataset]:
    files = like.meta.get("source_files") or []
    if len(files) != (1 if like.meta.get("multiframe") else like.shape[2]):
        raise InvalidInput("the volume does not list one source DICOM file per slice")
    zip_path = like.meta.get("source_zip")
    datasets = []
    archive = zipfile.ZipFile(zip_path) if zip_path and not Path(files[0]).is_absolute() else None
    try:
        for file in files:
            if archive is not None:
                datasets.append(pydicom.dcmread(io.BytesIO(archive.read(file))))
            elif Path(file).is_file():
                datasets.append(pydicom.dcmread(file))
            else:
                raise InvalidInput(f"source DICOM file {Path(file).name} is no longer available")
    except (KeyError, OSError, zipfile.BadZipFile) as exc:
        raise InvalidInput(f"source DICOM files are no longer available ({exc})") from exc
    finally:
        if archive is not None:
            archive.close()
    for ds in datasets:
        _fill_missing_type2(ds)
    return datasets


# Patient/study attributes DICOM lets a source leave empty (Type 2) but highdicom reads unconditionally.
_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def _fill_missing_type2(ds: pydicom.Dataset) -> None:
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in ds:
            setattr(ds, keyword, None)
