"""Float32 training that sees bf16's rounding: cheap stand-ins for bf16 autocast on CPUs without native bf16.

Where bf16 autocast runs emulated (many times slower than float32), these cost a few elementwise casts per
layer. Three strengths, all computing in float32 (the config's `bf16` value picks one, BF16_STAND_INS):

* `RoundConvolutionsToBf16` ("rounded"): every convolution's input, weight and bias is rounded to the nearest
  bf16 value; gradients pass the rounding unchanged (straight-through).
* `EmulateBf16Autocast` ("emulated"): the layers bf16 autocast runs in bf16 here (convolutions, linear layers,
  matrix products) get their operands rounded and their outputs too, by plain casts, so the backward pass
  rounds the gradients at the same places autocast's bf16 backward stores them.
* `EmulateBf16Everywhere` ("emulated-all"): as "emulated", and every other op whose inputs autocast would
  hold in bf16 (normalisation, activation, pooling, padding, concatenation after a convolution) has its
  output rounded too; ops on float32 inputs (an intensity augmentation before the network) are left alone.
"""

from __future__ import annotations

import weakref

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
# what CPU autocast casts to bf16 among the ops a slicewise network calls
AUTOCAST_BF16_OPS = CONVOLUTIONS | {
    F.linear,
    torch.matmul,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.mm,
    torch.bmm,
    torch.addmm,
}


def round_to_bf16(x: torch.Tensor) -> torch.Tensor:
    """`x` rounded to bf16 (round to nearest even) and held as its own dtype; the gradient passes unchanged."""
    if not x.is_floating_point() or x.dtype == torch.bfloat16:
        return x
    rounded = x.detach().to(torch.bfloat16).to(x.dtype)
    return x + (rounded - x).detach() if x.requires_grad else rounded


def cast_through_bf16(x: torch.Tensor) -> torch.Tensor:
    """`x` rounded to bf16 and back by plain casts: the gradient is rounded to bf16 on its way back too."""
    if not x.is_floating_point() or x.dtype == torch.bfloat16:
        return x
    return x.to(torch.bfloat16).to(x.dtype)


def _map_tensors(fn, args, kwargs):
    args = tuple(fn(a) if isinstance(a, torch.Tensor) else a for a in args)
    return args, {k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


class RoundConvolutionsToBf16(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in CONVOLUTIONS:
            args, kwargs = _map_tensors(round_to_bf16, args, kwargs)
        return func(*args, **kwargs)


class EmulateBf16Autocast(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in AUTOCAST_BF16_OPS:
            return func(*args, **kwargs)
        args, kwargs = _map_tensors(cast_through_bf16, args, kwargs)
        out = func(*args, **kwargs)
        return cast_through_bf16(out) if isinstance(out, torch.Tensor) else out


class EmulateBf16Everywhere(EmulateBf16Autocast):
    """Rounds as if every tensor that bf16 autocast would hold in bf16 were bf16: the outputs of
    `AUTOCAST_BF16_OPS`, and the outputs of any other op whose floating-point tensor inputs are all such
    tensors (autocast promotes a mix of bf16 and float32 to float32, and leaves float32-only ops alone).
    Parameters are not counted: they are float32, and a normalisation layer keeps its bf16 input's dtype."""

    def __enter__(self):
        self.bf16_valued: dict[int, weakref.ref] = {}  # id -> the tensor; an entry leaves with its tensor
        return super().__enter__()

    def _is_bf16_valued(self, tensors: list) -> bool:
        floats = [t for t in tensors if t.is_floating_point() and not isinstance(t, torch.nn.Parameter)]
        return bool(floats) and all(self._held(t) for t in floats)

    def _held(self, t: torch.Tensor) -> bool:
        ref = self.bf16_valued.get(id(t))
        return ref is not None and ref() is t

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in AUTOCAST_BF16_OPS:
            return self._mark(super().__torch_function__(func, types, args, kwargs))
        inputs = _tensors_in((args, kwargs))
        out = func(*args, **kwargs)
        # an in-place op hands back its input, which must stay the tensor the caller holds
        if not isinstance(out, torch.Tensor) or any(out is t for t in inputs):
            return out
        return self._mark(cast_through_bf16(out)) if self._is_bf16_valued(inputs) else out

    def _mark(self, out):
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            key, held = id(out), self.bf16_valued
            held[key] = weakref.ref(out, lambda _, key=key: held.pop(key, None))
        return out


def _tensors_in(obj) -> list:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors_in(item)]
    return []


BF16_STAND_INS = {
    "rounded": RoundConvolutionsToBf16,
    "emulated": EmulateBf16Autocast,
    "emulated-all": EmulateBf16Everywhere,
}
