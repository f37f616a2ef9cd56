"""Pseudo-labels made volume by volume (`pseudo_volumes` "on", or "auto" where the paint orders the classes),
for the self-training stage.

The slice-by-slice labeller (Trainer.make_pseudo_labels) keeps every confident pixel, islands and holes
included, and the network then learns them back. Here each volume's slices are predicted with the
in-plane mirrors averaged (as `predict_flip` does at inference), the argmax volume gets the 3D clean-up
that the painted voxels choose ("auto", data/mask_cleanup.py: per class, largest component and hole
filling where they do not lower the Dice on what was painted), and a voxel becomes a label where the
averaged softmax is at least `threshold` sure of it or where the clean-up changed it. The clean-up's
decision is taken on the painted volumes' predictions against their paint, so no labelled set is needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from data.class_order import choose_axis
from data.volume import IGNORE
from model.cleanup_decision import decide_from
from model.slices import SliceSet

# (slice indices) -> their softmax, (n, C, S, S)
Probabilities = Callable[[torch.Tensor], torch.Tensor]


def volume_pseudo_labels(
    s: SliceSet,
    pool: torch.Tensor,
    probabilities: Probabilities,
    num_classes: int,
    threshold: float,
    max_seconds: float | None = None,
    g: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(the slices of `pool` that were labelled, their labels (n, S, S) uint8 with IGNORE, a report).

    Every volume that owns a slice of `pool` is labelled whole; the painted volumes come first, as the
    clean-up decision needs them. With `max_seconds`, volumes are labelled until that time is used up (at
    least one), the ones without paint in a random order drawn from `g`."""
    owners = s.volume_index[pool].unique()
    painted = s.volume_index[s.labeled].unique()
    first = owners[torch.isin(owners, painted)]
    rest = owners[~torch.isin(owners, painted)]
    if max_seconds is not None:
        rest = rest[torch.randperm(len(rest), generator=g)]
    raw: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    t0 = time.monotonic()
    for v in [*first.tolist(), *rest.tolist()]:
        if max_seconds is not None and raw and time.monotonic() - t0 > max_seconds:
            break
        idx = _slices_of(s, v)
        probs = torch.cat([probabilities(chunk) for chunk in idx.split(64)])
        conf, label = probs.max(dim=1)
        raw[v] = (label.to(torch.uint8).numpy(), conf.numpy())

    decided_on = [v for v in first.tolist() if v in raw]
    cleanup, decision = decide_from(
        [raw[v][0][(slice(None), *_unpadded(s, v))] for v in decided_on],
        [_paint_of(s, v) for v in decided_on],
        num_classes,
    )
    kept_idx, kept_labels, confident, changed, voxels = [], [], 0, 0, 0
    in_pool = torch.zeros(len(s), dtype=torch.bool)
    in_pool[pool] = True
    for v, (label, conf) in raw.items():
        box = (slice(None), *_unpadded(s, v))
        inside = np.zeros(label.shape, dtype=bool)
        inside[box] = True
        cleaned = label.copy()
        if cleanup is not None:
            cleaned[box] = cleanup.apply(label[box])
        moved = cleaned != label
        pseudo = np.where(inside & ((conf >= threshold) | moved), cleaned, IGNORE).astype(np.uint8)
        idx = _slices_of(s, v)
        wanted = in_pool[idx].numpy()
        confident += int((pseudo[wanted] != IGNORE).sum())
        changed += int(moved[wanted].sum())
        voxels += int(inside[wanted].sum())
        kept_idx.append(idx[wanted])
        kept_labels.append(torch.from_numpy(pseudo)[wanted])
    idx = torch.cat(kept_idx) if kept_idx else torch.empty(0, dtype=torch.long)
    labels = torch.cat(kept_labels) if kept_labels else torch.empty((0, s.size, s.size), dtype=torch.uint8)
    report = {
        "volumes": len(raw),
        "cleanup": decision,
        "confident_fraction": round(confident / voxels, 4) if voxels else 0.0,
        "changed_by_cleanup": changed,
    }
    return idx, labels, report


def paint_orders_classes(s: SliceSet, num_classes: int) -> bool:
    """Whether the paint chooses an axis along which the "auto" clean-up puts the classes in order
    (data/class_order.py): a patch of one class called by the other's name far from their boundary is
    plain only in the whole volume."""
    painted = s.volume_index[s.labeled].unique().tolist()
    along, _ = choose_axis([_paint_of(s, v) for v in painted], num_classes)
    return along is not None


def _slices_of(s: SliceSet, volume: int) -> torch.Tensor:
    where = (s.volume_index == volume).nonzero(as_tuple=True)[0]
    return torch.arange(int(where[0]), int(where[-1]) + 1)


def _unpadded(s: SliceSet, volume: int) -> tuple[slice, slice]:
    """The in-plane part of a volume's slices that is the volume, not the padding around it. The padding
    is never decided on, cleaned or labelled: its paint is IGNORE, so no slice would be fully painted
    there, and the network, never trained on it, may call it structure in one piece larger than the
    structure itself (which "largest" would then keep instead)."""
    if s.inside is None:
        return slice(None), slice(None)
    top, left, height, width = (int(n) for n in s.inside[volume])
    return slice(top, top + height), slice(left, left + width)


def _paint_of(s: SliceSet, volume: int) -> np.ndarray:
    """The volume's paint (slices, rows, cols) without the padding."""
    return s.labels[_slices_of(s, volume)].numpy()[(slice(None), *_unpadded(s, volume))]
