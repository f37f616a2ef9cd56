"""Suggestions for a volume or a whole project, from the workspace and the cached predictions; the
ranking itself is app/suggest.py (pure functions)."""

from __future__ import annotations

import numpy as np

from app import suggest
from app.predictions import Predictions
from data.store import Workspace


def _content_reader(ws: Workspace, volume_id: int, painted: list[tuple[int, int]]):
    def content_of(axis: int) -> np.ndarray | None:
        masks = {index: ws.get_annotation(volume_id, a, index)[0] for a, index in painted if a == axis}
        return suggest.content_scores(ws.volume_array(volume_id), axis, masks)

    return content_of


def for_volume(
    ws: Workspace, predictions: Predictions, volume_id: int, axis: int | None = None, limit: int = 10
) -> dict:
    volume = ws.get_volume(volume_id)
    painted = [(a["axis"], a["index"]) for a in ws.list_annotations(volume["id"])]
    uncertainty = predictions.uncertainty(volume["id"])
    result = suggest.suggest(
        volume["shape"],
        volume["spacing"],
        painted,
        uncertainty,
        axis=axis,
        limit=limit,
        disagreement_by_axis=predictions.disagreement(volume["id"]),
        content_of=_content_reader(ws, volume["id"], painted),
    )
    model = ws.active_model(volume["project_id"])
    return {
        "volume_id": volume["id"],
        "model_id": model["id"] if model and uncertainty is not None else None,
        "painted_slices": len(painted),
        **result,
    }


def for_project(ws: Workspace, predictions: Predictions, project_id: int, limit: int = 10) -> dict:
    """One list across the project's volumes (suggest.project_queue: a started volume is filled first)."""
    project = ws.get_project(project_id)
    per_volume = [for_volume(ws, predictions, v["id"], limit=limit) for v in ws.list_volumes(project["id"])]
    queue = suggest.project_queue(
        [{"volume_id": v["volume_id"], "painted": v["painted_slices"], "slices": v["slices"]} for v in per_volume],
        limit=limit,
    )
    methods = {v["volume_id"]: v["method"] for v in per_volume}
    return {"project_id": project["id"], "slices": [{**s, "method": methods[s["volume_id"]]} for s in queue]}
