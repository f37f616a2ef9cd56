"""Predict a label volume with a trained model: slice, normalise, run in bounded chunks, crop back.

Only inference lives here (the web process imports it); training is `python -m model.train`.
Memory is bounded by `chunk_pixels`: at most that many input pixels go through the network at
once, so a 512x512x600 CT never has all its logits in memory.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.annotations import impose_paint
from data.mask_cleanup import Cleanup
from data.volume import IGNORE
from model import checkpoint, cleanup_decision, slices
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
    flip: bool | str = False,
    flip_budget_s: float = 15.0,
    report: dict | None = None,
    smooth: float = 0.0,
    painted: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(labels uint8 of array.shape, probs float16 (K, *array.shape) or None).

    `flip`: test-time augmentation, the softmax averaged over the slice as it is and mirrored along each
    in-plane axis (training augments with the same flips), at three times the cost. True / "on" always,
    False / "off" never, "auto" when the two mirrors, extrapolated from the time of the first chunk on this
    machine, add at most `flip_budget_s` to the volume. `smooth` > 0: the softmax of each slice is averaged
    with its neighbours' along the slicing axis (`smooth_slices`) before the argmax, probabilities included;
    a chunk's last slices wait for the next chunk's first. `report`, when given, is filled with what was done.

    `painted`: a sparse label volume of array.shape (IGNORE where not painted). Its voxels are certain: their
    softmax is the painted class's one-hot before the smoothing, so a painted slice pulls its neighbours' as
    any slice does, and the labels returned hold every painted value exactly."""
    flip_mode = {True: "on", False: "off"}.get(flip, flip)
    if flip_mode not in ("auto", "on", "off"):
        raise ValueError(f"flip must be True, False, 'auto', 'on' or 'off', got {flip!r}")
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
    painted_view = None if painted is None else np.moveaxis(_check_painted(painted, array.shape), axis, 0)
    n = array.shape[axis]
    per_chunk = max(1, chunk_pixels // (where.size[0] * where.size[1]))
    flipping = flip_mode == "on"
    reason = {"on": "asked for", "off": "switched off"}.get(flip_mode, "")
    weights = smoothing_weights(smooth)
    radius = len(weights) // 2
    held, held_lo, written = None, 0, 0  # smoothing: softmax of slices held_lo.. kept for their neighbours

    def write(p: torch.Tensor, a: int, b: int) -> None:
        labels_view[a:b] = p.argmax(dim=1).to(torch.uint8).cpu().numpy()
        if return_probs:
            probs_view[:, a:b] = p.transpose(0, 1).to(torch.float16).cpu().numpy()

    for start in range(0, n, per_chunk):
        stop = min(n, start + per_chunk)
        x = _network_input(array, info, start, stop, where, stats)
        if flip_mode == "auto" and start == 0:
            softmax_sum(net, x[:1], runtime, MIRROR_VIEWS[:1])  # warm-up, so that the timing below is the chunk's
        began = time.perf_counter()
        total, views = softmax_sum(net, x, runtime, MIRROR_VIEWS if flipping else MIRROR_VIEWS[:1])
        if flip_mode == "auto" and start == 0:
            # each chunk's mirrors cost about what its plain pass did
            extra_s = 2 * (time.perf_counter() - began) * ((n + per_chunk - 1) // per_chunk)
            flipping = extra_s <= flip_budget_s
            reason = f"the mirrors would add about {extra_s:.1f} s here (budget {flip_budget_s:g} s)"
            if flipping:
                mirrored, more = softmax_sum(net, x, runtime, MIRROR_VIEWS[1:])
                total, views = total + mirrored, views + more
        p = slices.from_network(total / views, where)
        del total
        if painted_view is not None:
            p = with_painted(p, painted_view[start:stop])
        if not radius:
            write(p, start, stop)
            continue
        # a slice is written once the slices `radius` past it are known; each is run through the network once
        held = p if held is None else torch.cat([held, p])
        ready = n if stop == n else stop - radius
        if ready > written:
            write(smooth_slices(held, weights, held_lo, written, ready, n), written, ready)
            keep_from = max(0, ready - radius)
            held, held_lo, written = held[keep_from - held_lo :], keep_from, ready
    if report is not None:
        report.update(flip=flipping, flip_reason=reason)
    if painted is not None:
        labels = impose_paint(labels, painted)
    return labels, probs


def _check_painted(painted, shape) -> np.ndarray:
    painted = np.asarray(painted)
    if painted.shape != tuple(shape):
        raise ValueError(f"painted labels of shape {painted.shape} do not fit the volume's shape {tuple(shape)}")
    return painted


def with_painted(p: torch.Tensor, painted: np.ndarray) -> torch.Tensor:
    """Softmax p (N, K, H, W) of N slices with each painted pixel of `painted` (N, H, W; IGNORE = not painted)
    replaced by its class's one-hot; a painted value the model has no class for leaves the pixel as it was."""
    k = p.shape[1]
    lab = torch.from_numpy(np.ascontiguousarray(painted)).to(device=p.device, dtype=torch.long)
    known = (lab != IGNORE) & (lab < k)
    if not bool(known.any()):
        return p
    onehot = torch.nn.functional.one_hot(lab.clamp(max=k - 1), k).permute(0, 3, 1, 2).to(p.dtype)
    return torch.where(known[:, None], onehot, p)


def _network_input(array, info: dict[str, Any], start: int, stop: int, where, stats) -> torch.Tensor:
    """Slices start..stop-1 along the model's axis as its network takes them: each with its `context`
    neighbours and, for a model trained with it, its place in the volume."""
    axis, n = int(info["axis"]), array.shape[int(info["axis"])]
    context, far = int(info.get("context", 0)), int(info.get("context_far", 0))
    lo, hi = slices.context_range(start, stop, n, context, far)
    x = slices.to_network(stats.apply(slices.slab(array, axis, lo, hi)), where, stats.background)
    x = slices.with_context(x, lo, start, stop, n, context, far)
    return slices.with_position(x, torch.arange(start, stop), n) if info.get("position") else x


def smoothing_slices(sigma_mm: float, spacing, axis: int) -> float:
    """The Gaussian's std in slices along `axis` for one of `sigma_mm`; 0 (off) without a spacing."""
    if not sigma_mm or spacing is None:
        return 0.0
    return float(sigma_mm) / float(spacing[axis])


def smoothing_weights(sigma: float) -> torch.Tensor:
    """A normalised Gaussian of `sigma` slices cut at 3 sigma (at least one neighbour each side); empty
    for sigma 0."""
    if sigma <= 0:
        return torch.zeros(0)
    radius = max(1, math.ceil(3 * sigma))
    w = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) / sigma) ** 2)
    return (w / w.sum()).float()


