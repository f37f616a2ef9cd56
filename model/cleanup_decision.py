"""The "auto" clean-up decision from predicted and painted label volumes (model/postprocess.py says when it
is taken), and its file beside model.pt for a decision taken after training (`defer_cleanup`). No torch:
the server decides in its own process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data.atomic import atomic_write_bytes
from data.mask_cleanup import Cleanup, choose_cleanup
from model.config import TrainConfig


def decide_from(
    predictions: list[np.ndarray], painted: list[np.ndarray], num_classes: int
) -> tuple[Cleanup | None, dict]:
    """The "auto" decision from raw (uncleaned) predicted labels and the painted label volumes of the same
    volumes (IGNORE where nothing is painted)."""
    if not predictions:
        return None, {"mode": "auto", "volumes": 0, "reason": "no painted volume to decide on"}
    cleanup, report = choose_cleanup(predictions, painted, num_classes)
    return cleanup, {"mode": "auto", "volumes": len(predictions), "classes": report}


DECISION_FILE = "cleanup.json"


def is_deferred(saved_cleanup: dict | None, cfg: TrainConfig) -> bool:
    """True when the model's "auto" clean-up was left to its first predictions."""
    return saved_cleanup is None and cfg.cleanup == "auto" and cfg.defer_cleanup


def save_decision(model_dir: str | Path, cleanup: Cleanup | None, report: dict) -> None:
    payload = {"cleanup": cleanup.to_dict() if cleanup else None, "report": report}
    atomic_write_bytes(Path(model_dir) / DECISION_FILE, json.dumps(payload, indent=1).encode())


def load_decision(model_dir: str | Path) -> tuple[bool, Cleanup | None]:
    """(whether a decision was saved, the clean-up it chose or None for none)."""
    path = Path(model_dir) / DECISION_FILE
    if not path.exists():
        return False, None
    saved = json.loads(path.read_text())["cleanup"]
    return True, Cleanup.from_dict(saved) if saved else None
