"""Projection heads of the two contrastive stages; neither is part of the saved segmentation model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GlobalHead(nn.Module):
    """SimCLR MLP on the average-pooled bottleneck; the NT-Xent loss normalises its output."""

    def __init__(self, in_channels: int, out_dim: int = 128, hidden: int | None = None):
        super().__init__()
        hidden = hidden or in_channels
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, bottleneck: torch.Tensor) -> torch.Tensor:
        return self.mlp(bottleneck.mean(dim=(-2, -1)))


class LocalHead(nn.Module):
    """1x1 convolutions from the last decoder block to per-pixel unit embeddings (B, out_dim, H, W)."""

    def __init__(self, in_channels: int, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 1), nn.ReLU(inplace=True), nn.Conv2d(in_channels, out_dim, 1)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(features), dim=1)
