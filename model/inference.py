"""Predict a label volume with a trained model: slice, normalise, run in bounded chunks, crop back.

Only inference lives here (the web process imports it); training is `python -m model.train`.
Memory is bounded by `chunk_pixels`: at most that many input pixels go through the network at
once, so a 512x512x600 CT never has all its logits in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.mask_cleanup import Cleanup
from model import checkpoint, slices
from model.config import TrainConfig
from model.device import Runtime, autocast, prepare_input, prepare_model, runtime_for
from model.unet import UNet


@torch.no_grad()
def predict_array(
    net: torch.nn.Module,
    array: np.ndarray,
    info: dict[str, Any],
    runtime: Runtime,
    num_classes: int,
    chunk_pixels: int = 2_000_000,
    return_probs: bool = False,
    flip: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(labels uint8 of array.shape, probs float16 (K, *array.shape) or None).

    `flip`: test-time augmentation, the softmax averaged over the slice as it is and mirrored along each
    in-plane axis (training augments with the same flips), at three times the cost."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {array.shape}")
    axis = int(info["axis"])
    where = slices.placement(array.shape, axis, int(info["max_size"]), int(info["multiple"]), int(info["size"]))
    stats = slices.intensity_stats(array)
    labels = np.empty(array.shape, dtype=np.uint8)
    probs = np.empty((num_classes, *array.shape), dtype=np.float16) if return_probs else None
    labels_view = np.moveaxis(labels, axis, 0)
    probs_view = np.moveaxis(probs, axis + 1, 1) if return_probs else None
    n = array.shape[axis]
    per_chunk = max(1, chunk_pixels // (where.size[0] * where.size[1]))
    for start in range(0, n, per_chunk):
        stop = min(n, start + per_chunk)
        x = slices.to_network(stats.apply(slices.slab(array, axis, start, stop)), where, stats.background)
        p = slices.from_network(_softmax(net, x, runtime, flip), where)
        labels_view[start:stop] = p.argmax(dim=1).to(torch.uint8).cpu().numpy()
        if return_probs:
            probs_view[:, start:stop] = p.transpose(0, 1).to(torch.float16).cpu().numpy()
        del p
    return labels, probs


def _softmax(net: torch.nn.Module, x: torch.Tensor, runtime: Runtime, flip: bool) -> torch.Tensor:
    views = [()] + ([(2,), (3,)] if flip else [])
    total = None
    for dims in views:
        with autocast(runtime):
            logits = net(prepare_input(x.flip(dims) if dims else x, runtime))
        p = torch.softmax(logits.float(), dim=1)
        p = p.flip(dims) if dims else p
        total = p if total is None else total + p
        del logits
    return total / len(views)


@dataclass
class Predictor:
    net: torch.nn.Module
    info: dict[str, Any]  # slice geometry the model was trained with (axis, size, max_size, multiple)
    config: TrainConfig
    num_classes: int
    runtime: Runtime
    cleanup: Cleanup | None = None  # chosen at the end of training (model/postprocess.py)

    def predict(
        self,
        volume_array: np.ndarray,
        spacing=None,
        return_probs: bool = False,
        flip: bool | None = None,
        clean: bool = True,
    ):
        """Labels (uint8, same (i, j, k) shape) and, when asked, float16 probabilities (K, i, j, k).

        `flip` (default: the model's `predict_flip`) averages over mirrored slices; `clean` applies the
        model's 3D clean-up to the labels (the probabilities stay as the network gave them).

        `spacing` is accepted for the API's sake; slices are not resampled, the model saw the
        training volumes at their own voxel grid.
        """
        labels, probs = predict_array(
            self.net,
            volume_array,
            self.info,
            self.runtime,
            self.num_classes,
            chunk_pixels=self.config.predict_chunk_pixels,
            return_probs=return_probs,
            flip=self.config.predict_flip if flip is None else flip,
        )
        if self.cleanup is not None and clean:
            labels = self.cleanup.apply(labels)
        return labels, probs

    def embed(self, volume_array: np.ndarray) -> np.ndarray:
        """Per-slice bottleneck embeddings (n_slices, C) along the model's axis."""
        return embed_array(self.net, volume_array, self.info, self.runtime, self.config.predict_chunk_pixels)


@torch.no_grad()
def embed_array(
    net: torch.nn.Module, array: np.ndarray, info: dict[str, Any], runtime: Runtime, chunk_pixels: int = 2_000_000
) -> np.ndarray:
    """One embedding per slice along the model's axis: the bottleneck features averaged over the slice,
    float32 (n_slices, C). Feature-space coverage (app/suggest.coverage_scores) ranks slices with it."""
    array = np.asarray(array)
    axis = int(info["axis"])
    where = slices.placement(array.shape, axis, int(info["max_size"]), int(info["multiple"]), int(info["size"]))
    stats = slices.intensity_stats(array)
    n = array.shape[axis]
    per_chunk = max(1, chunk_pixels // (where.size[0] * where.size[1]))
    out = []
    for start in range(0, n, per_chunk):
        x = slices.to_network(
            stats.apply(slices.slab(array, axis, start, min(n, start + per_chunk))), where, stats.background
        )
        with autocast(runtime):
            _, feats = net(prepare_input(x, runtime), return_features=True)
        out.append(feats["bottleneck"].float().mean(dim=(2, 3)).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def model_from_file(saved: dict[str, Any]) -> tuple[UNet, TrainConfig, dict[str, Any], int]:
    if saved.get("format") != checkpoint.MODEL_FORMAT:
        raise ValueError(f"not a slicewise model file (format {saved.get('format')!r})")
    config = TrainConfig.from_dict(saved["config"])
    num_classes = int(saved["num_classes"])
    net = UNet(1, num_classes, config.widths, config.bottleneck)
    net.load_state_dict(saved["state_dict"])
    return net, config, saved["slices"], num_classes


def load_predictor(model_dir: str | Path, device: str = "auto", speed_cache: str | Path | None = None) -> Predictor:
    """The model of a run folder (or model.pt) ready to predict. Its "auto" speed switches are chosen the
    way training chooses them (model.device.runtime_for), from the same `speed_cache` when given."""
    path = Path(model_dir)
    path = path / "model.pt" if path.is_dir() else path
    saved = checkpoint.load(path)
    net, config, info, num_classes = model_from_file(saved)
    # compile pays off over a long training run, not for one prediction
    runtime = runtime_for(device, config.channels_last, "off", config.bf16, cache=speed_cache)
    net.eval()
    net = prepare_model(net, runtime)
    cleanup = Cleanup.from_dict(saved["cleanup"]) if saved.get("cleanup") else None
    return Predictor(net, info, config, num_classes, runtime, cleanup)
