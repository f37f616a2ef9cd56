"""Shared steps for browser tests of the viewer page: open it, find a slice pixel on screen, paint, read back."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

PLANES = ("axial", "coronal", "sagittal")


def open_viewer(p, volume_id: int, extra: str = "") -> None:
    p.page.goto(f"{p.base_url}/static/viewer.html?volume={volume_id}{extra}")
    p.page.locator("body[data-loaded=true]").wait_for(timeout=60_000)


def plane_of_axis(page, axis: int) -> str:
    return next(pl for pl in PLANES if int(page.locator(f"#canvas-{pl}").get_attribute("data-axis")) == axis)


def active_plane(page) -> str:
    axis = int(page.locator("body").get_attribute("data-slice").split(":")[0])
    return plane_of_axis(page, axis)


def slice_point(page, plane: str, row: int, col: int) -> tuple[float, float]:
    """Screen centre of pixel (row, col) of the stored slice np.take(volume, index, axis) shown in `plane`.

    Reads how the page lays the slice out (which voxel axis runs along screen x / y, and whether it is flipped)
    from the canvas's data attributes; the anatomy tests check that layout independently from the affine."""
    canvas = page.locator(f"#canvas-{plane}")
    keys = ("axis", "x-axis", "y-axis", "flip-x", "flip-y", "width", "height")
    a = {k: canvas.get_attribute(f"data-{k}") for k in keys}
    axis, x_axis, y_axis = int(a["axis"]), int(a["x-axis"]), int(a["y-axis"])
    width, height = int(a["width"]), int(a["height"])
    rows_axis = min(ax for ax in range(3) if ax != axis)
    along = {rows_axis: row, 3 - axis - rows_axis: col}
    sx, sy = along[x_axis], along[y_axis]
    if a["flip-x"] == "true":
        sx = width - 1 - sx
    if a["flip-y"] == "true":
        sy = height - 1 - sy
    box = canvas.bounding_box()
    return box["x"] + (sx + 0.5) * box["width"] / width, box["y"] + (sy + 0.5) * box["height"] / height


def stroke(page, plane: str, points: list[tuple[int, int]]) -> None:
    x, y = slice_point(page, plane, *points[0])
    page.mouse.move(x, y)
    page.mouse.down()
    for row, col in points[1:]:
        x, y = slice_point(page, plane, row, col)
        page.mouse.move(x, y, steps=6)
    page.mouse.up()


def stored_mask(http, volume_id: int, axis: int, index: int) -> np.ndarray:
    response = http.get(f"/api/volumes/{volume_id}/annotations/{axis}/{index}")
    assert response.status_code == 200, response.text
    return np.array(Image.open(io.BytesIO(response.content)))


def canvas_pixels(page, plane: str) -> np.ndarray:
    """What the browser rendered on the plane's canvas, as an RGB array (a real screenshot of the element)."""
    png = page.locator(f"#canvas-{plane}").screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
