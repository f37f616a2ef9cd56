"""The server's "auto" clean-up: decided from the predictions it makes after a retrain, not by inferring
the painted volumes once more at the end of training."""

from __future__ import annotations

import json

import numpy as np

from app.predictions import LABELS_NAME, WITH_PAINT_NAME, Predictions
from app.views import cleanup_words
from data.mask_cleanup import choose_cleanup
from data.store import Workspace
from helpers_retrain import LABELS, make_untrained_model, skip_speed_measurement, synthetic_nifti
from model import checkpoint
from model.cleanup_decision import DECISION_FILE
from model.config import preset
from model.device import runtime_for
from model.inference import load_predictor
from model.postprocess import decide_cleanup


def deferred_model(folder):
    """A real model.pt whose "auto" clean-up was left to its first predictions (as the server trains)."""
    folder.mkdir(parents=True)
    path = make_untrained_model(folder / "model.pt")
    saved = checkpoint.load(path)
    saved["config"]["defer_cleanup"] = True
    checkpoint.save(saved, path)
    return folder


def project_with_two_volumes(tmp_path):
    ws = Workspace(tmp_path / "ws")
    skip_speed_measurement(ws.root)
    project = ws.create_project("p", LABELS)
    volumes, truths = [], []
    for seed in (0, 1):
        path, label = synthetic_nifti(tmp_path / f"v{seed}.nii.gz", seed=seed)
        volumes.append(ws.import_volume(project["id"], path, path.name, 10**9))
        truths.append(label)
    ws.save_annotation(volumes[0]["id"], 0, 6, truths[0][6])  # only the first volume is painted
    return ws, project, volumes


class Counting:
    """The real predictor, counting the volumes it infers."""

    def __init__(self, predictor):
        self.predictor, self.calls = predictor, 0

    def __getattr__(self, name):
        return getattr(self.predictor, name)

    def __setattr__(self, name, value):
        if name in ("predictor", "calls"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.predictor, name, value)

    def predict(self, *args, **kwargs):
        self.calls += 1
        return self.predictor.predict(*args, **kwargs)

    def predict_with_paint(self, *args, **kwargs):
        self.calls += 1
        return self.predictor.predict_with_paint(*args, **kwargs)


def test_training_leaves_a_deferred_decision_open(tmp_path):
    cfg = preset("quick", num_classes=2, defer_cleanup=True, images=[], out_dir=str(tmp_path))
    info = {"axis": 0, "size": 16, "max_size": 128, "multiple": 8}
    cleanup, report = decide_cleanup(None, cfg, info, runtime_for("cpu", "off", "off", "off"), 2)
    assert cleanup is None and report["deferred"]
    assert decide_cleanup(None, cfg.replace(cleanup="all"), info, runtime_for("cpu", "off", "off", "off"), 2)[0]


def test_the_server_decides_from_its_own_predictions_and_cleans_every_mask(tmp_path):
    ws, project, volumes = project_with_two_volumes(tmp_path)
    folder = deferred_model(tmp_path / "model")
    model = ws.add_model(project["id"], None, str(folder), {}, {}, [])
    predictions = Predictions(ws, device="cpu")
    predictor = predictions._predictor(model)
    assert predictor.cleanup_pending and predictor.cleanup is None
    raw = [predictor.predict(np.asarray(ws.volume_array(v["id"])), clean=False)[0] for v in volumes]
    painted = ws.label_volume(volumes[0]["id"])
    raw_with_paint = predictor.predict_with_paint(np.asarray(ws.volume_array(volumes[0]["id"])), painted, clean=False)[
        1
    ]
    counting = Counting(predictor)
    predictions._predictors[model["id"]] = counting

    report = predictions.settle_cleanup(model, volumes, {})
    for volume in volumes:  # what the worker's loop does next
        predictions.predict_volume(volume["id"], model)

    assert counting.calls == len(volumes)  # the painted volume was inferred once, not twice
    expected, expected_report = choose_cleanup([raw[0]], [ws.label_volume(volumes[0]["id"])], 3)
    assert expected.steps and report == {"mode": "auto", "volumes": 1, "classes": expected_report}
    assert any((expected.apply(labels) != labels).any() for labels in raw)  # the clean-up changes something
    for volume, labels in zip(volumes, raw):
        written = np.load(predictions.folder(model["id"], volume["id"]) / LABELS_NAME)
        np.testing.assert_array_equal(written, expected.apply(labels))
    # the painted volume's mask with its paint certain is cleaned by the same decision
    with_paint = np.load(predictions.folder(model["id"], volumes[0]["id"]) / WITH_PAINT_NAME)
    np.testing.assert_array_equal(with_paint, expected.apply(raw_with_paint))
    assert not (predictions.folder(model["id"], volumes[1]["id"]) / WITH_PAINT_NAME).exists()  # nothing painted
    saved = json.loads((folder / DECISION_FILE).read_text())
    assert saved["cleanup"] == expected.to_dict()
    assert "clean-up decided on 1 painted volume" in cleanup_words(report)

    again = load_predictor(folder, device="cpu")  # a restarted server, or the CLI, reads the decision
    assert not again.cleanup_pending and again.cleanup.to_dict() == expected.to_dict()
    assert predictions.settle_cleanup(model, volumes, {}) is None  # decided once


def test_a_stop_before_the_decision_leaves_it_pending(tmp_path):
    ws, project, volumes = project_with_two_volumes(tmp_path)
    folder = deferred_model(tmp_path / "model")
    model = ws.add_model(project["id"], None, str(folder), {}, {}, [])
    predictions = Predictions(ws, device="cpu")
    assert predictions.settle_cleanup(model, volumes, {}, keep_going=lambda: False) is None
    assert not (folder / DECISION_FILE).exists() and load_predictor(folder, device="cpu").cleanup_pending


def test_without_a_painted_volume_nothing_is_cleaned_and_the_message_says_why(tmp_path):
    ws, project, volumes = project_with_two_volumes(tmp_path)
    folder = deferred_model(tmp_path / "model")
    model = ws.add_model(project["id"], None, str(folder), {}, {}, [])
    report = Predictions(ws, device="cpu").settle_cleanup(model, volumes[1:], {})
    assert report["volumes"] == 0 and load_predictor(folder, device="cpu").cleanup is None
    assert cleanup_words(report).startswith("masks not cleaned up: no painted volume")
