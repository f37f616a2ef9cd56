"""What the training loop needs to run as one rank of a torch.distributed group (DDP), and nothing more.

Every function answers for a single process when no process group is initialised (or it has one rank):
rank 0 of 1, the config's seed, values passed through unchanged, the step run as it is. So
model/train.py runs the same code single-process and as one DDP rank. Under a group:

- `wrap` puts every module a step trains (U-Net, heads, regularization branch) under one
  DistributedDataParallel, whose forward runs the whole step's loss: DDP needs one forward per
  backward, and a step of the contrastive stages calls the network twice and its heads separately.
  The backward then leaves on every rank the mean of the ranks' gradients.
- `sampling_seed` gives each rank its own stream of batches and augmentations; the weights start
  equal everywhere (DDP broadcasts rank 0's).
- `is_main`: only rank 0 writes checkpoints, progress and the model.
- `agree` and `mean` keep the decisions (a time budget's plan) and the reported losses the same on
  every rank, so every rank takes the same number of steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

RANK_SEED_STRIDE = 1_000_003  # rank r samples with seed + r * this: streams far apart, rank 0 unchanged


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def describe() -> dict | None:
    """What metrics.json records about the group; None when training single-process."""
    if not active():
        return None
    return {"world_size": world_size(), "backend": str(dist.get_backend())}


def sampling_seed(seed: int) -> int:
    return seed + RANK_SEED_STRIDE * rank()


class Step(nn.Module):
    """The modules a training step updates; calling it with a function runs that function (the loss)."""

    def __init__(self, modules: list[nn.Module | None]):
        super().__init__()
        self.parts = nn.ModuleList([m for m in modules if m is not None])

    def forward(self, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        return compute()


def wrap(modules: list[nn.Module | None], device: torch.device) -> nn.Module:
    """-> `step`: `step(lambda: loss)` gives the loss; under a group its backward averages the gradients.

    find_unused_parameters: each stage trains part of the modules (the global stage no decoder, the
    local stage no segmentation head)."""
    step = Step(modules)
    if not active():
        return step
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(step, device_ids=ids, find_unused_parameters=True)


def _device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo takes CPU ones
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(value: int | bool | None) -> int | bool | None:
    """Rank 0's value (an int >= 0, a bool or None) on every rank."""
    if not active():
        return value
    code = -1 if value is None else int(value)
    t = torch.tensor([code], dtype=torch.int64, device=_device())
    dist.broadcast(t, src=0)
    code = int(t.item())
    if code == -1:
        return None
    return bool(code) if isinstance(value, bool) else code


def mean(value: float) -> float:
    """The mean of `value` over the ranks."""
    if not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def barrier() -> None:
    if active():
        dist.barrier()
