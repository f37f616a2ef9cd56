"""Which slice to paint next: pure functions over numpy arrays, one score per slice (higher = paint first).

Strategies (`STRATEGIES`; each one ranks the slices of one axis of one volume):
- "even": the distance to the nearest painted slice, i.e. fill the largest gap (what a person does);
  with nothing painted the middle comes first. An optional extent (first, last slice of the structure,
  e.g. from the current prediction) keeps the picks inside the structure.
- "entropy" / "margin": the model's uncertainty, the slice mean of the per-voxel predictive entropy or
  of 1 - (p_top1 - p_top2).
- "disagreement": the fraction of a slice's voxels where the current and the previous model version's
  predicted labels differ (needs both predictions).
- "coverage": the embedding-space distance of a slice to the nearest painted slice (needs one
  embedding per slice; not cached by the app today, so only the benchmark and tests use it).
- "mix": MIX_WEIGHTS-weighted sum of the available signals, each scaled to 0-1 over the volume.
  Before a model exists the mix is distance times *content*: how much each slice's image, inside the
  region where painted slices hold the structure, looks like the painted slices there (so the far ends
  of the volume, outside the structure, stop coming first once a slice is painted).

`project_queue()` orders a project's suggestions across volumes: a volume already started comes first
until it holds FILL_TO painted slices, then the next one is started (bench/first_slices.py: for the same
paint, half the volumes with twice the slices beat all of them with fewer, docs/benchmarks/first_slices.md).

`suggest()` (used by GET /api/volumes/{id}/suggestions) ranks with DEFAULT_STRATEGY. The choice is
measured by bench/simulated_annotator.py (docs/benchmarks/simulated_annotator.md).
"""

from __future__ import annotations

import numpy as np

UNCERTAINTY_WEIGHT = 0.6  # the mix without a disagreement signal: 0.6 uncertainty + 0.4 distance
STRATEGIES = ("even", "entropy", "margin", "disagreement", "coverage", "mix")
DEFAULT_STRATEGY = "mix"
# weights of the mix (before renormalising over the signals that are available for a volume)
MIX_WEIGHTS = {"uncertainty": UNCERTAINTY_WEIGHT, "distance": 1 - UNCERTAINTY_WEIGHT, "disagreement": 0.3}


def choose_axis(shape, spacing, painted: list[tuple[int, int]]) -> int:
    """The axis the user paints along; before any painting, the one with the coarsest spacing (the
    acquisition's slice axis), ties going to the last axis."""
    if painted:
        axes = [axis for axis, _ in painted]
        return max(set(axes), key=lambda a: (axes.count(a), -a))
    spacing = [float(s) for s in spacing]
    return max(a for a in range(3) if np.isclose(spacing[a], max(spacing)))


def distances(n_slices: int, painted_indices: list[int]) -> np.ndarray:
    idx = np.arange(n_slices)
    if painted_indices:
        painted = np.asarray(sorted(set(painted_indices)))
        return np.abs(idx[:, None] - painted[None, :]).min(axis=1).astype(np.float64)
    return np.minimum(idx + 1, n_slices - idx).astype(np.float64)


def entropy_map(probs: np.ndarray, class_axis: int = 0) -> np.ndarray:
    """Per-voxel predictive entropy (nats) of class probabilities along `class_axis`."""
    p = np.clip(np.asarray(probs, dtype=np.float32), 1e-6, 1.0)
    return -(p * np.log(p)).sum(axis=class_axis)


def margin_map(probs: np.ndarray, class_axis: int = 0) -> np.ndarray:
    """Per-voxel 1 - (p_top1 - p_top2): 0 where the model is sure, 1 where two classes tie."""
    p = np.asarray(probs, dtype=np.float32)
    if p.shape[class_axis] < 2:
        return np.zeros(np.delete(p.shape, class_axis), dtype=np.float32)
    top2 = -np.partition(-p, 1, axis=class_axis)
    first = np.take(top2, 0, axis=class_axis)
    second = np.take(top2, 1, axis=class_axis)
    return 1.0 - (first - second)


