"""Which 3D clean-up a trained model's masks get, decided once per model.

With `cleanup="auto"` the model's predictions of (a few of) the volumes the clinician painted decide: per
class, each clean-up step that does not lower the Dice over the painted voxels is kept
(data/mask_cleanup.py). No labelled set is needed, and a structure that really has several parts on a
painted slice keeps them.

Training decides at its end and stores the decision in model.pt. With `defer_cleanup` (the server, which
predicts every volume after a retrain anyway) training leaves it open and the caller decides from those
predictions (`decide_from`), keeping the decision beside model.pt (model/cleanup_decision.py). Every later
prediction of that model (server, CLI, benchmarks) applies the same.
"""

from __future__ import annotations

import numpy as np
import torch

from data.io import read_volume
from data.mask_cleanup import Cleanup
from data.volume import IGNORE
from model.cleanup_decision import decide_from
from model.config import TrainConfig
from model.device import Runtime
from model.inference import predict_array, smoothing_slices


def decide_cleanup(
    net: torch.nn.Module, cfg: TrainConfig, info: dict, runtime: Runtime, num_classes: int
) -> tuple[Cleanup | None, dict]:
    """(the clean-up to store with the model or None, a report for metrics.json)."""
    if cfg.cleanup == "off":
        return None, {"mode": "off"}
    if cfg.cleanup == "all":
        return Cleanup.everything(num_classes), {"mode": "all"}
    if cfg.defer_cleanup:
        return None, {"mode": "auto", "deferred": "decided from the predictions made after training"}
    predictions, painted = [], []
    for image_path, label_path in zip(cfg.images, cfg.labels):
        if len(predictions) >= cfg.cleanup_volumes:
            break
        if not label_path:
            continue
        label = np.asarray(read_volume(label_path).array)
        if not (label != IGNORE).any():
            continue
        volume = read_volume(image_path)
        image = np.asarray(volume.array)
        pred, _ = predict_array(
            net,
            image,
            info,
            runtime,
            num_classes,
            chunk_pixels=cfg.predict_chunk_pixels,
            flip=cfg.prediction_mirrors,
            smooth=smoothing_slices(cfg.predict_smooth_mm, volume.spacing, int(info["axis"])),
        )
        predictions.append(pred)
        painted.append(label)
    return decide_from(predictions, painted, num_classes)
