"""Saving a slice and scoring it against the model that had not seen it (prequential evaluation).

The score is taken before the slice can train anything: against the project's active model, when
that model's prediction of the volume is ready and the slice was not among the annotations it was
trained on. Scoring never costs the user their save: the annotation is committed first, and a
failure to score is logged, not raised.
"""

from __future__ import annotations

import logging

import numpy as np

from app.predictions import Predictions
from data.store import Workspace
from data.store_scores import slice_dice

log = logging.getLogger("slicewise.scores")


def _seen_by(model: dict, volume_id: int, axis: int, index: int) -> bool:
    return any(
        int(a.get("volume_id", -1)) == volume_id and int(a.get("axis", -1)) == axis and int(a.get("index", -1)) == index
        for a in model.get("annotations_seen") or []
    )


def score_slice(
    ws: Workspace,
    predictions: Predictions,
    volume_id: int,
    axis: int,
    index: int,
    version: int,
    mask: np.ndarray,
    kind: str,
) -> dict | None:
    """Record how the active model predicted this slice -> the score row, or None when there is no
    model to score (none yet, its prediction of the volume not ready, or it trained on this slice)."""
    volume = ws.get_volume(volume_id)
    model = ws.active_model(volume["project_id"])
    if (
        model is None
        or _seen_by(model, volume["id"], axis, index)
        or not predictions.is_ready(volume["id"], model["id"])
    ):
        return None
    predicted, _ = predictions.slice(volume["id"], axis, index)
    return ws.record_slice_score(model["id"], volume["id"], axis, index, version, kind, slice_dice(mask, predicted))


def save_and_score(
    ws: Workspace,
    predictions: Predictions,
    volume_id: int,
    axis: int,
    index: int,
    mask: np.ndarray,
    *,
    author: str,
    expected_version: int | None,
    reviewed: bool = False,
    kind: str = "painted",
) -> dict:
    """Save the annotation (the commit that matters), then score it; returns the saved annotation row."""
    saved = ws.save_annotation(
        volume_id, axis, index, mask, author=author, expected_version=expected_version, reviewed=reviewed
    )
    try:
        score_slice(ws, predictions, saved["volume_id"], axis, index, saved["version"], mask, kind)
    except Exception:
        log.exception("scoring slice %s/%s/%s against the active model failed", volume_id, axis, index)
    return saved
