"""The 2D U-Net of the method (docs/method.md): InstanceNorm + LeakyReLU, configurable widths, softmax head over K+1 classes.

`forward(x, return_features=True)` also returns the bottleneck (global contrastive stage) and the
last full-resolution decoder features (local contrastive stage), which feed the heads in heads.py.
Any input size works: it is padded to a multiple of 2^depth inside and the outputs cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.InstanceNorm2d(cout, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.InstanceNorm2d(cout, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
    )


class UNet(nn.Module):
    def __init__(
        self, in_channels: int = 1, num_classes: int = 3, widths=(64, 128, 256, 512), bottleneck: int | None = None
    ):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        bottleneck = int(bottleneck or 2 * widths[-1])
        self.widths, self.num_classes, self.bottleneck_channels = widths, num_classes, bottleneck
        self.encoder = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.encoder.append(conv_block(cin, w))
            cin = w
        self.bottleneck = conv_block(cin, bottleneck)
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        cin = bottleneck
        for w in reversed(widths):
            self.up.append(nn.ConvTranspose2d(cin, w, 2, stride=2))
            self.decoder.append(conv_block(2 * w, w))
            cin = w
        self.seg_head = nn.Conv2d(widths[0], num_classes, 1)

    @property
    def depth(self) -> int:
        return len(self.widths)

    @property
    def feature_channels(self) -> int:
        return self.widths[0]

    def pad_input(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        # at least 2 pixels left at the bottleneck: InstanceNorm cannot normalise a single pixel
        m = 2**self.depth
        h, w = x.shape[-2:]
        ph = max(-(-h // m) * m, 2 * m) - h
        pw = max(-(-w // m) * m, 2 * m) - w
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        return x, h, w

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        return skips, self.bottleneck(x)

    def decode(self, skips: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        for up, block, skip in zip(self.up, self.decoder, reversed(skips)):
            x = block(torch.cat([up(x), skip], dim=1))
        return x

    def forward(self, x: torch.Tensor, return_features: bool = False):
        x, h, w = self.pad_input(x)
        skips, bottom = self.encode(x)
        features = self.decode(skips, bottom)
        logits = self.seg_head(features)[..., :h, :w]
        if not return_features:
            return logits
        return logits, {"bottleneck": bottom, "decoder": features[..., :h, :w]}

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights of the encoder and bottleneck only: what the label-free global stage trains."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(("encoder.", "bottleneck."))}
