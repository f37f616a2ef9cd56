"""Saving and loading training state and models; every write is atomic (temp, fsync, rename).

Files hold only tensors and plain Python values, so `torch.load(weights_only=True)` reads them:
loading a model never executes pickled code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from data.atomic import atomic_write

MODEL_FORMAT = "slicewise-model-1"
GLOBAL_FORMAT = "slicewise-global-1"
CHECKPOINT_FORMAT = "slicewise-checkpoint-1"


def save(obj: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which file, not a pickle traceback
        raise ValueError(f"{path} is not a readable slicewise model or checkpoint: {e}") from e


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def weights_of(saved: dict[str, Any]) -> dict[str, torch.Tensor]:
    """U-Net weights from a model.pt, global.pt or checkpoint.pt dictionary."""
    for key in ("state_dict", "model"):
        if key in saved and isinstance(saved[key], dict):
            return saved[key]
    raise ValueError("file holds no U-Net weights (expected a slicewise model.pt, global.pt or checkpoint.pt)")


def load_matching(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> int:
    """Copy every tensor whose name and shape match (e.g. all but a head with another class count)."""
    own = module.state_dict()
    usable = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    module.load_state_dict(usable, strict=False)
    return len(usable)
