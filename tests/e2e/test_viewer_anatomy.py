"""The viewer shows anatomy the way radiologists read it, and paints exactly the voxels under the brush.

A synthetic NIfTI (1 x 1 x 4 mm, voxel i running to the patient's Left, so a naive display is mirrored) holds
one bright block per plane at known RAS positions; the rendered pixels must put each block where radiological
convention puts it (axial: patient's right on the screen's left, anterior up; coronal/sagittal: superior up,
sagittal anterior left) with the aspect of the spacing. Expected positions are computed here from the affine,
not from the page's own layout.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from .viewer_helpers import PLANES, canvas_pixels, open_viewer, stored_mask

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SHAPE = (40, 48, 12)
SPACING = (1.0, 1.0, 4.0)
AFFINE = np.array([[-1.0, 0, 0, 20], [0, 1.0, 0, -24], [0, 0, 4.0, -24], [0, 0, 0, 1]])
CENTRE = tuple(n // 2 for n in SHAPE)  # where the viewer's crosshair starts: (20, 24, 6)
# one block per plane, each in that plane's starting slice only: (i range, j range, k range)
MARKERS = {
    "axial": ((4, 8), (36, 42), (5, 8)),  # right, anterior; contains k = 6
    "coronal": ((4, 8), (22, 27), (9, 11)),  # right, superior; contains j = 24
    "sagittal": ((18, 23), (36, 42), (9, 11)),  # anterior, superior; contains i = 20
}
# the world axis (0 x, 1 y, 2 z) and its sign along screen right and screen down, per plane (radiological)
SCREEN = {"axial": ((0, -1), (1, -1)), "coronal": ((0, -1), (2, -1)), "sagittal": ((1, -1), (2, -1))}
LETTERS = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I")}
OBLIQUE_SERIES = Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom" / "study3_t1_post_contrast"


def synthetic_volume(path: Path) -> Path:
    array = np.full(SHAPE, 100, np.int16)
    for (i0, i1), (j0, j1), (k0, k1) in MARKERS.values():
        array[i0:i1, j0:j1, k0:k1] = 1000
    nib.save(nib.Nifti1Image(array, AFFINE), str(path))
    return path


def world(ijk) -> np.ndarray:
    return (AFFINE @ np.array([*ijk, 1.0]))[:3]


def voxel_axis_along(world_axis: int) -> int:
    return int(np.argmax(np.abs(AFFINE[world_axis, :3])))


def screen_fraction(world_axis: int, sign: int, value: float) -> float:
    """Where `value` (mm along world_axis) falls across the view: 0 at the screen-left/top edge, 1 at the other.
    sign -1: screen right/down points to decreasing world values (to the patient's Left, Posterior, Inferior)."""
    voxel_axis = voxel_axis_along(world_axis)
    centres = [world([n if a == voxel_axis else 0 for a in range(3)])[world_axis] for n in (0, SHAPE[voxel_axis] - 1)]
    half = SPACING[voxel_axis] / 2
    low, high = min(centres) - half, max(centres) + half
    return (value - low) / (high - low) if sign > 0 else (high - value) / (high - low)


def expected_box(plane: str) -> tuple[float, float, float, float]:
    """(x centre, y centre, width, height) of the plane's marker as fractions of the view."""
    ranges = MARKERS[plane]
    first, last = world([r[0] for r in ranges]), world([r[1] - 1 for r in ranges])
    out = []
    for world_axis, sign in SCREEN[plane]:
        half = SPACING[voxel_axis_along(world_axis)] / 2
        low, high = sorted((first[world_axis], last[world_axis]))
        a, b = sorted((screen_fraction(world_axis, sign, low - half), screen_fraction(world_axis, sign, high + half)))
        out.append(((a + b) / 2, b - a))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def measured_box(pixels: np.ndarray) -> tuple[float, float, float, float]:
    white = np.all(pixels >= 245, axis=2)  # the marker; the crosshair is cyan, the background mid-grey
    assert white.sum() > 20, "the marker is not visible"
    ys, xs = np.nonzero(white)
    h, w = white.shape
    return (
        (xs.min() + xs.max() + 1) / 2 / w,
        (ys.min() + ys.max() + 1) / 2 / h,
        (xs.max() + 1 - xs.min()) / w,
        (ys.max() + 1 - ys.min()) / h,
    )


def upload(http, tmp_path, name="anatomy") -> dict:
    project = http.post(
        "/api/projects",
        json={
            "name": f"E2E {name}",
            "labels": [
                {"value": 1, "name": "lesion", "color": "#ff0000"},
                {"value": 2, "name": "organ", "color": "#00ff00"},
            ],
        },
    ).json()
    path = synthetic_volume(tmp_path / f"{name}.nii.gz")
    response = http.post(f"/api/projects/{project['id']}/volumes", files={"file": (path.name, path.read_bytes())})
    assert response.status_code == 201, response.text
    return response.json()


def test_each_plane_shows_the_marker_where_radiological_convention_puts_it(page, server, tmp_path):
    p, pg = page, page.page
    volume = upload(server.client(), tmp_path)
    open_viewer(p, volume["id"])
    for plane in PLANES:
        cell = pg.locator(f"#view-{plane}")
        left, right, top, bottom = LETTERS[plane]
        assert [cell.locator(f".letter.{side}").inner_text() for side in ("left", "right", "top", "bottom")] == [
            left,
            right,
            top,
            bottom,
        ]
        box = pg.locator(f"#canvas-{plane}").bounding_box()
        mm_w = {"axial": 40, "coronal": 40, "sagittal": 48}[plane]
        assert box["width"] / box["height"] == pytest.approx(mm_w / 48, rel=0.03)  # 4 mm voxels drawn 4x tall
        got = measured_box(canvas_pixels(pg, plane))
        want = expected_box(plane)
        assert got[0] == pytest.approx(want[0], abs=0.03), (plane, "x", got, want)
        assert got[1] == pytest.approx(want[1], abs=0.03), (plane, "y", got, want)
        assert got[2] == pytest.approx(want[2], abs=0.03), (plane, "width", got, want)
        assert got[3] == pytest.approx(want[3], abs=0.03), (plane, "height", got, want)
    p.shot("09-three-planes")
    pg.locator("#plane-coronal").click()
    pg.locator("#layout-one").click()
    pg.wait_for_timeout(300)
    got = measured_box(canvas_pixels(pg, "coronal"))
    assert got[0] == pytest.approx(expected_box("coronal")[0], abs=0.03)
    assert pg.locator("#view-axial").is_hidden()
    p.shot("10-single-plane-coronal")


def screen_of_voxel(pg, plane: str, ijk) -> tuple[float, float]:
    """Screen position of voxel ijk's centre in `plane`, from the affine and radiological convention alone."""
    (ax, sx), (ay, sy) = SCREEN[plane]
    centre = world(ijk)
    box = pg.locator(f"#canvas-{plane}").bounding_box()
    return (
        box["x"] + screen_fraction(ax, sx, centre[ax]) * box["width"],
        box["y"] + screen_fraction(ay, sy, centre[ay]) * box["height"],
    )


@pytest.mark.parametrize("plane,axis", [("coronal", 1), ("sagittal", 0)])
def test_a_stroke_lands_on_the_voxels_under_the_brush(page, server, tmp_path, plane, axis):
    p, pg = page, page.page
    http = server.client()
    volume = upload(http, tmp_path, f"stroke-{plane}")
    open_viewer(p, volume["id"])
    pg.locator("#brush-size").fill("1")
    pg.locator("#tool-label-2").click()
    index = CENTRE[axis]
    # three voxels, moving toward the patient's superior side (up on screen), then one step sideways
    in_plane = [a for a in range(3) if a != axis]
    start = [0, 0, 0]
    start[axis] = index
    start[in_plane[0]], start[2] = 10, 3
    path = [list(start), [*start[:2], 4], [*start[:2], 5]]
    path.append(list(path[-1]))
    path[-1][in_plane[0]] += 1
    pg.mouse.move(*screen_of_voxel(pg, plane, path[0]))
    pg.mouse.down()
    for ijk in path[1:]:
        pg.mouse.move(*screen_of_voxel(pg, plane, ijk), steps=4)
    pg.mouse.up()
    pg.keyboard.press("s")
    pg.locator("#save-status").get_by_text("saved (version 1)").wait_for()
    mask = stored_mask(http, volume["id"], axis, index)
    assert mask.shape == tuple(n for a, n in enumerate(SHAPE) if a != axis)
    painted = {tuple(int(v) for v in rc) for rc in np.argwhere(mask == 2)}
    expected = {(ijk[in_plane[0]], ijk[in_plane[1]]) for ijk in path}
    assert painted == expected
    assert set(np.unique(mask)) == {0, 2}
    listed = [(r["axis"], r["index"]) for r in http.get(f"/api/volumes/{volume['id']}/annotations").json()]
    assert listed == [(axis, index)]


def test_the_oblique_dicom_series_opens_in_its_acquisition_planes(page, server, tmp_path):
    if not OBLIQUE_SERIES.is_dir():
        pytest.skip(f"the oblique DICOM series is not at {OBLIQUE_SERIES} (../shared/data is absent)")
    p, pg = page, page.page
    http = server.client()
    project = http.post(
        "/api/projects", json={"name": "E2E oblique", "labels": [{"value": 1, "name": "enhancing", "color": "#ff8800"}]}
    ).json()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for f in sorted(OBLIQUE_SERIES.iterdir()):
            archive.write(f, f.name)
    response = http.post(f"/api/projects/{project['id']}/volumes", files={"file": ("t1.zip", buffer.getvalue())})
    assert response.status_code == 201, response.text
    volume = response.json()
    open_viewer(p, volume["id"])
    layouts = {
        pl: {k: pg.locator(f"#canvas-{pl}").get_attribute(f"data-{k}") for k in ("axis", "width", "height")}
        for pl in PLANES
    }
    assert sorted(int(v["axis"]) for v in layouts.values()) == [0, 1, 2]
    thin = int(np.argmin(volume["spacing"]))  # the acquisition plane: 22 slices of 6.5 mm
    coarse = int(np.argmax(volume["spacing"]))
    acquisition = next(pl for pl, v in layouts.items() if int(v["axis"]) == coarse)
    assert acquisition == "axial" and thin != coarse
    for pl in PLANES:  # every plane drawn mm-true: canvas aspect = voxels x spacing
        box = pg.locator(f"#canvas-{pl}").bounding_box()
        x_axis = int(pg.locator(f"#canvas-{pl}").get_attribute("data-x-axis"))
        y_axis = int(pg.locator(f"#canvas-{pl}").get_attribute("data-y-axis"))
        mm = (volume["shape"][x_axis] * volume["spacing"][x_axis], volume["shape"][y_axis] * volume["spacing"][y_axis])
        assert box["width"] / box["height"] == pytest.approx(mm[0] / mm[1], rel=0.03)
        assert canvas_pixels(pg, pl).std() > 5, f"the {pl} view is blank"
    assert [pg.locator(f"#view-axial .letter.{s}").inner_text() for s in ("left", "right", "top", "bottom")] == [
        "R",
        "L",
        "A",
        "P",
    ]
    p.shot("11-oblique-dicom-three-planes")
