"""The reading habits in a real Chromium: wheel and arrows scroll, window/level drags in the browser without a
request, keys pick tools, flood fill, per-label visibility, the crosshair links the planes, and undo/redo
reach back across a slice change (the server's annotation follows)."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import wait_js
from .test_viewer_anatomy import MARKERS, SHAPE, upload
from .viewer_helpers import canvas_pixels, open_viewer, slice_point, stored_mask

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def current_slice(pg) -> tuple[int, int]:
    axis, index = pg.locator("body").get_attribute("data-slice").split(":")
    return int(axis), int(index)


def wait_slice(pg, axis: int, index: int) -> None:
    wait_js(pg, f"document.body.dataset.slice === '{axis}:{index}'")


def centre_of(pg, plane: str) -> tuple[float, float]:
    box = pg.locator(f"#canvas-{plane}").bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def annotations(http, vid) -> dict:
    return {(r["axis"], r["index"]): r for r in http.get(f"/api/volumes/{vid}/annotations").json()}


def test_wheel_keys_and_window_level_drag(page, server, tmp_path):
    p, pg = page, page.page
    volume = upload(server.client(), tmp_path, "habits")
    open_viewer(p, volume["id"])
    assert current_slice(pg) == (2, SHAPE[2] // 2)  # the 4 mm axis: axial, the plane painted first
    pg.mouse.move(*centre_of(pg, "axial"))
    pg.mouse.wheel(0, 120)
    wait_slice(pg, 2, 7)
    pg.mouse.wheel(0, -120)
    wait_slice(pg, 2, 6)
    pg.mouse.wheel(0, -120)
    wait_slice(pg, 2, 5)
    pg.keyboard.press("ArrowRight")
    wait_slice(pg, 2, 6)
    # the wheel over another plane scrolls that plane and makes it the active one
    pg.mouse.move(*centre_of(pg, "coronal"))
    pg.mouse.wheel(0, 120)
    wait_slice(pg, 1, SHAPE[1] // 2 + 1)
    assert "active" in pg.locator("#view-coronal").get_attribute("class")

    pg.keyboard.press("2")
    assert pg.locator("#tool-label-2").get_attribute("aria-checked") == "true"
    pg.keyboard.press("]")
    pg.keyboard.press("]")
    pg.keyboard.press("[")
    assert pg.locator("#brush-size").input_value() == "4"
    pg.keyboard.press("e")
    assert pg.locator("#tool-eraser").get_attribute("aria-checked") == "true"
    pg.keyboard.press("o")
    assert pg.locator("#show-none").is_checked()
    pg.keyboard.press("o")
    assert pg.locator("#show-painted").is_checked()

    # right-drag: right widens the window, up raises the level; all in the browser
    pg.locator("#plane-axial").click()
    wait_slice(pg, 2, 6)
    before_w, before_l = float(pg.locator("#window").input_value()), float(pg.locator("#level").input_value())
    before = canvas_pixels(pg, "axial")
    requests = []
    pg.on("request", lambda r: requests.append(r.url))
    x, y = centre_of(pg, "axial")
    pg.mouse.move(x, y)
    pg.mouse.down(button="right")
    pg.mouse.move(x + 100, y - 100, steps=8)
    pg.mouse.up(button="right")
    pg.wait_for_timeout(200)
    after_w, after_l = float(pg.locator("#window").input_value()), float(pg.locator("#level").input_value())
    assert after_w > before_w and after_l > before_l
    assert pg.locator("#wl-preset").input_value() == "manual"
    assert [u for u in requests if "/api/" in u] == []
    assert np.abs(canvas_pixels(pg, "axial").astype(int) - before.astype(int)).mean() > 10
    pg.locator("#wl-preset").select_option("ct-brain")
    assert (pg.locator("#window").input_value(), pg.locator("#level").input_value()) == ("80", "40")
    p.shot("12-window-level-and-tools")


def test_fill_visibility_crosshair_and_undo_across_slices(page, server, tmp_path):
    p, pg = page, page.page
    http = server.client()
    volume = upload(http, tmp_path, "undo")
    vid = volume["id"]
    open_viewer(p, vid)
    k = SHAPE[2] // 2

    # flood fill with label 2 from inside the axial marker: exactly the marker's voxels
    (i0, i1), (j0, j1), _ = MARKERS["axial"]
    pg.keyboard.press("2")
    pg.keyboard.press("f")
    pg.mouse.click(*slice_point(pg, "axial", (i0 + i1) // 2, (j0 + j1) // 2))
    pg.keyboard.press("s")
    pg.locator("#save-status").get_by_text("saved (version 1)").wait_for()
    expected = np.zeros(SHAPE[:2], np.uint8)
    expected[i0:i1, j0:j1] = 2
    np.testing.assert_array_equal(stored_mask(http, vid, 2, k), expected)
    centre = ((i0 + i1) // 2, (j0 + j1) // 2, k)
    assert f"voxel {centre[0]}, {centre[1]}, {k}" in pg.locator("#readout").inner_text()
    assert "value 1000 · label organ" in pg.locator("#readout").inner_text()

    def green() -> int:
        return int((np.abs(canvas_pixels(pg, "axial").astype(int) - [64, 255, 64]).max(axis=2) < 80).sum())

    pg.locator("#opacity").fill("100")
    assert green() > 50
    pg.locator("#visible-label-2").uncheck()
    pg.wait_for_timeout(100)
    assert green() == 0
    pg.locator("#visible-label-2").check()

    # Shift+click in the axial plane moves the coronal and sagittal planes through that voxel
    pg.keyboard.down("Shift")
    pg.mouse.click(*slice_point(pg, "axial", 30, 10))
    pg.keyboard.up("Shift")
    pg.locator("#view-sagittal .slice-no").get_by_text("slice 30 of").wait_for()
    pg.locator("#view-coronal .slice-no").get_by_text("slice 10 of").wait_for()
    assert f"voxel 30, 10, {k} ·" in pg.locator("#readout").inner_text()

    # a stroke on the next axial slice, then the wheel to another one: the slice change saves it
    pg.keyboard.press("1")
    pg.locator("#brush-size").fill("1")
    pg.mouse.move(*centre_of(pg, "axial"))
    pg.mouse.wheel(0, 120)
    wait_slice(pg, 2, k + 1)
    a, b = slice_point(pg, "axial", 20, 20), slice_point(pg, "axial", 20, 24)
    pg.mouse.move(*a)
    pg.mouse.down()
    pg.mouse.move(*b, steps=5)
    pg.mouse.up()
    pg.mouse.wheel(0, 120)
    wait_slice(pg, 2, k + 2)
    wait_js(pg, f"document.getElementById('painted-list').textContent === 'Painted: {k}, {k + 1}'")
    stroke_mask = stored_mask(http, vid, 2, k + 1)
    assert {tuple(int(v) for v in rc) for rc in np.argwhere(stroke_mask == 1)} == {(20, c) for c in range(20, 25)}

    # undo on another slice: the painted slice comes back on screen, unpainted, and the server forgets it
    pg.keyboard.press("Control+z")
    wait_slice(pg, 2, k + 1)
    pg.keyboard.press("s")
    wait_js(pg, f"document.getElementById('painted-list').textContent === 'Painted: {k}'")
    assert set(annotations(http, vid)) == {(2, k)}
    # undo again: the fill goes (it was the first edit of a saved slice, so the annotation is removed)
    pg.keyboard.press("Control+z")
    wait_slice(pg, 2, k)
    pg.keyboard.press("s")
    wait_js(pg, "document.getElementById('painted-list').textContent === 'Painted: none'")
    assert annotations(http, vid) == {}
    # and redo twice brings both back, pixel for pixel
    pg.keyboard.press("Control+Shift+z")
    pg.keyboard.press("Control+Shift+z")
    wait_slice(pg, 2, k + 1)
    pg.keyboard.press("s")
    wait_js(pg, f"document.getElementById('painted-list').textContent === 'Painted: {k}, {k + 1}'")
    np.testing.assert_array_equal(stored_mask(http, vid, 2, k), expected)
    np.testing.assert_array_equal(stored_mask(http, vid, 2, k + 1), stroke_mask)

    # paint in a second plane: the Retrain panel says which plane the model trains on and what it leaves out
    assert pg.locator("#train-axis").inner_text().startswith("The model trains on axial slices (voxel axis 2")
    pg.locator("#plane-coronal").click()
    pg.locator("#tool-label-1").click()
    pg.mouse.click(*slice_point(pg, "coronal", 20, 3))
    pg.keyboard.press("s")
    pg.locator("#train-axis").get_by_text("Not used by this retrain: 1 coronal slice").wait_for()
    assert pg.locator("#train-axis").inner_text().startswith("The model trains on axial slices")
    assert (1, 10) in annotations(http, vid)  # the crosshair put the coronal plane at j = 10
