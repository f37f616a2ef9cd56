"""Float32 training that sees bf16's rounding: a cheap stand-in for bf16 autocast on CPUs without native bf16.

Inside `RoundConvolutionsToBf16`, every convolution (1D/2D/3D, transposed too) gets its input, weight and
bias rounded to the nearest bf16 value and then computes in float32. Gradients pass the rounding unchanged
(straight-through), so the optimiser still updates float32 weights with float32 gradients. Where bf16 autocast
runs emulated (many times slower than float32), this costs a few elementwise casts per convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

CONVOLUTIONS = frozenset(
    {
        F.conv1d,
        F.conv2d,
        F.conv3d,
        F.conv_transpose1d,
        F.conv_transpose2d,
        F.conv_transpose3d,
    }
)


def round_to_bf16(x: torch.Tensor) -> torch.Tensor:
    """`x` rounded to bf16 (round to nearest even) and held as its own dtype; the gradient passes unchanged."""
    if not x.is_floating_point() or x.dtype == torch.bfloat16:
        return x
    rounded = x.detach().to(torch.bfloat16).to(x.dtype)
    return x + (rounded - x).detach() if x.requires_grad else rounded


class RoundConvolutionsToBf16(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in CONVOLUTIONS:
            args = tuple(round_to_bf16(a) if isinstance(a, torch.Tensor) else a for a in args)
            kwargs = {k: round_to_bf16(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        return func(*args, **kwargs)
