"""GET /api/info: the names the server works with, so clients take them from here instead of copying them."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from app.auth import Principal
from app.deps import allow
from app.views import JOB_STAGE_LABELS
from data.store import FINISHED_STATES, JOB_STATES
from data.store_labels import COLOR
from data.store_users import ROLES
from data.volume import BACKGROUND, IGNORE, LABEL_VALUES
from model.config import DEVICES, PRESETS, STAGES
from model.retrain import MODES

router = APIRouter(prefix="/api", tags=["server"])


class StageOut(BaseModel):
    name: str
    label: str = Field(description="How the UI names it")
    training: bool = Field(
        description="A stage of model.train that a Retrain request can switch on or off; the "
        "others are what the job does after training"
    )


class LabelMapOut(BaseModel):
    background: int
    ignore: int = Field(description="The voxel value of 'not annotated' in label volumes and masks")
    min_value: int
    max_value: int
    color_pattern: str
    example: list[dict]


class InfoOut(BaseModel):
    stages: list[StageOut] = Field(description="A job's `stage` values, in the order a job passes them")
    job_states: list[str]
    finished_job_states: list[str]
    modes: list[str] = Field(description="Retrain modes")
    presets: list[str]
    default_preset: str
    devices: list[str]
    roles: list[str] = Field(description="Weakest first; each role can do what the ones before it can")
    ignore: int
    label_map: LabelMapOut


@router.get("/info", response_model=InfoOut, summary="Stages, job states, presets, devices, roles, label values")
def info(request: Request, user: Principal = Depends(allow("viewer", "reading the server's names"))) -> dict:
    return {
        "stages": [
            {"name": name, "label": label, "training": name in STAGES} for name, label in JOB_STAGE_LABELS.items()
        ],
        "job_states": list(JOB_STATES),
        "finished_job_states": list(FINISHED_STATES),
        "modes": list(MODES),
        "presets": list(PRESETS),
        "default_preset": request.app.state.settings.default_preset,
        "devices": list(DEVICES),
        "roles": list(ROLES),
        "ignore": IGNORE,
        "label_map": {
            "background": BACKGROUND,
            "ignore": IGNORE,
            "min_value": LABEL_VALUES.start,
            "max_value": LABEL_VALUES.stop - 1,
            "color_pattern": COLOR.pattern,
            "example": [{"value": 1, "name": "lesion", "color": "#e6194b"}],
        },
    }
