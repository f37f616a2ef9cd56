"""Volumes to the 2D slices the network sees, and predictions back to the volume's exact grid.

Each volume is intensity-normalised on its own (robust percentiles, then z-score), cut along one
axis, resized down only when its in-plane extent exceeds `max_size`, and centre-padded to a square
whose side adapts to the data (the largest extent rounded up to a multiple of 2^depth). The
`Placement` of every volume keeps the resize and the pad offsets so outputs crop back exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from data.annotations import most_painted_axis, painted_mask
from data.errors import InvalidInput
from data.volume import IGNORE
from model.config import context_offsets

_STATS_SAMPLE = 2_000_000  # voxels used for the percentiles; enough for stable statistics of any volume


@dataclass(frozen=True)
class IntensityStats:
    lo: float
    hi: float
    mean: float
    std: float

    def apply(self, array: np.ndarray) -> np.ndarray:
        out = np.clip(np.asarray(array, dtype=np.float32), self.lo, self.hi)
        out -= self.mean
        out /= self.std
        return out

    @property
    def background(self) -> float:
        """The normalised value of the darkest voxel: what padding is filled with."""
        return (self.lo - self.mean) / self.std


def intensity_stats(array: np.ndarray) -> IntensityStats:
    flat = np.asarray(array).reshape(-1)
    sample = flat[:: max(1, flat.size // _STATS_SAMPLE)].astype(np.float64)
    lo, hi = np.percentile(sample, [0.5, 99.5])
    clipped = np.clip(sample, lo, hi)
    std = float(clipped.std())
    return IntensityStats(float(lo), float(hi), float(clipped.mean()), std if std > 1e-6 else 1.0)


def slab(array: np.ndarray, axis: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Slices start..stop along `axis` as (n, h, w), the remaining axes in their original order."""
    return np.moveaxis(np.asarray(array), axis, 0)[start:stop]


def annotated_mask(labels: np.ndarray, axis: int) -> np.ndarray:
    """Bool per index along `axis`: the slice has at least one annotated pixel (a line of a slice painted
    along another axis is enough)."""
    other = tuple(a for a in range(3) if a != axis)
    return (np.asarray(labels) != IGNORE).any(axis=other)


def choose_axis(label_volumes: list[np.ndarray], axis: str | int = "auto") -> int:
    """The axis to slice along: the given one, or the one with most painted slices over all volumes."""
    if axis != "auto":
        return int(axis)
    return most_painted_axis(sum(int(painted_mask(lab, a).sum()) for lab in label_volumes) for a in range(3))


