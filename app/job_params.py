"""The `params` of a train job row: what was asked, what the worker decided, and how far it got.

`JobParams.from_dict` is the only way params enter from the store and it refuses unknown keys and
wrong types by name, like TrainConfig; `to_dict` is what the row keeps (JSON).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from model.retrain import MODES, mode_message, stronger_mode

# JSON key -> field name where the two differ ("global" is a Python keyword)
_KEY_OF = {"global_stage": "global"}
_FIELD_OF = {key: name for name, key in _KEY_OF.items()}
_OPTIONAL = (type(None),)
_NUMBER = (int, float)


@dataclass(frozen=True)
class JobParams:
    # ---- the request (the latest one when several coalesced)
    preset: str | None = None
    stages: dict = field(default_factory=dict)  # Retrain body stages: name -> bool | {enabled, epochs, steps}
    mode_requested: str | None = None  # auto | refresh | full
    requests: int = 1  # how many Retrain presses this job answers
    who: str = "local"
    # ---- decided when the job starts (model.retrain.plan_retrain)
    mode: str | None = None  # refresh | full
    mode_reason: str | None = None
    label_map: list[int] | None = None
    from_model_id: int | None = None  # refresh: the model it fine-tunes
    base_model_id: int | None = None  # refresh: the last full retrain behind that model
    global_stage: dict | None = None  # how the global stage is obtained (RetrainPlan.global_stage)
    annotations_seen: list[dict] = field(default_factory=list)
    # ---- the run
    resume: bool = False  # queued again to continue from its checkpoint
    resumes: int = 0  # times a server restart resumed it
    oom_retry: bool = False  # runs again with half the batch sizes after running out of memory
    model_id: int | None = None  # the model it made, once active
    loss: float | None = None  # the latest training loss
    runner: str | None = None  # which JobRunner ran the training: "local" | "ray"
    engine_id: str | None = None  # that engine's id of the run (a Ray actor id); None for a local process
    ddp_workers: int | None = None  # the DDP ranks (Ray Train workers) it trained as, when more than one

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> JobParams:
        d = dict(d or {})
        known = {f.name: f for f in fields(cls)}
        names = {_FIELD_OF.get(key, key): value for key, value in d.items()}
        unknown = sorted(key for key in d if _FIELD_OF.get(key, key) not in known)
        if unknown:
            raise ValueError(f"unknown job params: {', '.join(unknown)}")
        problems = [
            f"{_KEY_OF.get(name, name)} must be {what}, got {value!r}"
            for name, value in names.items()
            for what in [_type_problem(name, value)]
            if what
        ]
        if problems:
            raise ValueError("invalid job params: " + "; ".join(problems))
        return cls(**names)

    def to_dict(self) -> dict[str, Any]:
        return {_KEY_OF.get(f.name, f.name): getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes: Any) -> JobParams:
        return dataclasses.replace(self, **changes)

    def joined(self, preset: str, stages: dict, mode: str) -> JobParams:
        """A later request joining this queued one: its preset and stages, the stronger mode (full > auto > refresh)."""
        return self.replace(
            preset=preset,
            stages=stages,
            requests=self.requests + 1,
            mode_requested=stronger_mode(self.mode_requested, mode),
        )

    @property
    def shown_mode(self) -> str | None:
        """What the job does: "refresh" | "full" once it started, until then the request ("auto" too)."""
        return self.mode or self.mode_requested

    def mode_message(self) -> str:
        """How the job trains, once decided, e.g. "refresh: fine-tuning model 3 (auto: ...)"."""
        return mode_message(self.mode, self.mode_reason, self.from_model_id, self.global_stage)


_TYPES: dict[str, tuple[type, ...]] = {
    "preset": (str, *_OPTIONAL),
    "stages": (dict,),
    "mode_requested": (str, *_OPTIONAL),
    "requests": (int,),
    "who": (str,),
    "mode": (str, *_OPTIONAL),
    "mode_reason": (str, *_OPTIONAL),
    "label_map": (list, *_OPTIONAL),
    "from_model_id": (int, *_OPTIONAL),
    "base_model_id": (int, *_OPTIONAL),
    "global_stage": (dict, *_OPTIONAL),
    "annotations_seen": (list,),
    "resume": (bool,),
    "resumes": (int,),
    "oom_retry": (bool,),
    "model_id": (int, *_OPTIONAL),
    "loss": (*_NUMBER, *_OPTIONAL),
    "runner": (str, *_OPTIONAL),
    "engine_id": (str, *_OPTIONAL),
    "ddp_workers": (int, *_OPTIONAL),
}
_CHOICES = {"mode_requested": (*MODES, None), "mode": ("refresh", "full", None)}


def _type_problem(name: str, value: Any) -> str | None:
    types = _TYPES[name]
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        return " or ".join("null" if t is type(None) else t.__name__ for t in types)
    if name in _CHOICES and value not in _CHOICES[name]:
        return "one of " + ", ".join(str(c) for c in _CHOICES[name])
    return None