def smooth_slices(p: torch.Tensor, weights: torch.Tensor, lo: int, start: int, stop: int, n: int) -> torch.Tensor:
    """Slices start..stop-1 of a volume's n slices, each the `weights`-average of its neighbours' softmax;
    p (N, K, H, W) holds slices lo..lo+N-1, every neighbour the weights reach, and past the volume's ends
    its first and last slice stand in."""
    radius = len(weights) // 2
    here = torch.arange(start, stop)
    out = torch.zeros((stop - start, *p.shape[1:]), dtype=p.dtype, device=p.device)
    for d, w in zip(range(-radius, radius + 1), weights.tolist()):
        out += w * p[(here + d).clamp(0, n - 1) - lo]
    return out


MIRROR_VIEWS = ((), (2,), (3,))  # as it is, mirrored left-right, mirrored up-down (dims of an N, C, H, W batch)


def softmax_sum(net: torch.nn.Module, x: torch.Tensor, runtime: Runtime, views) -> tuple[torch.Tensor, int]:
    """(the sum of the softmax over `views` of the batch, each mirrored back, and how many were summed)."""
    total = None
    for dims in views:
        with autocast(runtime):
            logits = net(prepare_input(x.flip(dims) if dims else x, runtime))
        p = torch.softmax(logits.float(), dim=1)
        p = p.flip(dims) if dims else p
        total = p if total is None else total + p
        del logits
    return total, len(views)


@dataclass
class Predictor:
    net: torch.nn.Module
    info: dict[str, Any]  # slice geometry the model was trained with (axis, size, max_size, multiple)
    config: TrainConfig
    num_classes: int
    runtime: Runtime
    cleanup: Cleanup | None = None  # model/postprocess.py decides it once per model
    cleanup_pending: bool = False  # "auto" clean-up left to the first predictions (defer_cleanup)

    def predict(
        self,
        volume_array: np.ndarray,
        spacing=None,
        return_probs: bool = False,
        flip: bool | str | None = None,
        clean: bool = True,
        report: dict | None = None,
        painted: np.ndarray | None = None,
    ):
        """Labels (uint8, same (i, j, k) shape) and, when asked, float16 probabilities (K, i, j, k).

        `flip` (default: the model's `predict_flip`, off for a model trained without mirrors) averages over
        mirrored slices; `clean` applies the model's 3D clean-up to the labels (the probabilities stay as the
        network gave them).

        `spacing` (mm per voxel axis) sizes the model's `predict_smooth_mm` in slices; without it nothing
        is smoothed. Slices are not resampled: the model saw the training volumes at their own voxel grid.

        `painted` (a sparse label volume of the same shape, IGNORE where not painted): the painted voxels are
        taken as certain (see `predict_array`) and the labels returned, cleaned or not, hold them exactly.
        """
        labels, probs = predict_array(
            self.net,
            volume_array,
            self.info,
            self.runtime,
            self.num_classes,
            chunk_pixels=self.config.predict_chunk_pixels,
            return_probs=return_probs,
            flip=self.config.prediction_mirrors if flip is None else flip,
            flip_budget_s=self.config.predict_flip_budget_s,
            report=report,
            smooth=smoothing_slices(self.config.predict_smooth_mm, spacing, int(self.info["axis"])),
            painted=painted,
        )
        if self.cleanup is not None and clean:
            labels = impose_paint(self.cleanup.apply(labels), painted)
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
        x = _network_input(array, info, start, min(n, start + per_chunk), where, stats)
        with autocast(runtime):
            _, feats = net(prepare_input(x, runtime), return_features=True)
        out.append(feats["bottleneck"].float().mean(dim=(2, 3)).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def model_from_file(saved: dict[str, Any]) -> tuple[UNet, TrainConfig, dict[str, Any], int]:
    if saved.get("format") != checkpoint.MODEL_FORMAT:
        raise ValueError(f"not a slicewise model file (format {saved.get('format')!r})")
    config = TrainConfig.from_model_file(saved["config"])
    num_classes = int(saved["num_classes"])
    net = UNet(config.in_channels, num_classes, config.widths, config.bottleneck, position=config.position_channel)
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
    pending = cleanup_decision.is_deferred(saved.get("cleanup"), config)
    if pending:
        decided, cleanup = cleanup_decision.load_decision(path.parent)
        pending = not decided
    return Predictor(net, info, config, num_classes, runtime, cleanup, pending)
