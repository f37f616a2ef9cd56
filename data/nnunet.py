"""An nnU-Net (v2) raw dataset of the painted annotations: dataset.json, imagesTr/, labelsTr/ in one zip.

nnU-Net wants consecutive label values 0..K; the project's values are renumbered in increasing order, and
"not annotated" (IGNORE) becomes nnU-Net's ignore label K+1, so sparse annotation trains as it does here.
Images and labels are NIfTI in the volume's exact geometry (data.nifti writes both the same way).
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

import nibabel as nib
import numpy as np

from data.errors import InvalidInput
from data.nifti import write_nifti_mask
from data.volume import IGNORE, Volume

FILE_ENDING = ".nii.gz"


def label_numbering(labels: list[dict]) -> tuple[dict[str, int], np.ndarray]:
    """(dataset.json "labels", a 256-entry lookup from project values to nnU-Net values)."""
    ordered = sorted(labels, key=lambda item: int(item["value"]))
    lookup = np.zeros(256, dtype=np.uint8)
    names = {"background": 0}
    for number, item in enumerate(ordered, start=1):
        lookup[int(item["value"])] = number
        names[str(item["name"])] = number
    ignore = len(ordered) + 1
    lookup[IGNORE] = ignore
    names["ignore"] = ignore
    return names, lookup


def image_nifti(volume: Volume):
    """The volume as a NIfTI image whose header is the one its masks are written with."""
    header = volume.meta.get("nifti_header") if volume.source == "nifti" else None
    if header is not None:
        header = header.copy()
        header.set_data_dtype(volume.array.dtype)
        image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        return image_class(volume.array, None, header=header)
    image = nib.Nifti1Image(volume.array, volume.affine)
    image.set_qform(volume.affine, code=1)
    image.set_sform(volume.affine, code=1)
    image.header.set_xyzt_units("mm")
    return image


def write_nnunet_zip(
    cases: Iterable[tuple[str, Volume, np.ndarray]], labels: list[dict], name: str, channel: str, path: Path
) -> int:
    """Write the zip from (case id, volume, sparse label volume in project values) -> the number of cases."""
    names, lookup = label_numbering(labels)
    count = 0
    with (
        tempfile.TemporaryDirectory(prefix=".nnunet-", dir=Path(path).parent) as tmp,
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive,
    ):
        for case_id, volume, label_volume in cases:
            image_path = Path(tmp) / f"{case_id}_0000{FILE_ENDING}"
            nib.save(image_nifti(volume), image_path)
            label_path = write_nifti_mask(
                lookup[np.asarray(label_volume, dtype=np.uint8)], volume, Path(tmp) / f"{case_id}{FILE_ENDING}"
            )
            archive.write(image_path, f"imagesTr/{image_path.name}")
            archive.write(label_path, f"labelsTr/{label_path.name}")
            image_path.unlink()
            label_path.unlink()
            count += 1
        if count == 0:
            raise InvalidInput("no volume has a painted slice, so there is nothing to export")
        dataset = {
            "name": name,
            "description": "painted slices exported by slicewise; unpainted voxels carry the ignore label",
            "channel_names": {"0": channel},
            "labels": names,
            "numTraining": count,
            "file_ending": FILE_ENDING,
        }
        archive.writestr("dataset.json", json.dumps(dataset, indent=2))
    return count
