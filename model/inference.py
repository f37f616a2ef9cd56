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


def predict_array(
    net: torch.nn.Module,
    array: np.ndarray,
    info: dict[str, Any],
    runtime: Runtime,
    num_classes: int,
    *,
    painted: np.ndarray | None = None,
    **options,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(labels uint8 of array.shape, probs float16 (K, *array.shape) or None); `options` as
    `predict_variants` takes them.

    `painted`: a sparse label volume of array.shape (IGNORE where not painted). Its voxels are certain: their
    softmax is the painted class's one-hot before the smoothing, so a painted slice pulls its neighbours' as
    any slice does, and the labels returned hold every painted value exactly."""
    (labels,), probs = predict_variants(net, array, info, runtime, num_classes, (painted,), **options)
    return labels, probs


@torch.no_grad()
def predict_variants(
    net: torch.nn.Module,
    array: np.ndarray,
    info: dict[str, Any],
    runtime: Runtime,
    num_classes: int,
    painted_variants: tuple[np.ndarray | None, ...],
    *,
    chunk_pixels: int = 2_000_000,
    return_probs: bool = False,
    flip: bool | str = False,
    flip_budget_s: float = 15.0,
    report: dict | None = None,
    smooth: float = 0.0,
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Several paintings of one volume predicted from one pass through the network: ([labels per entry of
    `painted_variants`, each as predict_array gives it with that `painted`], probs of the first or None).

    `flip`: test-time augmentation, the softmax averaged over the slice as it is and mirrored along each
    in-plane axis (training augments with the same flips), at three times the cost. True / "on" always,
    False / "off" never, "auto" when the two mirrors, extrapolated from the time of the first chunk on this
    machine, add at most `flip_budget_s` to the volume. `smooth` > 0: the softmax of each slice is averaged
    with its neighbours' along the slicing axis (`smooth_slices`) before the argmax, probabilities included;
    a chunk's last slices wait for the next chunk's first. `report`, when given, is filled with what was done.
    At most `chunk_pixels` input pixels go through the network at once."""
    flip_mode = {True: "on", False: "off"}.get(flip, flip)
    if flip_mode not in ("auto", "on", "off"):
        raise ValueError(f"flip must be True, False, 'auto', 'on' or 'off', got {flip!r}")
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {array.shape}")
    axis = int(info["axis"])
    where = slices.placement(array.shape, axis, int(info["max_size"]), int(info["multiple"]), int(info["size"]))
    stats = slices.intensity_stats(array)
    n = array.shape[axis]
    weights = smoothing_weights(smooth)
    painted_variants = tuple(None if v is None else _check_painted(v, array.shape) for v in painted_variants)
    outputs = [
        _SlabWriter(array.shape, axis, num_classes, return_probs and i == 0, weights, painted)
        for i, painted in enumerate(painted_variants)
    ]
    per_chunk = max(1, chunk_pixels // (where.size[0] * where.size[1]))
    flipping = flip_mode == "on"
    reason = {"on": "asked for", "off": "switched off"}.get(flip_mode, "")
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
        for output in outputs:
            output.add(p, start, stop)
    if report is not None:
        report.update(flip=flipping, flip_reason=reason)
    return [output.result() for output in outputs], outputs[0].probs


class _SlabWriter:
    """The labels (and probs) of one painting of a volume, written chunk by chunk along the slicing axis.
    With smoothing, a slice is written once the slices `radius` past it are known; each chunk's softmax
    comes from the network once, whatever the number of writers."""

    def __init__(self, shape, axis: int, num_classes: int, keep_probs: bool, weights: torch.Tensor, painted):
        self.labels = np.empty(shape, dtype=np.uint8)
        self.probs = np.empty((num_classes, *shape), dtype=np.float16) if keep_probs else None
        self.labels_view = np.moveaxis(self.labels, axis, 0)
        self.probs_view = np.moveaxis(self.probs, axis + 1, 1) if keep_probs else None
        self.painted = painted
        self.painted_view = None if painted is None else np.moveaxis(painted, axis, 0)
        self.n, self.weights, self.radius = shape[axis], weights, len(weights) // 2
        self.held, self.held_lo, self.written = None, 0, 0  # softmax of slices held_lo.. kept for their neighbours

    def add(self, p: torch.Tensor, start: int, stop: int) -> None:
        if self.painted_view is not None:
            p = with_painted(p, self.painted_view[start:stop])
        if not self.radius:
            self._write(p, start, stop)
            return
        self.held = p if self.held is None else torch.cat([self.held, p])
        ready = self.n if stop == self.n else stop - self.radius
        if ready > self.written:
            self._write(
                smooth_slices(self.held, self.weights, self.held_lo, self.written, ready, self.n), self.written, ready
            )
            keep_from = max(0, ready - self.radius)
            self.held, self.held_lo, self.written = self.held[keep_from - self.held_lo :], keep_from, ready

    def _write(self, p: torch.Tensor, a: int, b: int) -> None:
        self.labels_view[a:b] = p.argmax(dim=1).to(torch.uint8).cpu().numpy()
        if self.probs_view is not None:
            self.probs_view[:, a:b] = p.transpose(0, 1).to(torch.float16).cpu().numpy()

    def result(self) -> np.ndarray:
        return self.labels if self.painted is None else impose_paint(self.labels, self.painted)


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

    def predict_with_paint(
        self,
        volume_array: np.ndarray,
        painted: np.ndarray,
        spacing=None,
        return_probs: bool = False,
        clean: bool = True,
        report: dict | None = None,
    ):
        """(the model's own labels, the labels with `painted` taken as certain, probs of the first) from one
        pass through the network: what `predict` gives without and with `painted`, at the cost of one."""
        (labels, certain), probs = predict_variants(
            self.net,
            volume_array,
            self.info,
            self.runtime,
            self.num_classes,
            (None, painted),
            chunk_pixels=self.config.predict_chunk_pixels,
            return_probs=return_probs,
            flip=self.config.prediction_mirrors,
            flip_budget_s=self.config.predict_flip_budget_s,
            report=report,
            smooth=smoothing_slices(self.config.predict_smooth_mm, spacing, int(self.info["axis"])),
        )
        if self.cleanup is not None and clean:
            labels, certain = self.cleanup.apply(labels), impose_paint(self.cleanup.apply(certain), painted)
        return labels, certain, probs

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
