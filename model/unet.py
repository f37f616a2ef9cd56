"""The 2D U-Net of the method (docs/method.md): InstanceNorm + LeakyReLU, configurable widths, softmax head over K+1 classes.
`dims=3` builds the same network with 3D layers (bench/sparse_3d.py); a 2D model's weights are unchanged.

`position=True`: the input's last channel is the slice's place in its volume, given to the 1 x 1 segmentation
head next to the decoder features (not to the encoder). `forward(x, return_features=True)` also returns the bottleneck (global contrastive stage) and the
last full-resolution decoder features (local contrastive stage), which feed the heads in heads.py.
Any input size works: it is padded to a multiple of 2^depth inside and the outputs cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LAYERS = {
    2: (nn.Conv2d, nn.InstanceNorm2d, nn.ConvTranspose2d, F.max_pool2d),
    3: (nn.Conv3d, nn.InstanceNorm3d, nn.ConvTranspose3d, F.max_pool3d),
}


POSITION_BINS = 8


def place_features(place: torch.Tensor) -> torch.Tensor:
    """(n, 1, *spatial) places in [-1, 1] -> (n, POSITION_BINS, *spatial): Gaussian bumps centred on evenly
    spaced places (each 1 at its centre, the next centre 1 sigma away). A 1 x 1 head then learns an offset per
    class and stretch of the volume, where the single scalar needed a large weight learnt at Adam's pace."""
    centres = torch.linspace(-1, 1, POSITION_BINS, device=place.device, dtype=place.dtype)
    sigma = 2 / (POSITION_BINS - 1)
    shape = (1, POSITION_BINS) + (1,) * (place.dim() - 2)
    return torch.exp(-0.5 * ((place - centres.view(shape)) / sigma) ** 2)


def conv_block(cin: int, cout: int, dims: int = 2) -> nn.Sequential:
    conv, norm = LAYERS[dims][:2]
    return nn.Sequential(
        conv(cin, cout, 3, padding=1, bias=False),
        norm(cout, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
        conv(cout, cout, 3, padding=1, bias=False),
        norm(cout, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
    )


class UNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 3,
        widths=(64, 128, 256, 512),
        bottleneck: int | None = None,
        dims: int = 2,
        position: bool = False,
    ):
        super().__init__()
        # the input's last channel is the slice's place in its volume (constant over the slice); only the
        # segmentation head sees it, because InstanceNorm would remove a constant channel from every layer
        self.position = position
        if dims not in LAYERS:
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        self.dims = dims
        conv, _, up, self._pool = LAYERS[dims]
        widths = tuple(int(w) for w in widths)
        bottleneck = int(bottleneck or 2 * widths[-1])
        self.widths, self.num_classes, self.bottleneck_channels = widths, num_classes, bottleneck
        self.encoder = nn.ModuleList()
        cin = in_channels - int(position)
        for w in widths:
            self.encoder.append(conv_block(cin, w, dims))
            cin = w
        self.bottleneck = conv_block(cin, bottleneck, dims)
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        cin = bottleneck
        for w in reversed(widths):
            self.up.append(up(cin, w, 2, stride=2))
            self.decoder.append(conv_block(2 * w, w, dims))
            cin = w
        self.seg_head = conv(widths[0] + (POSITION_BINS if position else 0), num_classes, 1)

    @property
    def depth(self) -> int:
        return len(self.widths)

    @property
    def feature_channels(self) -> int:
        return self.widths[0]

    def pad_input(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """x padded at the end of each spatial axis, and its height and width (a 3D input's last two)."""
        padded, shape = self._pad(x)
        return padded, shape[-2], shape[-1]

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        # at least 2 pixels left at the bottleneck: InstanceNorm cannot normalise a single pixel
        m = 2**self.depth
        shape = tuple(x.shape[-self.dims :])
        pads = [max(-(-n // m) * m, 2 * m) - n for n in shape]
        if any(pads):
            x = F.pad(x, [p for pad in reversed(pads) for p in (0, pad)])
        return x, shape

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(skip features, bottleneck) of a (padded) network input; its place channel is left out."""
        return self._encode(x[:, :-1] if self.position else x)

    def _encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self._pool(x, 2)
        return skips, self.bottleneck(x)

    def decode(self, skips: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        for up, block, skip in zip(self.up, self.decoder, reversed(skips)):
            x = block(torch.cat([up(x), skip], dim=1))
        return x

    def forward(self, x: torch.Tensor, return_features: bool = False):
        x, shape = self._pad(x)
        skips, bottom = self.encode(x)
        features = self.decode(skips, bottom)
        crop = (..., *(slice(0, n) for n in shape))
        head_input = (
            torch.cat([features, place_features(x[:, -1:]).to(features.dtype)], dim=1) if self.position else features
        )
        logits = self.seg_head(head_input)[crop]
        if not return_features:
            return logits
        return logits, {"bottleneck": bottom, "decoder": features[crop]}

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights of the encoder and bottleneck only: what the label-free global stage trains."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(("encoder.", "bottleneck."))}