def slice_scores(volume_map: np.ndarray, axis: int) -> np.ndarray:
    """Mean of a 3D per-voxel map over each slice along `axis`."""
    v = np.asarray(volume_map, dtype=np.float64)
    return v.mean(axis=tuple(a for a in range(v.ndim) if a != axis))


def disagreement(current: np.ndarray, previous: np.ndarray, axis: int) -> np.ndarray:
    """Per slice along `axis`: the fraction of voxels whose predicted label differs between the current
    and the previous model version."""
    cur, prev = np.asarray(current), np.asarray(previous)
    if cur.shape != prev.shape:
        raise ValueError(f"predictions of different shapes {cur.shape} and {prev.shape}")
    return slice_scores(cur != prev, axis)


def even_scores(n_slices: int, painted_indices: list[int], extent: tuple[int, int] | None = None) -> np.ndarray:
    """Distance to the nearest painted slice (the middle first when nothing is painted). With an extent
    (first, last) the distances count inside it and every slice outside it scores below every slice in it."""
    if extent is None:
        return distances(n_slices, painted_indices)
    lo, hi = max(0, int(extent[0])), min(n_slices - 1, int(extent[1]))
    if lo > hi:
        return distances(n_slices, painted_indices)
    idx = np.arange(n_slices)
    inside = [i for i in painted_indices if lo <= i <= hi]
    if inside:
        d = np.abs(idx[:, None] - np.asarray(inside)[None, :]).min(axis=1).astype(np.float64)
    else:
        d = np.minimum(idx - lo + 1, hi - idx + 1).astype(np.float64)
    out = d.copy()
    outside = (idx < lo) | (idx > hi)
    out[outside] = -np.minimum(np.abs(idx - lo), np.abs(idx - hi))[outside].astype(np.float64)
    return out


def coverage_scores(embeddings: np.ndarray, painted_indices: list[int]) -> np.ndarray:
    """Euclidean distance in embedding space ((n_slices, D)) to the nearest painted slice; with nothing
    painted, the distance to the mean embedding (the most atypical slice first)."""
    e = np.asarray(embeddings, dtype=np.float64)
    if painted_indices:
        ref = e[sorted(set(painted_indices))]
    else:
        ref = e.mean(axis=0, keepdims=True)
    d2 = ((e[:, None, :] - ref[None, :, :]) ** 2).sum(axis=-1)
    return np.sqrt(d2.min(axis=1))


ROI_MARGIN = 0.25  # the structure's in-plane box from the painted slices, widened by this share per side


def structure_box(masks: list[np.ndarray]) -> tuple[slice, slice] | None:
    """In-plane box holding every foreground pixel of the painted slices (1..254), widened by ROI_MARGIN."""
    fg = [(m > 0) & (m != 255) for m in masks]
    union = np.logical_or.reduce(fg) if fg else None
    if union is None or not union.any():
        return None
    box = []
    for axis in (0, 1):
        present = np.nonzero(union.any(axis=1 - axis))[0]
        lo, hi = int(present[0]), int(present[-1]) + 1
        pad = int(np.ceil(ROI_MARGIN * (hi - lo)))
        box.append(slice(max(0, lo - pad), min(union.shape[axis], hi + pad)))
    return box[0], box[1]


def content_scores(image: np.ndarray, axis: int, painted: dict[int, np.ndarray]) -> np.ndarray | None:
    """Per slice along `axis`: the correlation (clipped to 0..1) of the slice's image inside the structure
    box with the mean of the painted slices holding foreground there. None without painted foreground."""
    foreground = {i: m for i, m in painted.items() if ((m > 0) & (m != 255)).any()}
    box = structure_box(list(foreground.values()))
    if box is None:
        return None
    v = np.moveaxis(np.asarray(image, dtype=np.float32), axis, 0)[:, box[0], box[1]]
    flat = v.reshape(len(v), -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1)
    flat = flat / np.where(norms > 0, norms, 1.0)[:, None]
    reference = flat[sorted(foreground)].mean(axis=0)
    reference_norm = float(np.linalg.norm(reference))
    if reference_norm == 0:
        return None
    return np.clip(flat @ (reference / reference_norm), 0.0, 1.0).astype(np.float64)


