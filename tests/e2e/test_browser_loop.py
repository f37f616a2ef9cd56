"""The clinician's loop in a real Chromium against a real `slicewise serve`:

create a project -> upload a hippocampus volume -> paint two slices with the mouse -> save -> Retrain (quick)
-> live progress to the end -> prediction overlay -> accept a slice -> download the NIfTI (same geometry).
And: a corrupt upload shows an error and adds nothing.

Screenshots of each step go to docs/screenshots/ (shown in the README).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from .conftest import wait_js
from .viewer_helpers import active_plane, canvas_pixels, slice_point, stored_mask
from .viewer_helpers import stroke as viewer_stroke

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
HIPPOCAMPUS = REPO_ROOT.parent / "shared" / "data" / "hippocampus" / "imagesTr"


def hippocampus_volume():
    files = sorted(HIPPOCAMPUS.glob("*.nii.gz")) if HIPPOCAMPUS.is_dir() else []
    if not files:
        pytest.skip(f"no hippocampus volumes in {HIPPOCAMPUS} (the development data ../shared/data is absent)")
    return files[0]


def gradio_text_input(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def create_project_in_ui(p, name: str) -> None:
    page = p.page
    page.goto(p.base_url + "/")  # the root redirects to /ui
    page.wait_for_url(re.compile(r".*/ui/?$"))
    page.locator("#project-select").wait_for()
    page.get_by_text("Create a new project").click()
    gradio_text_input(page, "new-project-name").fill(name)
    labels = gradio_text_input(page, "new-project-labels")
    labels.fill("anterior #e6194b\nposterior #3cb44b")
    page.locator("#create-project").click()
    page.locator("#project-status").get_by_text(f'Created project "{name}"').wait_for()
    page.wait_for_function(f"""() => [...document.querySelectorAll('#project-select input')]
                                     .some(i => i.value.startsWith({name!r}))""")
    page.wait_for_timeout(600)  # let Gradio's "updating" fade finish before a screenshot


def upload_in_ui(page, path) -> None:
    page.locator("#upload-files input[type=file]").set_input_files(str(path))
    # Gradio lists the file (its name may be shortened to fit) with its size once it has received it
    page.locator("#upload-files").get_by_text(re.compile(r"\d+(\.\d+)?\s*[KMG]?B")).first.wait_for()
    page.locator("#upload-button").click()


def project_id(http, name: str) -> int:
    return next(p["id"] for p in http.get("/api/projects").json() if p["name"] == name)


def stroke(page, shape, points: list[tuple[int, int]]) -> None:
    """Paint through slice pixels (row, col) of the slice shown in the active plane (`shape` = its 2D shape)."""
    assert all(0 <= r < shape[0] and 0 <= c < shape[1] for r, c in points)
    viewer_stroke(page, active_plane(page), points)


def slice_of(page) -> tuple[int, int]:
    axis, index = page.locator("body").get_attribute("data-slice").split(":")
    return int(axis), int(index)


def wait_slice(page, axis: int, index: int) -> None:
    wait_js(page, f"document.body.dataset.slice === '{axis}:{index}'")


LABEL_RGB = {1: (0xE6, 0x19, 0x4B), 2: (0x3C, 0xB4, 0x4B)}


def check_prediction_outline(pg, http, vid: int, axis: int, index: int, shape) -> None:
    """'Both' draws the prediction as an outline: exactly its boundary voxels in the label's colour, grey
    elsewhere (this slice is unpainted). Read from the rendered pixels at every voxel's centre."""
    predicted = np.array(
        Image.open(io.BytesIO(http.get(f"/api/volumes/{vid}/prediction/slices/{axis}/{index}.png").content))
    )
    pg.mouse.move(0, 0)  # no brush footprint over the image
    pg.locator("#show-outline").check()
    pg.wait_for_timeout(200)
    plane = active_plane(pg)
    pixels = canvas_pixels(pg, plane)
    box = pg.locator(f"#canvas-{plane}").bounding_box()
    cursor = [int(n) for n in pg.evaluate("S.cursor")]
    padded = np.pad(predicted, 1, constant_values=-1)
    rows_axis, cols_axis = [a for a in range(3) if a != axis]
    for r in range(shape[0]):
        for c in range(shape[1]):
            if r == cursor[rows_axis] or c == cursor[cols_axis]:
                continue  # the crosshair runs over these voxels
            x, y = slice_point(pg, plane, r, c)
            rgb = pixels[int(y - box["y"]), int(x - box["x"])].astype(int)
            v = predicted[r, c]
            around = padded[r : r + 3, c : c + 3]
            edge = v > 0 and (around[0, 1] != v or around[2, 1] != v or around[1, 0] != v or around[1, 2] != v)
            if edge:
                assert np.abs(rgb - LABEL_RGB[int(v)]).max() <= 2, (r, c, rgb)
            else:
                assert rgb.max() - rgb.min() <= 2, (r, c, rgb)  # grey: no fill under 'Both' for a prediction
    pg.locator("#show-predicted").check()


