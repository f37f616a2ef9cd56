"""Checking a label mask before it is written in a volume's geometry (NIfTI or DICOM-SEG)."""

from __future__ import annotations

import numpy as np

from data.errors import InvalidInput
from data.volume import Volume


def as_label_mask(mask, like: Volume) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != like.shape:
        raise InvalidInput(f"mask shape {mask.shape} does not match the volume shape {like.shape}")
    if mask.dtype.kind not in "biu":
        if mask.dtype.kind == "f" and np.isfinite(mask).all() and np.array_equal(mask, np.round(mask)):
            pass
        else:
            raise InvalidInput(f"mask must hold integer label values, got {mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise InvalidInput(f"mask values must be between 0 and 255, got {mask.min()}..{mask.max()}")
    return mask.astype(np.uint8)
