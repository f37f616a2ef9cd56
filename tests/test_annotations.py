"""Sparse label volumes (IGNORE = 255), slices of them, and lossless PNG masks."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from data.annotations import (
    empty_labels,
    mask_from_png,
    mask_to_png,
    most_painted_axis,
    painted_mask,
    put_slice,
    take_slice,
    validate_mask,
)
from data.errors import InvalidInput
from data.volume import IGNORE


def test_empty_labels_are_all_ignore():
    labels = empty_labels((3, 4, 5))
    assert labels.shape == (3, 4, 5) and labels.dtype == np.uint8
    assert (labels == IGNORE).all() and IGNORE == 255
    with pytest.raises(InvalidInput):
        empty_labels((3, 4))
    with pytest.raises(InvalidInput):
        empty_labels((3, 0, 5))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_take_slice_is_np_take_without_transpose(axis):
    array = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    for index in range(array.shape[axis]):
        assert np.array_equal(take_slice(array, axis, index), np.take(array, index, axis=axis))


@pytest.mark.parametrize("axis,index", [(3, 0), (-1, 0), (0, 3), (2, -1), (1, 4), ("0", 1), (0, 1.0), (True, 0)])
def test_take_slice_refuses_bad_axis_or_index(axis, index):
    with pytest.raises(InvalidInput):
        take_slice(np.zeros((3, 4, 5)), axis, index)


def test_put_slice_sets_only_that_slice():
    labels = empty_labels((3, 4, 5))
    mask = np.array([[0, 1, 2, 0, 1]] * 4, dtype=np.int64)  # slice along axis 0 is (4, 5)
    put_slice(labels, 0, 1, mask)
    assert np.array_equal(labels[1], mask)
    assert (labels[0] == IGNORE).all() and (labels[2] == IGNORE).all()
    assert labels.dtype == np.uint8


def test_put_slice_refuses_wrong_shape_and_values_and_changes_nothing():
    labels = empty_labels((3, 4, 5))
    with pytest.raises(InvalidInput, match="shape"):
        put_slice(labels, 0, 1, np.zeros((5, 4), np.uint8))
    with pytest.raises(InvalidInput, match="between 0 and 255"):
        put_slice(labels, 2, 0, np.full((3, 4), 256, np.int32))
    with pytest.raises(InvalidInput, match="integer"):
        put_slice(labels, 2, 0, np.full((3, 4), 0.5))
    with pytest.raises(InvalidInput):
        put_slice(labels, 2, 5, np.zeros((3, 4), np.uint8))
    assert (labels == IGNORE).all()


def test_painted_mask_marks_fully_annotated_slices_and_the_busiest_axis_wins():
    labels = empty_labels((6, 7, 8))
    for k in (1, 4, 6):
        put_slice(labels, 2, k, np.zeros((6, 7), np.uint8))
    put_slice(labels, 0, 3, np.ones((7, 8), np.uint8))
    painted = [np.flatnonzero(painted_mask(labels, axis)).tolist() for axis in range(3)]
    assert painted == [[3], [], [1, 4, 6]]
    assert most_painted_axis(len(p) for p in painted) == 2
    assert not any(painted_mask(empty_labels((2, 3, 4)), axis).any() for axis in range(3))


def test_partly_painted_slice_does_not_count():
    labels = empty_labels((4, 4, 4))
    partial = np.zeros((4, 4), np.uint8)
    partial[0, 0] = IGNORE
    put_slice(labels, 1, 2, partial)
    assert not any(painted_mask(labels, axis).any() for axis in range(3))


def test_painted_mask_needs_a_3d_label_volume():
    with pytest.raises(InvalidInput, match="3D"):
        painted_mask(np.zeros((2, 3)), 0)


def test_validate_mask_accepts_label_map_values():
    mask = np.array([[0, 1], [2, 0]], dtype=np.int64)
    out = validate_mask(mask, (2, 2), {0, 1, 2})
    assert out.dtype == np.uint8 and np.array_equal(out, mask)


def test_validate_mask_names_what_is_wrong():
    with pytest.raises(InvalidInput, match=r"shape \(2, 2\).*\(3, 2\)"):
        validate_mask(np.zeros((2, 2), np.uint8), (3, 2), {0, 1})
    with pytest.raises(InvalidInput, match=r"\[3, 9\]"):
        validate_mask(np.array([[0, 3], [9, 1]], np.uint8), (2, 2), {0, 1})
    with pytest.raises(InvalidInput, match="integer"):
        validate_mask(np.zeros((2, 2), np.float32), (2, 2), {0})
    with pytest.raises(InvalidInput, match="between 0 and 255"):
        validate_mask(np.array([[0, 300]]), (1, 2), {0, 300})


def test_png_round_trip_is_lossless_and_keeps_rows_and_columns():
    rng = np.random.default_rng(0)
    mask = rng.choice(np.array([0, 1, 2, IGNORE], np.uint8), size=(13, 29))
    data = mask_to_png(mask)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(data)).mode == "L"
    assert np.array_equal(mask_from_png(data, (13, 29)), mask)


def test_palette_png_pixel_values_are_labels():
    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    palette = Image.frombytes("P", (3, 2), indices.tobytes())
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    assert Image.open(io.BytesIO(buffer.getvalue())).mode == "P"
    assert np.array_equal(mask_from_png(buffer.getvalue(), (2, 3)), indices)


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data,fragment",
    [
        (png_bytes(Image.new("RGB", (3, 2))), "mode RGB"),
        (png_bytes(Image.new("RGBA", (3, 2))), "mode RGBA"),
        (png_bytes(Image.new("I;16", (3, 2))), "mode I"),
        (png_bytes(Image.new("1", (3, 2))), "mode 1"),
        (png_bytes(Image.new("L", (2, 3))), "(3, 2)"),
        (png_bytes(Image.new("L", (3, 2)), "BMP"), "must be a PNG"),
        (b"definitely not a png", "not a PNG"),
        (png_bytes(Image.new("L", (3, 2)))[:40], "PNG"),
    ],
    ids=["rgb", "rgba", "16bit", "bilevel", "wrong-shape", "bmp", "garbage", "truncated"],
)
def test_mask_from_png_refuses_bad_pngs(data, fragment):
    with pytest.raises(InvalidInput) as caught:
        mask_from_png(data, (2, 3))
    assert fragment in str(caught.value)


def test_mask_to_png_refuses_non_2d_or_out_of_range():
    with pytest.raises(InvalidInput):
        mask_to_png(np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(InvalidInput):
        mask_to_png(np.full((2, 3), 256, np.int32))


def test_impose_paint_sets_every_painted_voxel_and_nothing_else():
    from data.annotations import impose_paint

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(4, 5, 6)).astype(np.uint8)
    painted = np.full(labels.shape, IGNORE, dtype=np.uint8)
    painted[1] = rng.integers(0, 3, size=(5, 6))
    painted[:, 2, :] = 4  # crossing slices of another axis, a value the labels never had
    out = impose_paint(labels, painted)
    for index in np.ndindex(labels.shape):
        assert out[index] == (labels[index] if painted[index] == IGNORE else painted[index])
    assert out.dtype == labels.dtype and out is not labels
    assert impose_paint(labels, None) is labels
    with pytest.raises(InvalidInput, match="do not fit"):
        impose_paint(labels, painted[:, :, :-1])
