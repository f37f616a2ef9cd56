"""Sparse annotations: label volumes where IGNORE (255) means "not annotated", slices of them, PNG masks.

A slice is always `np.take(array, index, axis)` with no transpose or flip, so pixel (r, c) of a slice maps
to a voxel without guessing.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from data.errors import InvalidInput
from data.volume import IGNORE


def empty_labels(shape) -> np.ndarray:
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidInput(f"a label volume needs a 3D shape with positive sizes, got {shape}")
    return np.full(shape, IGNORE, dtype=np.uint8)


def check_slice(shape, axis, index) -> tuple[int, int, tuple[int, int]]:
    """Slice (axis, index) of a 3D volume of `shape` -> (axis, index, the slice's shape), or InvalidInput."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not 0 <= axis <= 2:
        raise InvalidInput(f"axis must be 0, 1 or 2, got {axis!r}")
    axis = int(axis)
    last = int(shape[axis]) - 1
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index <= last:
        raise InvalidInput(
            f"slice index {index!r} is outside 0..{last} along axis {axis} (it must be between 0 and {last})"
        )
    return axis, int(index), _slice_shape(tuple(int(n) for n in shape), axis)


def _check_axis_index(array: np.ndarray, axis, index) -> tuple[int, int]:
    if array.ndim != 3:
        raise InvalidInput(f"expected a 3D volume, got shape {array.shape}")
    axis, index, _ = check_slice(array.shape, axis, index)
    return axis, index


def take_slice(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    array = np.asarray(array)
    axis, index = _check_axis_index(array, axis, index)
    # == np.take(array, index, axis), but basic indexing reads only this slice of a memory-mapped
    # volume (np.take reads the whole file: ~1 s per slice for 512x512x200)
    where = [slice(None)] * 3
    where[axis] = index
    return np.array(array[tuple(where)])


def _slice_shape(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return tuple(n for a, n in enumerate(shape) if a != axis)


def _check_label_values(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype.kind not in "biu":
        raise InvalidInput(f"{what} must hold integer label values, got {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise InvalidInput(f"{what} values must be between 0 and 255, got {array.min()}..{array.max()}")
    return array.astype(np.uint8, copy=False)


def put_slice(labels: np.ndarray, axis: int, index: int, mask: np.ndarray) -> None:
    """Replace slice (axis, index) of the uint8 label volume `labels` by `mask`, in place."""
    axis, index = _check_axis_index(labels, axis, index)
    mask = np.asarray(mask)
    expected = _slice_shape(labels.shape, axis)
    if mask.shape != expected:
        raise InvalidInput(f"mask shape {mask.shape} does not match slice shape {expected} along axis {axis}")
    mask = _check_label_values(mask, "mask")
    where = [slice(None)] * 3
    where[axis] = index
    labels[tuple(where)] = mask


def impose_paint(labels: np.ndarray, painted: np.ndarray | None) -> np.ndarray:
    """`labels` with every painted voxel of the sparse label volume `painted` (IGNORE = not painted) set to
    its painted value: the mask a clinician gets back holds what they painted, voxel for voxel. A new array;
    `painted` None returns `labels` unchanged."""
    if painted is None:
        return labels
    labels, painted = np.asarray(labels), np.asarray(painted)
    if painted.shape != labels.shape:
        raise InvalidInput(f"painted labels of shape {painted.shape} do not fit a mask of shape {labels.shape}")
    return np.where(painted != IGNORE, painted, labels).astype(labels.dtype, copy=False)


def painted_mask(labels: np.ndarray, axis: int) -> np.ndarray:
    """Bool per index along `axis`: that slice is painted, i.e. fully annotated (holds no IGNORE pixel)."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InvalidInput(f"expected a 3D label volume, got shape {labels.shape}")
    other = tuple(a for a in range(3) if a != axis)
    return (labels != IGNORE).all(axis=other)


def validate_mask(mask, expected_shape, allowed_values: set[int]) -> np.ndarray:
    """The mask as uint8, or InvalidInput saying what is wrong (shape, dtype, values outside the label map)."""
    mask = np.asarray(mask)
    expected_shape = tuple(int(n) for n in expected_shape)
    if mask.shape != expected_shape:
        raise InvalidInput(f"mask shape {mask.shape} does not match the expected shape {expected_shape}")
    mask = _check_label_values(mask, "mask")
    present = {int(v) for v in np.unique(mask)}
    unknown = sorted(present - {int(v) for v in allowed_values})
    if unknown:
        raise InvalidInput(
            f"mask holds values {unknown} that are not in the label map (allowed: {sorted(allowed_values)})"
        )
    return mask


def mask_from_png(data: bytes, expected_shape) -> np.ndarray:
    """Decode a PNG mask whose pixel values are label values (mode L, or P where indices are the values)."""
    expected_shape = tuple(int(n) for n in expected_shape)
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # the header claims far more pixels than any slice has
        raise InvalidInput(f"mask PNG is far larger than the slice {expected_shape} ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidInput("mask is not a PNG image") from exc
    with image:
        if image.format != "PNG":
            raise InvalidInput(f"mask must be a PNG image, got {image.format}")
        if image.mode not in ("L", "P"):
            raise InvalidInput(
                f"mask PNG has mode {image.mode}; it must be 8-bit greyscale (L) or palette (P) so pixel values are labels"
            )
        shape = (image.height, image.width)  # rows, columns, known before decoding the pixels
        if shape != expected_shape:
            raise InvalidInput(f"mask PNG is {shape} (rows, columns) but the slice is {expected_shape}")
        try:
            array = np.array(image, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError) as exc:
            raise InvalidInput(f"mask PNG is corrupt or truncated ({exc})") from exc
    return array


def mask_to_png(mask: np.ndarray) -> bytes:
    """Lossless mode-L PNG of a 2D label mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InvalidInput(f"a PNG mask must be 2D, got shape {mask.shape}")
    mask = _check_label_values(mask, "mask")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask)).save(buffer, format="PNG")
    return buffer.getvalue()


def most_painted_axis(painted_per_axis) -> int:
    """The axis with most painted slices (ties go to the lower axis): what training slices along."""
    counts = [int(n) for n in painted_per_axis]
    return max(range(len(counts)), key=lambda axis: (counts[axis], -axis))
