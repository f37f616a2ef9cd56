"""The optional regularization branch on the U-Net bottleneck (docs/method.md, section 2).

Trained jointly with the fine-tune stage: a painted slice contributes CE + Dice *and* the branch loss,
an unpainted slice only the branch loss, so slices nobody painted still shape the encoder.

* ``cpc``: contrastive predictive coding over the bottleneck grid. Every bottleneck position is a
  patch latent ``z = W_z f`` (1x1 conv). A causal context network (convolutions that only look at the
  current and earlier rows) summarises rows <= i into ``c_i``; a linear map per offset k predicts the
  latent k rows below, ``p = W_k c``. InfoNCE: the positive of a prediction is the true latent at that
  position; the negatives are the latents at every other position of every slice in the batch.
  Unlike the released code of Iwasawa et al. the targets are NOT detached: the loss reaches the
  encoder through both the predictions and the targets (tests/test_regularizer.py checks it).
* ``recon``: a small decoder (transposed convolutions, no skip connections) from the bottleneck back
  to the input image, mean squared error.

Caveat worth knowing: a bottleneck position's receptive field is large, so "k rows ahead" is a
prediction between strongly overlapping contexts; it regularises, it is not a clean CPC task.
The branch is not part of the saved segmentation model (model.pt); inference never runs it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import BRANCHES


def info_nce(pred: torch.Tensor, target: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Mean InfoNCE over N (prediction, target) pairs: row n of ``target`` is the positive of row n of
    ``pred``; every other row of ``target`` is a negative. Both are L2-normalised here; no detach."""
    if pred.shape[0] == 0:
        return pred.sum() * 0.0 + target.sum() * 0.0
    p = F.normalize(pred.float(), dim=1)
    t = F.normalize(target.float(), dim=1)
    logits = p @ t.t() / temperature
    return F.cross_entropy(logits, torch.arange(p.shape[0], device=p.device))


class _CausalRowConv(nn.Module):
    """3x3 convolution whose output row i sees only input rows i-2..i (padding on top, none below)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (1, 1, 2, 0)))


class CPCBranch(nn.Module):
    def __init__(self, in_channels: int, dim: int = 64, steps_ahead: int = 2, temperature: float = 0.1):
        super().__init__()
        self.steps_ahead, self.temperature = int(steps_ahead), float(temperature)
        self.latent = nn.Conv2d(in_channels, dim, 1)
        self.context = nn.Sequential(_CausalRowConv(dim, dim), nn.LeakyReLU(0.01), _CausalRowConv(dim, dim))
        self.predict = nn.ModuleList(nn.Conv2d(dim, dim, 1) for _ in range(self.steps_ahead))

    def latents(self, bottleneck: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, c), both (B, dim, h, w): patch latents and their causal (rows <= i) context."""
        z = self.latent(bottleneck)
        return z, self.context(z)

    def forward(self, bottleneck: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        z, c = self.latents(bottleneck)
        b, d, h, w = z.shape
        losses = []
        for k in range(1, self.steps_ahead + 1):
            if k >= h:
                break
            p = self.predict[k - 1](c[:, :, : h - k])  # predictions made at rows 0..h-k-1
            t = z[:, :, k:]  # the latents k rows below them (targets, not detached)
            losses.append(
                info_nce(p.permute(0, 2, 3, 1).reshape(-1, d), t.permute(0, 2, 3, 1).reshape(-1, d), self.temperature)
            )
        if not losses:
            return bottleneck.sum() * 0.0
        return torch.stack(losses).mean()


class ReconBranch(nn.Module):
    def __init__(self, in_channels: int, depth: int, dim: int = 64, out_channels: int = 1):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, dim, 1), nn.LeakyReLU(0.01)]
        width = dim
        for _ in range(depth):
            nxt = max(8, width // 2)
            layers += [nn.ConvTranspose2d(width, nxt, 2, stride=2), nn.LeakyReLU(0.01)]
            width = nxt
        layers.append(nn.Conv2d(width, out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, bottleneck: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        if image is None:
            raise ValueError("the reconstruction branch needs the (padded) input image")
        out = self.net(bottleneck)
        return F.mse_loss(out.float(), image.float())


def make_branch(
    name: str,
    bottleneck_channels: int,
    depth: int,
    dim: int = 64,
    steps_ahead: int = 2,
    temperature: float = 0.1,
    image_channels: int = 1,
) -> nn.Module | None:
    if name == "none":
        return None
    if name == "cpc":
        return CPCBranch(bottleneck_channels, dim, steps_ahead, temperature)
    if name == "recon":
        return ReconBranch(bottleneck_channels, depth, dim, image_channels)
    raise ValueError(f"branch must be one of {BRANCHES}, got {name!r}")
