"""The Volume: voxels plus the geometry and source metadata needed to write results back in place."""

from __future__ import annotations

from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

IGNORE = 255  # label value meaning "not annotated"; losses skip it
BACKGROUND = 0  # annotated, but none of the project's labels
LABEL_VALUES = range(BACKGROUND + 1, IGNORE)  # what a project's labels may use: 1..254


def _json_scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


@dataclass
class Volume:
    array: np.ndarray  # 3D voxel array, index (i, j, k); not transposed for display
    affine: np.ndarray  # 4x4 float64, voxel (i, j, k) -> world RAS+ mm
    source: str  # "nifti" | "dicom" | "itk" (NRRD, MetaImage)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.array.ndim != 3:
            raise ValueError(f"a Volume needs a 3D array, got shape {self.array.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"a Volume needs a 4x4 affine, got shape {self.affine.shape}")
        if self.source not in ("nifti", "dicom", "itk"):
            raise ValueError(f"unknown volume source {self.source!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        lengths = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        return tuple(float(x) for x in lengths)  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        return "".join(nib.aff2axcodes(self.affine))

    def summary(self) -> dict:
        return {
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "orientation": self.orientation,
            "affine": self.affine.tolist(),
            "source": self.source,
            "dtype": str(self.array.dtype),
            # scalars only (UIDs, modality, description, NIfTI codes); server-side paths stay private
            "meta": {k: v for k, v in self.meta.items() if _json_scalar(v) and not k.startswith("source_")},
        }
