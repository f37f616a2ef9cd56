"""Time budgets for training runs: how many steps a stage takes so the run ends within its seconds.

A `Budget` shares the run's seconds out stage by stage: when a stage starts, it gets the seconds left
times its share among the stages still to run (so a stage that ended early leaves its time to the
next ones). A `StageClock` runs the stage's first `probe` steps, measures them (the first step, which
warms kernels up, excluded), and fixes the stage's length to the steps that fit in what is left of its
share, never more than the configured (nominal) steps, and plans again every `probe` steps from the
recent step time (the first steps of a stage are slower than the rest). It also says when the share is used up, so a
machine that slows down mid-stage still ends the stage on time. The clock is injectable for tests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

PROBE_STEPS = 5
LR_DECAYS = ("constant", "poly")
POLY_EXPONENT = 0.9  # nnU-Net's


def lr_factor(mode: str, done: int, total: int) -> float:
    """What a stage's learning rate is multiplied by for its step number done + 1 of total.

    "poly" is nnU-Net's (1 - done / total) ** 0.9: full at the first step, small but not 0 at the last."""
    if mode == "constant" or total <= 0:
        return 1.0
    return max(0.0, 1.0 - done / total) ** POLY_EXPONENT


class StageClock:
    def __init__(
        self,
        seconds: float,
        nominal_steps: int,
        clock: Callable[[], float] = time.monotonic,
        probe: int = PROBE_STEPS,
        planned: int | None = None,
    ):
        self.clock, self.seconds, self.nominal, self.probe = clock, seconds, nominal_steps, probe
        self.start = clock()
        self.deadline = self.start + seconds
        self.planned = planned  # None until the probe steps are measured
        self.fixed = planned is not None  # a resumed stage keeps the length it had planned
        self.step_s: float | None = None
        self._marks: list[float] = []

    def after_step(self, done: int) -> int | None:
        """Call after each step (done = steps of this stage so far) -> the planned total when it changed.

        The plan is made after `probe` steps and made again every `probe` steps from the recent step
        time, because the first steps of a stage run slower (kernels warming up) than the rest."""
        now = self.clock()
        self._marks.append(now)
        window = 2 * self.probe
        k = min(window, len(self._marks) - 1)  # step durations after the first one
        if k >= 1:
            self.step_s = (self._marks[-1] - self._marks[-1 - k]) / k
            del self._marks[: -1 - window]
        if done < self.probe or done % self.probe or (self.planned is not None and self.fixed):
            return None
        step_s = self.step_s if self.step_s and self.step_s > 0 else 1e-9
        fits = done + math.floor(max(0.0, self.deadline - now) / step_s)
        planned = max(done, min(self.nominal, fits))
        if planned == self.planned:
            return None
        self.planned = planned
        return planned

    def over(self) -> bool:
        return self.clock() >= self.deadline

    def total(self) -> int:
        return self.nominal if self.planned is None else self.planned

    def eta(self, done: int) -> float:
        """Seconds this stage still needs: by the measured step time, never past its deadline."""
        left = max(0.0, self.deadline - self.clock())
        if self.step_s is None:
            return left
        return min(left, max(0, self.total() - done) * self.step_s)


class Budget:
    def __init__(self, seconds: float, shares: dict[str, float], clock: Callable[[], float] = time.monotonic):
        self.seconds, self.shares, self.clock = seconds, shares, clock
        self.start = clock()

    def left(self) -> float:
        return max(0.0, self.seconds - (self.clock() - self.start))

    def allot(self, stage: str, later: list[str]) -> float:
        """Seconds for `stage` now, with `later` stages still to run after it."""
        mine = self.shares.get(stage, 0.0)
        total = mine + sum(self.shares.get(s, 0.0) for s in later)
        return self.left() * (mine / total if total > 0 else 1.0)

    def stage(
        self, stage: str, later: list[str], nominal_steps: int, planned: int | None = None, probe: int = PROBE_STEPS
    ) -> StageClock:
        return StageClock(self.allot(stage, later), nominal_steps, self.clock, probe, planned)

    def later_eta(self, current: StageClock, later: list[str]) -> float:
        """An upper bound for the seconds of the stages after `current`: what the budget leaves after it."""
        if not any(self.shares.get(s, 0.0) > 0 for s in later):
            return 0.0
        return max(0.0, self.start + self.seconds - max(self.clock(), current.deadline))
