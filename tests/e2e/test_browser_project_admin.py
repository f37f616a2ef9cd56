"""The project page in Chromium: per-volume progress, labels recoloured and added after creation (the viewer
follows), a volume deleted after typing its name."""

from __future__ import annotations

import pytest

from .test_browser_loop import gradio_text_input
from .test_viewer_anatomy import synthetic_volume
from .viewer_helpers import open_viewer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_labels_edited_and_a_volume_deleted_from_the_project_page(page, server, tmp_path):
    p, pg = page, page.page
    http = server.client()
    project = http.post(
        "/api/projects", json={"name": "E2E admin", "labels": [{"value": 1, "name": "liver", "color": "#ff0000"}]}
    ).json()
    ids = []
    for name in ("keep", "remove me"):
        path = synthetic_volume(tmp_path / f"{name}.nii.gz")
        r = http.post(f"/api/projects/{project['id']}/volumes", files={"file": (path.name, path.read_bytes())})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    pg.goto(p.base_url + "/ui")
    pg.locator("#volume-table").get_by_text("0 painted; no prediction").first.wait_for()
    pg.get_by_text("Manage this project").click()
    labels = gradio_text_input(pg, "edit-labels")
    pg.wait_for_function("() => document.querySelector('#edit-labels textarea').value.startsWith('1 liver')")
    wanted = "1 liver #00ff00\n2 spleen #0000ff"
    for _ in range(5):  # the page's own follow-up steps may still rewrite the field once after it loads
        labels.fill(wanted)
        pg.wait_for_timeout(1000)
        if labels.input_value() == wanted:
            break
    assert labels.input_value() == wanted
    pg.locator("#save-labels").click()
    pg.locator("#project-status").get_by_text("saved: 1 liver, 2 spleen").wait_for()
    assert [lab["color"] for lab in http.get(f"/api/projects/{project['id']}").json()["labels"]] == [
        "#00ff00",
        "#0000ff",
    ]

    pg.locator("#volume-select input").click()
    pg.get_by_role("option", name="remove me").click()
    pg.wait_for_timeout(500)
    gradio_text_input(pg, "delete-volume-confirm").fill("remove m")
    pg.locator("#delete-volume").click()
    pg.locator("#project-status").get_by_text("Not deleted").wait_for()
    assert len(http.get(f"/api/projects/{project['id']}/volumes").json()) == 2
    # the refused click's follow-up step clears the field; typing before it lands would be wiped
    pg.wait_for_function(
        "() => document.querySelector('#delete-volume-confirm textarea, #delete-volume-confirm input').value === ''"
    )
    gradio_text_input(pg, "delete-volume-confirm").fill("remove me")
    pg.locator("#delete-volume").click()
    pg.locator("#project-status").get_by_text('Deleted volume "remove me"').wait_for()
    assert [v["id"] for v in http.get(f"/api/projects/{project['id']}/volumes").json()] == [ids[0]]
    pg.evaluate("window.scrollTo(0, 0)")
    p.shot("13-project-page-manage")

    open_viewer(p, ids[0])
    assert pg.locator("#tool-label-2").inner_text().strip() == "spleen"
    assert pg.locator("#next-volume").is_disabled() and pg.locator("#prev-volume").is_disabled()
