"""Batched torch augmentations.

Spatial transforms come in pairs: one draw of parameters per sample (flip, 90-degree turns, small
rotation, scale = crop/zoom, shift, and optionally a smooth elastic displacement), applied as one warp
to the image (bilinear) and to its label (nearest, IGNORE where the warp leaves the slice). Intensity
transforms change only voxel values, so two intensity views of a slice stay pixel-aligned for the local
contrastive stage.
All randomness comes from the `torch.Generator` passed in, so a resumed run can restore it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from data.volume import IGNORE


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def spatial_params(
    n: int,
    g: torch.Generator,
    flip: bool = True,
    rot90: bool = False,
    rotate_deg: float = 15.0,
    scale_range: tuple[float, float] = (0.85, 1.15),
    shift: float = 0.05,
) -> torch.Tensor:
    """(n, 2, 3) affine matrices (output -> input, normalised coordinates) for `F.affine_grid`."""
    angle = _uniform(n, -rotate_deg, rotate_deg, g) * math.pi / 180
    if rot90:
        angle = angle + torch.randint(0, 4, (n,), generator=g) * (math.pi / 2)
    zoom = _uniform(n, *scale_range, g)
    fx = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    fy = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    # exact zeros and ones for 90-degree multiples, so pure turns are exact permutations of pixels
    cos, sin = torch.cos(angle).double(), torch.sin(angle).double()
    cos, sin = torch.where(cos.abs() < 1e-12, 0.0, cos).float(), torch.where(sin.abs() < 1e-12, 0.0, sin).float()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * fx / zoom, -sin * fy / zoom
    theta[:, 1, 0], theta[:, 1, 1] = sin * fx / zoom, cos * fy / zoom
    theta[:, :, 2] = _uniform(2 * n, -shift, shift, g).view(n, 2)
    return theta


def elastic_displacement(
    n: int, size: tuple[int, int], g: torch.Generator, magnitude: float, control_points: int = 5
) -> torch.Tensor:
    """(n, H, W, 2) smooth random displacement in normalised coordinates (the image spans -1..1).

    Each of `control_points` x `control_points` knots moves by a normal draw of std `magnitude`; bicubic
    interpolation between them keeps the field smooth, so a structure bends instead of tearing."""
    knots = torch.randn(n, 2, control_points, control_points, generator=g) * magnitude
    field = F.interpolate(knots, size=size, mode="bicubic", align_corners=True)
    return field.permute(0, 2, 3, 1)


def warp(
    theta: torch.Tensor,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    displacement: torch.Tensor | None = None,
):
    """Apply the same per-sample affine (then displacement, if given) to images (n, C, H, W) and labels (n, H, W)."""
    ref = images if images is not None else labels[:, None]
    theta = theta.to(ref.device, torch.float32)
    grid = F.affine_grid(theta, [ref.shape[0], 1, *ref.shape[-2:]], align_corners=False)
    if displacement is not None:
        grid = grid + displacement.to(ref.device, torch.float32)
    out_images = out_labels = None
    if images is not None:
        out_images = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    if labels is not None:
        # shift by one so the zero padding of grid_sample marks "outside" and becomes IGNORE
        shifted = labels[:, None].float() + 1
        sampled = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0] - 1
        out_labels = torch.where(sampled < 0, float(IGNORE), sampled).to(labels.dtype)
    return out_images, out_labels


def random_spatial(images, labels=None, *, g: torch.Generator, elastic: float = 0.0, **params):
    """Paired random spatial transform: one draw per sample, applied to image and label alike.

    `elastic` > 0 adds a smooth displacement of that std (see elastic_displacement); at 0 nothing more is
    drawn from g, so runs without it repeat exactly."""
    theta = spatial_params(images.shape[0], g, **params)
    displacement = elastic_displacement(images.shape[0], images.shape[-2:], g, elastic) if elastic > 0 else None
    return warp(theta, images, labels, displacement)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each sample with its own sigma (sigma 0 = unchanged)."""
    n, c, h, w = x.shape
    radius = 3
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    s = sigma.to(x.device).clamp_min(1e-3)[:, None]
    k = torch.exp(-0.5 * (t[None] / s) ** 2)
    k = k / k.sum(1, keepdim=True)  # (n, 2r+1)
    k = k.repeat_interleave(c, dim=0)
    y = x.reshape(1, n * c, h, w)
    y = F.pad(y, (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def random_intensity(
    images: torch.Tensor,
    *,
    g: torch.Generator,
    brightness: float = 0.2,
    contrast: tuple[float, float] = (0.75, 1.25),
    gamma: tuple[float, float] = (0.7, 1.5),
    noise: float = 0.1,
    blur_prob: float = 0.3,
    blur_sigma: tuple[float, float] = (0.5, 1.0),
) -> torch.Tensor:
    """Intensity-only augmentation of normalised images (n, C, H, W); pixel positions never move."""
    n, dev = images.shape[0], images.device
    x = images.float()

    def per_sample(t):
        return t.to(dev).view(n, 1, 1, 1)

    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    span = (x.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(1e-6)
    x = ((x - lo) / span).pow(per_sample(_uniform(n, *gamma, g))) * span + lo
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * per_sample(_uniform(n, *contrast, g)) + mean
    x = x + per_sample(_uniform(n, -brightness, brightness, g))
    blurred = _gaussian_blur(x, _uniform(n, *blur_sigma, g))
    x = torch.where(per_sample(torch.rand(n, generator=g) < blur_prob), blurred, x)
    sigma = per_sample(_uniform(n, 0.0, noise, g))
    return x + sigma * torch.randn(x.shape, generator=g).to(dev)


def random_cutout(images: torch.Tensor, *, g: torch.Generator, max_side: float = 0.5) -> torch.Tensor:
    """Set one random box per sample, each side up to `max_side` of the image's, to the sample's mean.

    The strong view of consistency training: the network has to label the hidden pixels from context."""
    n, _, h, w = images.shape
    x = images.float().clone()
    bh = (torch.rand(n, generator=g) * max_side * h).long().clamp_min(1)
    bw = (torch.rand(n, generator=g) * max_side * w).long().clamp_min(1)
    top = (torch.rand(n, generator=g) * (h - bh + 1)).long()
    left = (torch.rand(n, generator=g) * (w - bw + 1)).long()
    mean = x.mean(dim=(1, 2, 3))
    for i in range(n):
        x[i, :, top[i] : top[i] + bh[i], left[i] : left[i] + bw[i]] = mean[i]
    return x