def round_up(n: int, multiple: int) -> int:
    return -(-int(n) // multiple) * multiple


@dataclass(frozen=True)
class Placement:
    """Where one volume's slices sit inside the network input of side `size`."""

    axis: int
    plane: tuple[int, int]  # in-plane shape in the volume
    resized: tuple[int, int]  # after the down-resize (== plane when none)
    offset: tuple[int, int]  # top, left padding
    size: tuple[int, int]  # network input (H, W)

    def to_dict(self) -> dict:
        return asdict(self)


def resized_plane(plane: tuple[int, int], max_size: int) -> tuple[int, int]:
    scale = min(1.0, max_size / max(plane))
    return tuple(max(1, int(round(n * scale))) for n in plane)


def training_size(shapes: list[tuple[int, int, int]], axis: int, max_size: int, multiple: int) -> int:
    """Side of the square all training slices are padded to."""
    extent = max(max(resized_plane(_plane(s, axis), max_size)) for s in shapes)
    return max(round_up(extent, multiple), 2 * multiple)


def placement(
    shape: tuple[int, int, int], axis: int, max_size: int, multiple: int, size: int | None = None
) -> Placement:
    """Placement of a volume; `size` (the training side) is used whenever the slices fit in it."""
    plane = _plane(shape, axis)
    resized = resized_plane(plane, max_size)
    if size is not None and max(resized) <= size:
        out = (size, size)
    else:
        out = tuple(max(round_up(n, multiple), 2 * multiple) for n in resized)
    offset = tuple((o - r) // 2 for o, r in zip(out, resized))
    return Placement(axis, plane, resized, offset, out)


def _plane(shape, axis) -> tuple[int, int]:
    return tuple(int(n) for i, n in enumerate(shape) if i != axis)


def to_network(slices: np.ndarray | torch.Tensor, where: Placement, fill: float, labels: bool = False) -> torch.Tensor:
    """(n, h, w) slices -> (n, 1, H, W) float images or (n, H, W) uint8 labels, resized and padded."""
    x = torch.as_tensor(np.ascontiguousarray(slices) if isinstance(slices, np.ndarray) else slices)
    x = x[:, None].float()
    if where.resized != where.plane:
        if labels:
            x = F.interpolate(x, size=where.resized, mode="nearest-exact")
        else:
            x = F.interpolate(x, size=where.resized, mode="bilinear", align_corners=False, antialias=True)
    (top, left), (rh, rw), (h, w) = where.offset, where.resized, where.size
    x = F.pad(x, (left, w - rw - left, top, h - rh - top), value=float(fill))
    return x[:, 0].to(torch.uint8) if labels else x


def from_network(x: torch.Tensor, where: Placement) -> torch.Tensor:
    """(n, C, H, W) network output -> (n, C, h, w) on the volume's in-plane grid (bilinear when resized)."""
    (top, left), (rh, rw) = where.offset, where.resized
    x = x[..., top : top + rh, left : left + rw]
    if where.resized != where.plane:
        x = F.interpolate(x.float(), size=where.plane, mode="bilinear", align_corners=False)
    return x


@dataclass
class SliceSet:
    """Every slice of every training volume, padded to one square size."""

    images: torch.Tensor  # (N, 1, S, S) float16 (halves memory; cast per batch)
    labels: torch.Tensor  # (N, S, S) uint8, IGNORE where not annotated and in padding
    labeled: torch.Tensor  # indices of painted slices
    unlabeled: torch.Tensor  # indices of every other slice
    volume_index: torch.Tensor  # (N,) which input volume each slice came from
    axis: int
    size: int
    context: int = 0  # neighbouring slices on each side given to the network as extra channels (2.5D)
    far: int = 0  # and the slices this far away on each side (model.config.context_offsets)
    first: torch.Tensor | None = None  # (N,) index of the first slice of each slice's volume
    last: torch.Tensor | None = None  # (N,) and of its last
    position: bool = False  # one more channel: the slice's place in its volume (see with_position)
    # (V, 4) per volume: top, left, height, width of its slices inside the padding; None: no padding known
    inside: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def within_volume(self, idx: torch.Tensor) -> torch.Tensor:
        """(n, S, S) bool: the pixels of slices `idx` that are their volume, not the padding around it
        (all True when `inside` is not known)."""
        mask = torch.ones((len(idx), self.size, self.size), dtype=torch.bool)
        if self.inside is None:
            return mask
        top, left, height, width = self.inside[self.volume_index[idx]].unbind(dim=1)
        rows = torch.arange(self.size)
        down = (rows >= top[:, None]) & (rows < (top + height)[:, None])
        across = (rows >= left[:, None]) & (rows < (left + width)[:, None])
        return mask & down[:, :, None] & across[:, None, :]

    def stack(self, idx: torch.Tensor) -> torch.Tensor:
        """The network input of slices `idx`: (n, channels, S, S), each slice between its neighbours of the
        same volume at `context_offsets` (the volume's end slice standing in past it), and with `position`
        the slice's place last."""
        offsets = torch.tensor(context_offsets(self.context, self.far))
        if len(offsets) == 1:
            x = self.images[idx]
        else:
            around = (idx[:, None] + offsets).clamp(self.first[idx][:, None], self.last[idx][:, None])
            x = self.images[around.flatten(), 0].view(len(idx), len(offsets), self.size, self.size)
        if not self.position:
            return x
        return with_position(x, idx - self.first[idx], self.last[idx] - self.first[idx] + 1)


def build_slices(
    images: list[np.ndarray],
    labels: list[np.ndarray | None],
    axis: int,
    max_size: int,
    multiple: int,
    partial: bool = False,
    context: int = 0,
    position: bool = False,
    far: int = 0,
) -> SliceSet:
    """`partial`: a slice with any annotated pixel counts as labelled (training across painted slices, on
    the lines they leave in this axis' slices), not only a fully painted one. `context`, `far`: see SliceSet."""
    labelled_along = annotated_mask if partial else painted_mask
    size = training_size([im.shape for im in images], axis, max_size, multiple)
    all_images, all_labels, painted, owner, inside = [], [], [], [], []
    for v, (image, label) in enumerate(zip(images, labels)):
        stats = intensity_stats(image)
        where = placement(image.shape, axis, max_size, multiple, size)
        inside.append((*where.offset, *where.resized))
        all_images.append(to_network(stats.apply(slab(image, axis)), where, stats.background).half())
        n = image.shape[axis]
        if label is None:
            all_labels.append(torch.full((n, size, size), IGNORE, dtype=torch.uint8))
            painted.append(torch.zeros(n, dtype=torch.bool))
        else:
            all_labels.append(to_network(slab(label, axis), where, IGNORE, labels=True))
            painted.append(torch.from_numpy(labelled_along(label, axis)))
        owner.append(torch.full((n,), v, dtype=torch.long))
    painted_all = torch.cat(painted)
    owners = torch.cat(owner)
    starts = torch.cumsum(torch.tensor([0] + [image.shape[axis] for image in images]), 0)
    return SliceSet(
        images=torch.cat(all_images),
        labels=torch.cat(all_labels),
        labeled=painted_all.nonzero(as_tuple=True)[0],
        unlabeled=(~painted_all).nonzero(as_tuple=True)[0],
        volume_index=owners,
        axis=axis,
        size=size,
        context=context,
        far=far,
        position=position,
        first=starts[owners],
        last=starts[owners + 1] - 1,
        inside=torch.tensor(inside, dtype=torch.long),
    )


def with_context(x: torch.Tensor, lo: int, start: int, stop: int, n: int, context: int, far: int = 0) -> torch.Tensor:
    """Network input of slices start..stop-1 of a volume of n slices, from `x` (m, 1, H, W), its slices
    lo..lo+m-1 (which must include every slice context_range names)."""
    offsets = torch.tensor(context_offsets(context, far))
    if len(offsets) == 1:
        return x
    wanted = torch.arange(start, stop)[:, None] + offsets
    return x[(wanted.clamp(0, n - 1) - lo).flatten(), 0].view(stop - start, len(offsets), *x.shape[-2:])


def with_position(x: torch.Tensor, index: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
    """x (m, C, H, W) with one more channel, constant over each slice: its place `index` (m,) among the n
    slices of its volume along the axis, from -1 at the first slice to 1 at the last (0 for a lone slice)."""
    n = torch.as_tensor(n, dtype=torch.float32).expand(len(x))
    place = torch.where(n > 1, 2 * index.float() / (n - 1).clamp_min(1) - 1, 0.0)
    channel = place.to(x.device).view(-1, 1, 1, 1).expand(-1, 1, *x.shape[-2:])
    # float32: callers may stack inside a bf16 autocast region, where concatenating float16 fails on a CPU
    return torch.cat([x.float(), channel], dim=1)


def context_range(start: int, stop: int, n: int, context: int, far: int = 0) -> tuple[int, int]:
    """The slices with_context needs for start..stop-1."""
    reach = max(context_offsets(context, far))
    return max(0, start - reach), min(n, stop + reach)


def check_labels(
    images: list[np.ndarray],
    labels: list[np.ndarray | None],
    names: list[str],
    num_classes: int | None,
    require_painted: bool = True,
) -> int:
    """Validate sparse label volumes before any training; returns the number of classes (incl. background).

    require_painted=False (a run that learns from no label): nothing painted, or only background, is fine;
    the number of classes is then `num_classes` or at least 2."""
    found_max, painted_any = 0, False
    for image, label, name in zip(images, labels, names):
        if label is None:
            continue
        if label.shape != image.shape:
            raise InvalidInput(
                f"label volume for {name} has shape {tuple(label.shape)} but the image has {tuple(image.shape)}"
            )
        values = np.unique(label)
        if np.issubdtype(values.dtype, np.floating) and not np.all(values == np.round(values)):
            raise InvalidInput(f"label volume for {name} has non-integer values")
        annotated = values[values != IGNORE]
        if annotated.size and (annotated.min() < 0 or (num_classes is not None and annotated.max() >= num_classes)):
            limit = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
            bad = [int(x) for x in annotated if x < 0 or (num_classes is not None and x >= num_classes)]
            raise InvalidInput(
                f"label volume for {name} has values {bad} outside the label map ({limit}, or 255 = not annotated)"
            )
        if annotated.size:
            found_max = max(found_max, int(annotated.max()))
            painted_any = painted_any or any(painted_mask(label, a).any() for a in range(3))
    if not painted_any and require_painted:
        raise InvalidInput(
            "nothing is painted: every label volume is all 255 (not annotated) or has no fully painted slice"
        )
    k = num_classes if num_classes is not None else found_max + 1
    if k < 2 and require_painted:
        raise InvalidInput("the painted slices contain only background (0): paint at least one structure")
    k = max(k, 2)
    if k > 255:
        raise InvalidInput(f"label value {k - 1} is too large: label values are 0..254, 255 means not annotated")
    return k


def sample_patches(
    images: torch.Tensor, labels: torch.Tensor | None, patch: int | None, foreground: float, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None, list[tuple[int, int]]]:
    """Square crops of side `patch` from (n, 1, S, S) images and their (n, S, S) labels -> (images, labels,
    top-left corner of each crop).

    A share `foreground` of the crops (each one drawn independently) is centred on a random pixel of a
    painted structure (label 1..254) of its slice, as nnU-Net oversamples foreground; the rest, and the
    crops of slices without a painted structure, sit anywhere. Slices no larger than `patch` are returned whole.
    """
    n, side = images.shape[0], images.shape[-1]
    if patch is None or patch >= side:
        return images, labels, [(0, 0)] * n
    corners, out_x, out_y = [], [], []
    for i in range(n):
        top, left = (int(v) for v in torch.randint(0, side - patch + 1, (2,), generator=g))
        if labels is not None and float(torch.rand((), generator=g)) < foreground:
            label = labels[i]
            structure = ((label > 0) & (label != IGNORE)).nonzero()
            if len(structure):
                cy, cx = (int(v) for v in structure[int(torch.randint(0, len(structure), (), generator=g))])
                top = min(max(0, cy - patch // 2), side - patch)
                left = min(max(0, cx - patch // 2), side - patch)
        corners.append((top, left))
        out_x.append(images[i, :, top : top + patch, left : left + patch])
        if labels is not None:
            out_y.append(labels[i, top : top + patch, left : left + patch])
    return torch.stack(out_x), (torch.stack(out_y) if labels is not None else None), corners
