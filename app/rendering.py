"""Slice PNGs: window/level a 2D slice of the stored array into 8-bit grey.

grey = clip(round((v - (level - window / 2)) / window * 255), 0, 255), computed in float64.
The default window/level spans the volume's 1st..99th percentile, computed once per volume and cached.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict

import numpy as np
from PIL import Image

from data.errors import InvalidInput

PERCENTILE_SAMPLE = 1_000_000  # voxels; bigger volumes are sampled with a fixed stride (deterministic)


def window_to_uint8(slice_2d: np.ndarray, window: float, level: float) -> np.ndarray:
    low = level - window / 2.0
    scaled = (np.asarray(slice_2d, dtype=np.float64) - low) / window * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def png_bytes(grey: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # compress_level 1: a slice is re-encoded on every request; speed matters more than bytes here
    Image.fromarray(np.ascontiguousarray(grey), mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def default_window(array: np.ndarray) -> tuple[float, float]:
    """(window, level) spanning the 1st..99th percentile of the volume's finite voxels."""
    flat = array.reshape(-1)
    if flat.size > PERCENTILE_SAMPLE:
        flat = flat[:: flat.size // PERCENTILE_SAMPLE + 1]
    flat = np.asarray(flat, dtype=np.float64)
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 1.0, 0.5
    p1, p99 = np.percentile(flat, [1, 99])
    if not p99 > p1:  # constant (or nearly) volume: any positive window shows it
        return 1.0, float(p1)
    return float(p99 - p1), float((p1 + p99) / 2.0)


def check_window(window: float | None, level: float | None) -> None:
    if window is not None and not (math.isfinite(window) and window > 0):
        raise InvalidInput(f"window must be a positive finite number, got {window}")
    if level is not None and not math.isfinite(level):
        raise InvalidInput(f"level must be a finite number, got {level}")


class SliceRenderer:
    """Caches each volume's default window/level (a percentile over the whole volume is the slow part)."""

    def __init__(self, max_volumes: int = 256):
        self._defaults: OrderedDict[int, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_volumes

    def defaults(self, volume_id: int, array: np.ndarray) -> tuple[float, float]:
        with self._lock:
            if volume_id in self._defaults:
                self._defaults.move_to_end(volume_id)
                return self._defaults[volume_id]
        value = default_window(array)
        with self._lock:
            self._defaults[volume_id] = value
            while len(self._defaults) > self._max:
                self._defaults.popitem(last=False)
        return value

    def forget(self, volume_id: int) -> None:
        with self._lock:
            self._defaults.pop(volume_id, None)

    def render(
        self, volume_id: int, slice_2d: np.ndarray, array: np.ndarray, window: float | None, level: float | None
    ) -> tuple[bytes, float, float]:
        check_window(window, level)
        default_w, default_l = self.defaults(volume_id, array)
        window = default_w if window is None else float(window)
        level = default_l if level is None else float(level)
        return png_bytes(window_to_uint8(slice_2d, window, level)), window, level