def _scaled(x: np.ndarray) -> np.ndarray:
    """0-1 scaling over the volume: x / max for a non-negative signal, min-max otherwise."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0:
        return x / hi if hi > 0 else np.zeros_like(x)
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def mix_scores(
    n_slices: int,
    painted_indices: list[int],
    uncertainty: np.ndarray | None = None,
    disagree: np.ndarray | None = None,
    extent: tuple[int, int] | None = None,
    weights: dict[str, float] | None = None,
    content: np.ndarray | None = None,
) -> np.ndarray:
    """Weighted sum of the available signals, each scaled to 0-1 over the volume. Without a model's
    signals, `content` (content_scores) multiplies the distance instead."""
    w = {**MIX_WEIGHTS, **(weights or {})}
    distance = _scaled(even_scores(n_slices, painted_indices, extent))
    if uncertainty is None and disagree is None and content is not None:
        return distance * np.asarray(content, dtype=np.float64)
    parts = [(w["distance"], distance)]
    if uncertainty is not None:
        parts.append((w["uncertainty"], _scaled(uncertainty)))
    if disagree is not None:
        parts.append((w["disagreement"], _scaled(disagree)))
    total = sum(weight for weight, _ in parts) or 1.0
    return sum(weight * part for weight, part in parts) / total


def strategy_scores(
    strategy: str,
    n_slices: int,
    painted_indices: list[int],
    *,
    entropy: np.ndarray | None = None,
    margin: np.ndarray | None = None,
    disagree: np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    extent: tuple[int, int] | None = None,
    content: np.ndarray | None = None,
) -> np.ndarray:
    """One score per slice for `strategy`; a strategy whose signal is missing falls back to "even"."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    signal = {"entropy": entropy, "margin": margin, "disagreement": disagree, "coverage": None}.get(strategy)
    if strategy == "coverage" and embeddings is not None:
        return coverage_scores(embeddings, painted_indices)
    if strategy in ("entropy", "margin", "disagreement") and signal is not None:
        return np.asarray(signal, dtype=np.float64)
    if strategy == "mix":
        unc = entropy if entropy is not None else margin
        return mix_scores(n_slices, painted_indices, unc, disagree, extent, content=content)
    return even_scores(n_slices, painted_indices, extent)


def rank(scores: np.ndarray, painted_indices: list[int], limit: int | None = None) -> list[int]:
    """Unpainted slice indices by descending score; ties go to the lower index (deterministic)."""
    scores = np.asarray(scores, dtype=np.float64)
    painted = set(int(i) for i in painted_indices)
    order = [int(i) for i in np.lexsort((np.arange(len(scores)), -scores)) if int(i) not in painted]
    return order if limit is None else order[: max(0, limit)]


def method_name(
    strategy: str, uncertainty: bool, disagree: bool = False, embeddings: bool = False, content: bool = False
) -> str:
    """What actually ranked the slices (a strategy without its signal falls back to distance)."""
    if strategy == "mix":
        if content and not uncertainty and not disagree:
            return "content+distance"
        parts = (["uncertainty"] if uncertainty else []) + (["disagreement"] if disagree else []) + ["distance"]
        return "+".join(parts)
    have = {"entropy": uncertainty, "margin": uncertainty, "disagreement": disagree, "coverage": embeddings}
    return strategy if have.get(strategy) else "distance"


