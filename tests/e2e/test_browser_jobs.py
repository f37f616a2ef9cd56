"""Browser: cancel a running retrain (the previous model stays) and roll back to an older model version."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .conftest import wait_js
from .test_browser_loop import hippocampus_volume

LABELS = [{"value": 1, "name": "anterior", "color": "#ff0000"}, {"value": 2, "name": "posterior", "color": "#00ff00"}]


def _paint_two_slices(http, vid: int, shape) -> None:
    for index in (shape[0] // 3, 2 * shape[0] // 3):
        mask = np.zeros(shape[1:], np.uint8)
        mask[5:15, 5:15] = 1
        mask[20:30, 10:20] = 2
        buf = io.BytesIO()
        Image.fromarray(mask).save(buf, format="PNG")
        r = http.put(
            f"/api/volumes/{vid}/annotations/0/{index}",
            content=buf.getvalue(),
            headers={"Content-Type": "image/png", "If-Match": '"0"'},
        )
        assert r.status_code == 200, r.text


def _retrain(pg, preset: str) -> None:
    pg.locator("#preset").select_option(preset)
    pg.locator("#retrain").click()


def test_cancel_keeps_the_model_and_rollback_switches_it(page, server):
    p, pg = page, page.page
    http = server.client()
    project = http.post("/api/projects", json={"name": "E2E jobs", "labels": LABELS}).json()
    source = hippocampus_volume()
    r = http.post(f"/api/projects/{project['id']}/volumes", files={"file": (source.name, source.read_bytes())})
    assert r.status_code == 201, r.text
    volume = r.json()
    _paint_two_slices(http, volume["id"], volume["shape"])
    pg.goto(f"{p.base_url}/static/viewer.html?volume={volume['id']}")
    pg.locator("body[data-loaded=true]").wait_for()

    # two quick retrains in the browser: two model versions, the second active
    for n in (1, 2):
        _retrain(pg, "quick")
        wait_js(pg, "document.body.dataset.jobState === 'succeeded'", timeout=180_000)
        pg.locator("#models li").nth(n - 1).wait_for()
    models = http.get(f"/api/projects/{project['id']}/models").json()
    assert len(models) == 2 and [m["active"] for m in models] == [False, True]
    first, second = models[0]["id"], models[1]["id"]

    # a long retrain, cancelled from the browser: the job says so and the active model is unchanged
    _retrain(pg, "cpu")
    wait_js(pg, "document.body.dataset.jobState === 'running'", timeout=60_000)
    assert pg.locator("#cancel-job").is_enabled()
    pg.locator("#cancel-job").click()
    wait_js(pg, "document.body.dataset.jobState === 'cancelled'", timeout=60_000)
    assert "previous model stays active" in pg.locator("#progress-text").inner_text()
    assert pg.locator("#cancel-job").is_disabled()
    last = max(http.get(f"/api/projects/{project['id']}/jobs").json(), key=lambda j: j["id"])
    assert last["state"] == "cancelled" and last["preset"] == "cpu"
    assert [m["id"] for m in http.get(f"/api/projects/{project['id']}/models").json() if m["active"]] == [second]

    # roll back to the first version with its button: the API and the list agree, the overlay follows
    pg.locator(f"#activate-{first}").click()
    pg.locator("#message").get_by_text(f"Model {first} is now active.").wait_for()
    assert [m["id"] for m in http.get(f"/api/projects/{project['id']}/models").json() if m["active"]] == [first]
    pg.locator("#models li.active").get_by_text(f"Model {first} (active)").wait_for()
    assert pg.locator(f"#activate-{second}").is_visible() and pg.locator(f"#activate-{first}").count() == 0
    wait_js(pg, "document.body.dataset.ready === 'true'", timeout=60_000)
    status = http.get(f"/api/volumes/{volume['id']}/prediction").json()
    assert status["model_id"] == first and status["status"] == "ready"
