"""The suggestions' disagreement signal: where the newest model's mask differs from the model before it."""

from __future__ import annotations

import numpy as np
import torch

from app import suggest
from app.predictions import Predictions
from data.store import Workspace
from helpers_retrain import LABELS, make_untrained_model, synthetic_nifti
from model import checkpoint


def _other_model(src, dst):
    """A second model version: the same network with a changed segmentation head."""
    saved = checkpoint.load(src)
    g = torch.Generator().manual_seed(1)
    for name, tensor in saved["state_dict"].items():
        if name.startswith("seg_head."):
            saved["state_dict"][name] = tensor + torch.randn(tensor.shape, generator=g)
    checkpoint.save(saved, dst)
    return dst


def test_a_new_model_records_where_it_changed_the_mask(tmp_path):
    ws = Workspace(tmp_path / "ws")
    project = ws.create_project("p", LABELS)
    path, _ = synthetic_nifti(tmp_path / "v.nii.gz")
    volume = ws.import_volume(project["id"], path, path.name, 10**9)
    first_file = make_untrained_model(tmp_path / "m1.pt")
    second_file = _other_model(first_file, tmp_path / "m2.pt")
    first = ws.add_model(project["id"], None, str(first_file), {}, {}, [])
    second = ws.add_model(project["id"], None, str(second_file), {}, {}, [])
    predictions = Predictions(ws, device="cpu")

    predictions.predict_volume(volume["id"], first)
    ws.activate_model(project["id"], first["id"])
    assert predictions.disagreement(volume["id"]) is None  # a project's first model has nothing to compare with
    assert predictions.uncertainty(volume["id"]) is not None

    predictions.predict_volume(volume["id"], second)  # predicted while the first one is still active
    ws.activate_model(project["id"], second["id"])
    old = np.load(predictions.folder(first["id"], volume["id"]) / "labels.npy")
    new = np.load(predictions.folder(second["id"], volume["id"]) / "labels.npy")
    assert (old != new).any()
    changed = predictions.disagreement(volume["id"])
    for axis in range(3):
        np.testing.assert_allclose(changed[axis], suggest.disagreement(new, old, axis))
    result = suggest.suggest(
        volume["shape"],
        volume["spacing"],
        [],
        predictions.uncertainty(volume["id"]),
        axis=0,
        disagreement_by_axis=changed,
    )
    assert result["method"] == "uncertainty+disagreement+distance"
