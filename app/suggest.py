"""Which slice to paint next: the model's uncertainty and the distance from slices already painted.

Score of an unpainted slice = UNCERTAINTY_WEIGHT * its mean predictive entropy (scaled to 0-1 over the
volume) + (1 - UNCERTAINTY_WEIGHT) * its distance to the nearest painted slice (scaled to 0-1). Without a
model it is the distance alone; with nothing painted the distance counts from the volume's ends, so the
middle comes first. The label-efficiency benchmark (issue "beyond") is meant to settle the method.
"""

from __future__ import annotations

import numpy as np

UNCERTAINTY_WEIGHT = 0.6


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


def slice_means(volume: np.ndarray) -> dict[int, np.ndarray]:
    """Mean of a 3D map over each slice, for the three axes."""
    v = np.asarray(volume, dtype=np.float64)
    return {axis: v.mean(axis=tuple(a for a in range(3) if a != axis)) for axis in range(3)}


def rank_slices(
    n_slices: int,
    painted_indices: list[int],
    uncertainty: np.ndarray | None = None,
    limit: int = 10,
) -> list[dict]:
    dist = distances(n_slices, painted_indices)
    dist_scaled = dist / dist.max() if dist.max() > 0 else dist
    if uncertainty is not None:
        u = np.asarray(uncertainty, dtype=np.float64)
        u_scaled = u / u.max() if u.max() > 0 else np.zeros_like(u)
        score = UNCERTAINTY_WEIGHT * u_scaled + (1 - UNCERTAINTY_WEIGHT) * dist_scaled
    else:
        score = dist_scaled
    painted = set(painted_indices)
    candidates = [i for i in range(n_slices) if i not in painted]
    # ties (e.g. symmetric distances) go to the lower index, so the order is deterministic
    candidates.sort(key=lambda i: (-score[i], i))
    out = []
    for i in candidates[: max(0, limit)]:
        item = {"index": int(i), "score": round(float(score[i]), 6), "distance": int(dist[i])}
        if uncertainty is not None:
            item["uncertainty"] = round(float(uncertainty[i]), 6)
        out.append(item)
    return out


def suggest(
    shape,
    spacing,
    painted: list[tuple[int, int]],
    uncertainty_by_axis: dict[int, np.ndarray] | None,
    axis: int | None = None,
    limit: int = 10,
) -> dict:
    axis = choose_axis(shape, spacing, painted) if axis is None else axis
    painted_here = [index for a, index in painted if a == axis]
    uncertainty = None if uncertainty_by_axis is None else uncertainty_by_axis.get(axis)
    slices = rank_slices(int(shape[axis]), painted_here, uncertainty, limit)
    for item in slices:
        item["axis"] = axis
    return {
        "axis": axis,
        "method": "uncertainty+distance" if uncertainty is not None else "distance",
        "painted": sorted(painted_here),
        "slices": slices,
    }
