"""The masks to download of painted volumes over HTTP (in-process app, fake trainer): the paint taken as certain
by the model, as `Predictor.predict(painted=...)` gives it, while that paint is still saved unchanged; the
model's own mask under the paint once it is not; the viewer's and the scores' mask always the model's own."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data.annotations import impose_paint
from data.volume import IGNORE
from helpers_fake_trainer import fake_trainer_app, upload_synthetic
from helpers_kept_models import save_untrained_model
from helpers_retrain import SHAPE
from model.config import preset
from model.inference import load_predictor

RAW = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def smoothing_model(tmp_path_factory) -> Path:
    """An untrained model along axis 0 that smooths over 2 mm of neighbours and decides its "auto" clean-up
    from its first predictions of painted volumes, as the `cpu` preset's models do."""
    path = tmp_path_factory.mktemp("model") / "model.pt"
    cfg = preset(
        "quick", predict_smooth_mm=2.0, predict_flip="off", defer_cleanup=True, bf16="off", channels_last="off"
    )
    save_untrained_model(path, cfg, {"axis": 0, "size": 16, "max_size": cfg.max_size, "multiple": 8, "context": 1})
    return path


def test_a_painted_volumes_download_takes_the_paint_it_was_predicted_with_as_certain(tmp_path, smoothing_model):
    with fake_trainer_app(tmp_path, smoothing_model) as (client, app, project):
        (volume, label), (other, _) = [
            upload_synthetic(client, project, tmp_path / f"v{n}.nii.gz", seed=n) for n in range(2)
        ]
        vid, ws, predictions = volume["id"], app.state.workspace, app.state.worker.predictions
        for index in (4, 7):
            assert client.put(f"/api/volumes/{vid}/annotations/0/{index}", content=label[index].tobytes(), headers=RAW)
        job = client.post(f"/api/projects/{project['id']}/train", json={"preset": "quick"}).json()
        deadline = time.monotonic() + 120
        while client.get(f"/api/jobs/{job['id']}").json()["state"] not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        model = ws.active_model(project["id"])
        assert model is not None

        def download(volume_id) -> np.ndarray:
            r = client.get(f"/api/volumes/{volume_id}/prediction.nii.gz")
            assert r.status_code == 200, r.text
            (tmp_path / "dl.nii.gz").write_bytes(r.content)
            return np.asarray(nib.load(tmp_path / "dl.nii.gz").dataobj)

        # the reference: the model (its clean-up decided by now) predicting the volume with the paint
        reference = load_predictor(model["path"], device="cpu")
        assert not reference.cleanup_pending
        array, spacing = np.asarray(ws.volume_array(vid)), tuple(volume["spacing"])
        painted = ws.label_volume(vid)
        with_paint = reference.predict(array, spacing, painted=painted)[0]
        own = predictions.labels(vid)[0]
        np.testing.assert_array_equal(own, reference.predict(array, spacing)[0])  # the viewer's: no paint in it
        kept = impose_paint(own, painted)
        assert (with_paint != kept).any()  # the paint pulled some unpainted voxels: the case is not trivial
        np.testing.assert_array_equal(download(vid), with_paint)
        np.testing.assert_array_equal(download(other["id"]), predictions.labels(other["id"])[0])  # nothing painted

        # a slice painted since: over the same mask, at once, without a retrain
        newer = np.zeros(SHAPE[1:], np.uint8)
        assert client.put(f"/api/volumes/{vid}/annotations/0/10", content=newer.tobytes(), headers=RAW)
        np.testing.assert_array_equal(download(vid), impose_paint(with_paint, ws.label_volume(vid)))
        # a slice the mask was made with, painted again: the model's own mask under the paint
        again = np.where(label[7] > 0, 1, 0).astype(np.uint8)
        r = client.put(
            f"/api/volumes/{vid}/annotations/0/7", content=again.tobytes(), headers={**RAW, "If-Match": '"1"'}
        )
        assert r.status_code == 200, r.text
        now = ws.label_volume(vid)
        assert (now[7] == again).all() and (now != IGNORE).sum() == 3 * SHAPE[1] * SHAPE[2]
        np.testing.assert_array_equal(download(vid), impose_paint(own, now))


def test_a_ray_prediction_task_gives_the_same_three_masks_as_the_server_would(smoothing_model):
    from app.ray_training import predict_on_worker

    array = np.random.default_rng(5).normal(size=SHAPE).astype(np.float32)
    painted = np.full(SHAPE, IGNORE, np.uint8)
    painted[[3, 8]] = np.random.default_rng(6).integers(0, 3, size=(2, *SHAPE[1:]))
    predictor = load_predictor(smoothing_model, device="cpu")
    spacing = (1.1, 0.9, 2.0)
    labels, probs, with_paint = predict_on_worker(smoothing_model.read_bytes(), array, spacing, True, painted)
    expected = predictor.predict_with_paint(array, painted, spacing, return_probs=True, clean=False)
    np.testing.assert_array_equal(labels, expected[0])
    np.testing.assert_array_equal(with_paint, expected[1])
    np.testing.assert_array_equal(probs, expected[2])
    assert not np.array_equal(labels, with_paint)
    plain = predict_on_worker(smoothing_model.read_bytes(), array, spacing, False)
    np.testing.assert_array_equal(plain[0], labels)
    assert plain[1] is None and plain[2] is None
