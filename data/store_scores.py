"""Prequential scores: how well a model version predicted slices it never saw.

Each slice saved after a model was trained (painted, corrected or an accepted prediction) is first
compared with that model's prediction of the slice, then becomes training data for the next retrain.
So every model version gets a score on data no stage of its training saw, without a separate
labelled set. One row per (model, slice): a slice saved several times (autosave while painting) keeps
the score of its latest version.

Mixed into data.store.Workspace (which provides `db`, `get_model`, `get_volume`).
"""

from __future__ import annotations

import numpy as np

from data.store_db import now
from data.volume import IGNORE

SCORE_KINDS = ("painted", "accepted")

SCORES_SCHEMA = """
CREATE TABLE IF NOT EXISTS slice_scores (
    model_id INTEGER NOT NULL REFERENCES models(id),
    volume_id INTEGER NOT NULL REFERENCES volumes(id),
    axis INTEGER NOT NULL,
    "index" INTEGER NOT NULL,
    version INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('painted', 'accepted')),
    dice REAL,
    created TEXT NOT NULL,
    PRIMARY KEY (model_id, volume_id, axis, "index")
);
"""


def slice_dice(painted: np.ndarray, predicted: np.ndarray) -> float | None:
    """Mean Dice over the foreground classes present in either mask, on the annotated pixels only
    (IGNORE pixels take no part). None when neither holds foreground there: an empty slice rightly
    left empty says nothing about how well the structure is found."""
    painted, predicted = np.asarray(painted), np.asarray(predicted)
    if painted.shape != predicted.shape:
        raise ValueError(f"painted {painted.shape} and predicted {predicted.shape} slices differ in shape")
    annotated = painted != IGNORE
    truth, guess = painted[annotated], predicted[annotated]
    classes = sorted((set(np.unique(truth).tolist()) | set(np.unique(guess).tolist())) - {0, IGNORE})
    if not classes:
        return None
    scores = []
    for c in classes:
        t, g = truth == c, guess == c
        scores.append(2.0 * float((t & g).sum()) / float(t.sum() + g.sum()))
    return float(np.mean(scores))


class ScoresMixin:
    def _create_scores_schema(self) -> None:
        self.db.apply_schema(SCORES_SCHEMA)

    def record_slice_score(
        self, model_id, volume_id, axis: int, index: int, version: int, kind: str, dice: float | None
    ) -> dict:
        if kind not in SCORE_KINDS:
            raise ValueError(f"score kind must be one of {SCORE_KINDS}, got {kind!r}")
        model, volume = self.get_model(model_id), self.get_volume(volume_id)
        with self.db.write() as con:
            con.execute(
                'INSERT OR REPLACE INTO slice_scores (model_id, volume_id, axis, "index", version, kind, dice, created)'
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (model["id"], volume["id"], int(axis), int(index), int(version), kind, dice, now()),
            )
        return self.db.one(
            'SELECT * FROM slice_scores WHERE model_id = ? AND volume_id = ? AND axis = ? AND "index" = ?',
            (model["id"], volume["id"], int(axis), int(index)),
        )

    def slice_scores(self, model_id) -> list[dict]:
        model = self.get_model(model_id)
        return self.db.all(
            'SELECT * FROM slice_scores WHERE model_id = ? ORDER BY volume_id, axis, "index"', (model["id"],)
        )

    def prequential_summary(self, model_id) -> dict:
        """{"dice": mean over scored slices or None, "slices": slices with a score, "saved": slices saved}."""
        rows = self.slice_scores(model_id)
        scored = [r["dice"] for r in rows if r["dice"] is not None]
        return {
            "dice": round(float(np.mean(scored)), 4) if scored else None,
            "slices": len(scored),
            "saved": len(rows),
            "accepted": sum(1 for r in rows if r["kind"] == "accepted"),
        }
