"""The clean-up decision taken after training (`defer_cleanup`), kept in a file beside model.pt."""

from __future__ import annotations

import json
from pathlib import Path

from data.atomic import atomic_write_bytes
from data.mask_cleanup import Cleanup
from model.config import TrainConfig

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