def test_paint_retrain_review_download(page, server, tmp_path):
    source = hippocampus_volume()
    p, pg = page, page.page
    http = server.client()

    # 1. project
    create_project_in_ui(p, "E2E hippocampus")
    pg.mouse.wheel(0, -2000)
    p.shot("01-project-created")

    # 2. upload
    upload_in_ui(pg, source)
    pg.locator("#upload-status").get_by_text("Uploaded").wait_for(timeout=60_000)
    pid = project_id(http, "E2E hippocampus")
    volumes = http.get(f"/api/projects/{pid}/volumes").json()
    assert len(volumes) == 1
    vid = volumes[0]["id"]
    frame = pg.frame_locator("#viewer-iframe")
    frame.locator("body[data-loaded=true]").wait_for(timeout=30_000)
    pg.evaluate("window.scrollTo(0, 0)")
    p.shot("02-uploaded-volume-list", full_page=True)

    # 3. the viewer, full size (the link under the volume list)
    href = pg.locator("#open-viewer").get_attribute("href")
    pg.goto(p.base_url + href)
    pg.locator("body[data-loaded=true]").wait_for()
    axis, first = slice_of(pg)
    shape = volumes[0]["shape"]
    rows, cols = [n for a, n in enumerate(shape) if a != axis]

    # 4. paint two labels on the first slice, save explicitly
    pg.locator("#tool-label-1").click()
    pg.locator("#brush-size").fill("3")
    a = (rows // 3, cols // 4)
    stroke(pg, (rows, cols), [a, (rows // 3, cols // 2), (rows // 2, cols // 2)])
    pg.locator("#tool-label-2").click()
    b = (2 * rows // 3, cols // 4)
    stroke(pg, (rows, cols), [b, (2 * rows // 3, 3 * cols // 4)])
    pg.locator("#save").click()
    pg.locator("#save-status").get_by_text("saved (version 1)").wait_for()
    p.shot("03-painted-and-saved")

    # 5. next slices with the keyboard, paint, then go back: the slice change saves by itself
    for _ in range(4):
        pg.keyboard.press("ArrowRight")
    second = first + 4
    wait_slice(pg, axis, second)
    pg.locator("#tool-label-1").click()
    c = (rows // 2, cols // 3)
    stroke(pg, (rows, cols), [c, (rows // 2, 2 * cols // 3)])
    pg.keyboard.press("ArrowLeft")
    wait_slice(pg, axis, second - 1)
    pg.locator("#painted-list").get_by_text(f"Painted: {first}, {second}").wait_for()

    # the API stores what was painted, pixel for pixel at the stroke ends, in the slice's own shape
    m1 = stored_mask(http, vid, axis, first)
    assert m1.shape == (rows, cols)
    assert m1[a] == 1 and m1[b] == 2
    assert set(np.unique(m1)) == {0, 1, 2}
    m2 = stored_mask(http, vid, axis, second)
    assert m2[c] == 1 and set(np.unique(m2)) == {0, 1}
    listed = {(r["axis"], r["index"]) for r in http.get(f"/api/volumes/{vid}/annotations").json()}
    assert listed == {(axis, first), (axis, second)}

    # 6. another annotator saves the slice on screen meanwhile: my save gets a clear 409 message, nothing lost
    axis_now, other = slice_of(pg)
    theirs = np.zeros((rows, cols), np.uint8)
    theirs[:3, :3] = 2
    buf = io.BytesIO()
    Image.fromarray(theirs).save(buf, format="PNG")
    assert (
        http.put(
            f"/api/volumes/{vid}/annotations/{axis}/{other}",
            content=buf.getvalue(),
            headers={"Content-Type": "image/png", "If-Match": '"0"'},
        ).status_code
        == 200
    )
    stroke(pg, (rows, cols), [(rows // 2, cols // 2), (rows // 2 + 2, cols // 2)])
    pg.locator("#save").click()
    pg.locator("#conflict").get_by_text("Someone else saved this slice").wait_for()
    assert "409" in pg.locator("#message").inner_text()
    p.shot("04-save-conflict")
    pg.locator("#conflict-reload").click()
    pg.locator("#save-status").get_by_text("saved (version 1)").wait_for()
    np.testing.assert_array_equal(stored_mask(http, vid, axis, other), theirs)

    # 7. retrain with the quick preset; the progress bar follows the event stream to the end
    pg.evaluate("""() => { window.progressTexts = [];
        new MutationObserver(() => window.progressTexts.push(document.getElementById('progress-text').textContent))
          .observe(document.getElementById('progress-text'), {childList: true, characterData: true, subtree: true}); }""")
    pg.locator("#preset").select_option("quick")
    pg.locator("#retrain").click()
    wait_js(
        pg,
        "document.body.dataset.jobState === 'succeeded' || "
        "(document.body.dataset.jobState === 'running' && /epoch/.test("
        "document.getElementById('progress-text').textContent))",
        timeout=120_000,
    )
    p.shot("05-retrain-progress")
    wait_js(pg, "document.body.dataset.jobState === 'succeeded'", timeout=150_000)
    assert pg.locator("#progress").get_attribute("aria-valuenow") == "100"
    texts = pg.evaluate("window.progressTexts")
    assert any("epoch" in t and "%" in t for t in texts), texts  # live stage/epoch updates were shown
    wait_js(pg, "document.body.dataset.ready === 'true'", timeout=60_000)

    # 8. the prediction overlay is shown on an unpainted slice
    target = first + 2  # between the painted slices, not painted itself
    assert target not in (first, second, other)
    pg.locator("#slice-slider").fill(str(target))
    wait_slice(pg, axis, target)
    assert pg.locator("#show-predicted").is_checked()
    assert pg.evaluate("S.pred !== null && S.pred.length") == rows * cols
    pg.locator("#opacity").fill("60")
    expect_ok = pg.locator("#accept")
    assert expect_ok.is_enabled()
    p.shot("06-prediction-overlay")
    check_prediction_outline(pg, http, vid, axis, target, (rows, cols))

    # 9. accept the predicted slice: it becomes a reviewed annotation equal to the prediction
    expect_ok.click()
    pg.locator("#message").get_by_text("accepted").wait_for()
    rows_now = {(r["axis"], r["index"]): r for r in http.get(f"/api/volumes/{vid}/annotations").json()}
    assert rows_now[(axis, target)]["reviewed"]
    predicted = np.array(
        Image.open(io.BytesIO(http.get(f"/api/volumes/{vid}/prediction/slices/{axis}/{target}.png").content))
    )
    np.testing.assert_array_equal(stored_mask(http, vid, axis, target), predicted)
    pg.locator("#reviewed-list").get_by_text(f"Reviewed: {target}").wait_for()
    assert pg.locator("#models li.active").count() == 1
    # the accepted slice is the first the model is scored on (prequential): the list says so
    score = http.get(f"/api/models/{pg.evaluate('S.models[S.models.length - 1].id')}").json()["prequential"]
    assert score["saved"] == 1 and score["accepted"] == 1
    pg.locator("#models li.active").get_by_text("after it").wait_for()
    p.shot("07-accepted-and-models")

    # 10. download the NIfTI: same shape and affine as the upload
    with pg.expect_download() as info:
        pg.locator("#download-nifti").click()
    path = tmp_path / "prediction.nii.gz"
    info.value.save_as(path)
    mask, original = nib.load(path), nib.load(source)
    assert mask.shape == original.shape
    np.testing.assert_allclose(mask.affine, original.affine, atol=1e-4)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}


def test_corrupt_upload_shows_error_and_adds_nothing(page, server, tmp_path):
    p, pg = page, page.page
    http = server.client()
    create_project_in_ui(p, "E2E corrupt")
    pid = project_id(http, "E2E corrupt")
    broken = tmp_path / "broken_scan.nii.gz"
    broken.write_bytes(b"\x1f\x8b this is not a gzip'd NIfTI at all" * 10)
    upload_in_ui(pg, broken)
    error = pg.locator("#upload-status [role=alert]")
    error.wait_for(timeout=60_000)
    assert "broken_scan.nii.gz" in error.inner_text()
    assert "Upload refused" in error.inner_text()
    assert http.get(f"/api/projects/{pid}/volumes").json() == []
    assert pg.locator("#volume-table-empty").is_visible()
    pg.evaluate("window.scrollTo(0, 0)")
    p.shot("08-corrupt-upload-error")
