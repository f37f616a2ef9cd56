"""An exponential moving average of the network's weights over one training stage.

With `TrainConfig.weight_average` = d > 0 every fine-tune and self-training step also updates an average of
the U-Net's weights, and the stage ends by putting that average into the network: the self-training stage
labels its slices with the fine-tune stage's average and the model file holds the self-training stage's.
The average starts as the weights after the stage's first step; the n-th step after that keeps
min(d, (1 + n) / (10 + n)) of the average (n from 0, as TensorFlow's ExponentialMovingAverage counts), so
a short stage, a 20 s refresh, is not held at its first weights.
"""

from __future__ import annotations

import torch


class WeightAverage:
    def __init__(self, module: torch.nn.Module, decay: float):
        self.module, self.decay, self.steps = module, decay, 0
        self.average: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self) -> None:
        """Fold the module's weights after an optimizer step into the average."""
        current = self.module.state_dict()
        if not self.average:
            self.average = {k: v.detach().clone() for k, v in current.items()}
        else:
            keep = min(self.decay, self.steps / (9 + self.steps))  # n = self.steps - 1
            for k, v in current.items():
                if v.is_floating_point():
                    self.average[k].mul_(keep).add_(v.detach(), alpha=1 - keep)
                else:
                    self.average[k].copy_(v)
        self.steps += 1

    def finish(self) -> int:
        """Put the average into the module and start afresh; how many steps it held (0 = none, unchanged)."""
        steps = self.steps
        if self.average:
            self.module.load_state_dict(self.average)
        self.average, self.steps = {}, 0
        return steps

    def state(self) -> dict:
        return {"steps": self.steps, "average": {k: v.detach().cpu().clone() for k, v in self.average.items()}}

    def load(self, saved: dict | None) -> None:
        saved = saved or {}
        device = next(self.module.parameters()).device
        self.average = {k: v.to(device) for k, v in (saved.get("average") or {}).items()}
        self.steps = int(saved.get("steps", 0))