def rank_slices(
    n_slices: int,
    painted_indices: list[int],
    uncertainty: np.ndarray | None = None,
    limit: int = 10,
    strategy: str | None = None,
    disagree: np.ndarray | None = None,
    content: np.ndarray | None = None,
) -> list[dict]:
    """The top `limit` unpainted slices for `strategy` (default DEFAULT_STRATEGY); `uncertainty` is the
    per-slice mean entropy the app caches with every prediction."""
    strategy = strategy or DEFAULT_STRATEGY
    dist = distances(n_slices, painted_indices)
    score = strategy_scores(
        strategy, n_slices, painted_indices, entropy=uncertainty, margin=uncertainty, disagree=disagree, content=content
    )
    out = []
    for i in rank(score, painted_indices, limit):
        item = {"index": int(i), "score": round(float(score[i]), 6), "distance": int(dist[i])}
        if uncertainty is not None:
            item["uncertainty"] = round(float(uncertainty[i]), 6)
        if disagree is not None:
            item["disagreement"] = round(float(disagree[i]), 6)
        out.append(item)
    return out


def suggest(
    shape,
    spacing,
    painted: list[tuple[int, int]],
    uncertainty_by_axis: dict[int, np.ndarray] | None,
    axis: int | None = None,
    limit: int = 10,
    strategy: str | None = None,
    disagreement_by_axis: dict[int, np.ndarray] | None = None,
    content_of=None,
) -> dict:
    """`content_of(axis) -> content_scores or None` is asked only when no model signal exists (it reads
    the image and the painted masks, which a model's suggestion does not need)."""
    strategy = strategy or DEFAULT_STRATEGY
    axis = choose_axis(shape, spacing, painted) if axis is None else axis
    painted_here = [index for a, index in painted if a == axis]
    uncertainty = None if uncertainty_by_axis is None else uncertainty_by_axis.get(axis)
    disagree = None if disagreement_by_axis is None else disagreement_by_axis.get(axis)
    content = None
    if uncertainty is None and disagree is None and content_of is not None and painted_here:
        content = content_of(axis)
    slices = rank_slices(int(shape[axis]), painted_here, uncertainty, limit, strategy, disagree, content)
    for item in slices:
        item["axis"] = axis
    return {
        "axis": axis,
        "method": method_name(strategy, uncertainty is not None, disagree is not None, content=content is not None),
        "strategy": strategy,
        "painted": sorted(painted_here),
        "slices": slices,
    }


# 5 volumes x 4 slices beat 10 x 2, and 5 x 2 beat 10 x 1, on the work and the unseen volumes (3 seeds,
# docs/benchmarks/first_slices.md); deeper than 4 slices per volume was not measured.
FILL_TO = 4


def _volume_order(volume: dict) -> tuple:
    """Started volumes below FILL_TO first (the most painted of them first), then unpainted ones, then
    volumes at FILL_TO or more (the fewest painted first); ties: higher first score, then lower id."""
    painted = volume["painted"]
    top = -(volume["slices"][0]["score"] if volume["slices"] else 0.0)
    if 0 < painted < FILL_TO:
        return (0, -painted, top, volume["volume_id"])
    return (1 if painted == 0 else 2, painted, top, volume["volume_id"])


def project_queue(per_volume: list[dict], limit: int = 10) -> list[dict]:
    """Interleave per-volume suggestions into one "paint these next" list.

    `per_volume`: one dict per volume, {"volume_id", "painted": painted slices in it, "slices": its ranked
    suggestions (dicts with "axis", "index", "score")}. Round r takes the r-th suggestion of every volume,
    the volumes in `_volume_order`, until `limit`. The list is asked for again after every save, so its
    first entry is what counts: the started volume is filled to FILL_TO before the next is begun."""
    order = sorted(per_volume, key=_volume_order)
    out: list[dict] = []
    depth = max((len(v["slices"]) for v in order), default=0)
    for r in range(depth):
        for v in order:
            if r < len(v["slices"]) and len(out) < limit:
                item = v["slices"][r]
                out.append(
                    {
                        "volume_id": v["volume_id"],
                        "axis": item["axis"],
                        "index": item["index"],
                        "score": item["score"],
                        "painted_in_volume": v["painted"],
                    }
                )
    return out
