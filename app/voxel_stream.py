"""The whole voxel array as little-endian uint16, so the viewer can window, level and reslice in the browser.

value = offset + scale * q. Integer volumes whose range fits in 16 bits travel exactly (scale 1); others are
quantized linearly over their finite min..max (65536 levels: far finer than any display window needs).
Encoded slab by slab along axis 0, so a 512 x 512 x 300 CT never needs a float64 copy in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

LEVELS = 65535
SLAB_VOXELS = 4_000_000


@dataclass(frozen=True)
class Quantization:
    offset: float
    scale: float
    exact: bool


def finite_range(array: np.ndarray) -> tuple[float, float]:
    low, high = np.inf, -np.inf
    for slab in slabs(array):
        values = slab[np.isfinite(slab)] if slab.dtype.kind == "f" else slab
        if values.size:
            low, high = min(low, float(values.min())), max(high, float(values.max()))
    return (0.0, 0.0) if low > high else (low, high)


def slabs(array: np.ndarray) -> Iterator[np.ndarray]:
    per_slab = max(1, SLAB_VOXELS // max(1, array[0].size)) if array.shape[0] else 1
    for start in range(0, array.shape[0], per_slab):
        yield np.asarray(array[start : start + per_slab])


def quantization(array: np.ndarray) -> Quantization:
    low, high = finite_range(array)
    if array.dtype.kind in "iub" and high - low <= LEVELS:
        return Quantization(low, 1.0, True)
    scale = (high - low) / LEVELS if high > low else 1.0
    return Quantization(low, scale, False)


def uint16_slabs(array: np.ndarray, q: Quantization) -> Iterator[bytes]:
    for slab in slabs(array):
        if q.exact:
            yield (slab.astype(np.int64) - int(q.offset)).astype("<u2").tobytes()
            continue
        values = np.nan_to_num((slab.astype(np.float64) - q.offset) / q.scale, nan=0.0, posinf=LEVELS, neginf=0.0)
        yield np.clip(np.round(values), 0, LEVELS).astype("<u2").tobytes()
