"""Prequential scores: a slice saved after a model was trained is scored against that model's prediction
before it trains anything; the model versions list shows the mean."""

from __future__ import annotations

import time

import numpy as np
import pytest

from data.store_scores import slice_dice
from data.volume import IGNORE
from helpers_fake_trainer import fake_trainer_app, model_file, upload_synthetic  # noqa: F401 (model_file: a fixture)

RAW = {"Content-Type": "application/octet-stream"}


def naive_slice_dice(painted, predicted):
    """Per-pixel loop: Dice of each foreground class present in either mask on annotated pixels, then the mean."""
    classes, inter, size_t, size_p = set(), {}, {}, {}
    for t, p in zip(painted.ravel().tolist(), predicted.ravel().tolist()):
        if t == IGNORE:
            continue
        for c in (t, p):
            if c not in (0, IGNORE):
                classes.add(c)
        size_t[t] = size_t.get(t, 0) + 1
        size_p[p] = size_p.get(p, 0) + 1
        if t == p:
            inter[t] = inter.get(t, 0) + 1
    if not classes:
        return None
    return float(np.mean([2 * inter.get(c, 0) / (size_t.get(c, 0) + size_p.get(c, 0)) for c in sorted(classes)]))


@pytest.mark.parametrize("seed", range(10))
def test_slice_dice_matches_naive(seed):
    rng = np.random.default_rng(seed)
    painted = rng.choice([0, 1, 2, IGNORE], size=(9, 7), p=[0.4, 0.2, 0.1, 0.3]).astype(np.uint8)
    predicted = rng.choice([0, 1, 2], size=(9, 7)).astype(np.uint8)
    assert slice_dice(painted, predicted) == pytest.approx(naive_slice_dice(painted, predicted))


def test_slice_dice_is_none_without_foreground_and_ignores_unannotated_pixels():
    painted = np.full((4, 4), IGNORE, np.uint8)
    painted[0] = 0
    predicted = np.zeros((4, 4), np.uint8)
    predicted[1:] = 1  # only on pixels nobody annotated
    assert slice_dice(painted, predicted) is None
    with pytest.raises(ValueError, match="differ in shape"):
        slice_dice(painted, predicted[:2])


def wait_for(client, job_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def wait_prediction(client, volume_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get(f"/api/volumes/{volume_id}/prediction").json()["status"] == "ready":
            return
        time.sleep(0.1)
    raise AssertionError(f"prediction of volume {volume_id} not ready")


def test_prequential_bookkeeping_through_the_api(tmp_path, model_file):
    with fake_trainer_app(tmp_path, model_file) as (client, app, project):
        volume, label = upload_synthetic(client, project, tmp_path / "v.nii.gz")
        vid = volume["id"]
        put = lambda index, mask, etag=None: client.put(  # noqa: E731
            f"/api/volumes/{vid}/annotations/0/{index}",
            content=np.ascontiguousarray(mask).tobytes(),
            headers={**RAW, **({"If-Match": etag} if etag else {})},
        )
        # before any model: a save is not scored and nothing breaks
        assert put(3, label[3]).status_code == 200
        job = client.post(f"/api/projects/{project['id']}/train", json={}).json()
        assert wait_for(client, job["id"])["state"] == "succeeded"
        wait_prediction(client, vid)
        models = client.get(f"/api/projects/{project['id']}/models").json()
        assert models[-1]["prequential"] == {"dice": None, "slices": 0, "saved": 0, "accepted": 0}
        predicted = np.load(next((tmp_path / "ws").rglob("labels.npy")))

        # a slice the model never saw: scored against the model's prediction of that slice
        index = next(i for i in range(label.shape[0]) if i != 3 and (label[i] > 0).any())
        assert put(index, label[index]).status_code == 200
        expected = slice_dice(label[index], predicted[index])
        scores = app.state.workspace.slice_scores(models[-1]["id"])
        assert [(s["axis"], s["index"], s["kind"]) for s in scores] == [(0, index, "painted")]
        got = client.get(f"/api/models/{models[-1]['id']}").json()["prequential"]
        assert got["saved"] == 1
        if expected is None:
            assert got["dice"] is None and got["slices"] == 0
        else:
            assert got["dice"] == pytest.approx(expected, abs=1e-4) and got["slices"] == 1

        # saved again (autosave while painting): one row, the latest version's score
        etag = client.get(f"/api/volumes/{vid}/annotations/0/{index}").headers["ETag"]
        repainted = label[index].copy()
        repainted[:] = 0
        repainted[0, 0] = 1
        assert put(index, repainted, etag).status_code == 200
        scores = app.state.workspace.slice_scores(models[-1]["id"])
        assert len(scores) == 1 and scores[0]["version"] == 2
        assert scores[0]["dice"] == slice_dice(repainted, predicted[index])

        # the slice the model trained on is not scored against it
        etag = client.get(f"/api/volumes/{vid}/annotations/0/3").headers["ETag"]
        assert put(3, label[3], etag).status_code == 200
        assert all(s["index"] != 3 for s in app.state.workspace.slice_scores(models[-1]["id"]))

        # an accepted prediction counts as the model being right on that slice
        other = next(i for i in range(label.shape[0]) if i not in (3, index))
        r = client.post(f"/api/volumes/{vid}/review/0/{other}", json={"decision": "accept"})
        assert r.status_code == 200, r.text
        row = [s for s in app.state.workspace.slice_scores(models[-1]["id"]) if s["index"] == other][0]
        assert row["kind"] == "accepted"
        assert row["dice"] in (None, 1.0)
        assert client.get(f"/api/models/{models[-1]['id']}").json()["prequential"]["accepted"] == 1

        # deleting the volume, then the project, takes their scores along (nothing half-deleted)
        model_id = models[-1]["id"]
        r = client.delete(f"/api/volumes/{vid}", params={"confirm": volume["name"]})
        assert r.status_code == 200, r.text
        assert app.state.workspace.slice_scores(model_id) == []
        r = client.delete(f"/api/projects/{project['id']}", params={"confirm": project["name"]})
        assert r.status_code == 200, r.text
