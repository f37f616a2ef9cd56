"""Request and response bodies of the HTTP API (pydantic). The store returns plain dicts; these
models validate what comes in and document (OpenAPI at /docs) what goes out."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from data.store_labels import COLOR
from data.volume import BACKGROUND, IGNORE, LABEL_VALUES


class ErrorOut(BaseModel):
    detail: str = Field(description="What is wrong, in words a person can act on.")


class HealthOut(BaseModel):
    status: str = "ok"
    version: str
    device: str


class Label(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: int = Field(
        ge=LABEL_VALUES.start,
        le=LABEL_VALUES.stop - 1,
        description=f"Voxel value in masks; {BACKGROUND} is background, {IGNORE} means 'not annotated'.",
    )
    name: str = Field(min_length=1, max_length=100)
    color: str = Field(pattern=COLOR.pattern, description="#rrggbb")

    @field_validator("name")
    @classmethod
    def _strip(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("label name must not be blank")
        return name.strip()


class LabelOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    value: int
    name: str
    color: str


class ProjectCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "Hippocampus",
                    "labels": [
                        {"value": 1, "name": "anterior", "color": "#e6194b"},
                        {"value": 2, "name": "posterior", "color": "#3cb44b"},
                    ],
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200)
    labels: list[Label] = Field(min_length=1, max_length=len(LABEL_VALUES))

    @field_validator("name")
    @classmethod
    def _strip(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("project name must not be blank")
        return name.strip()

    @model_validator(mode="after")
    def _unique_labels(self) -> ProjectCreate:
        values = [label.value for label in self.labels]
        names = [label.name.lower() for label in self.labels]
        if len(set(values)) != len(values):
            raise ValueError(f"label values must be unique, got {values}")
        if len(set(names)) != len(names):
            raise ValueError("label names must be unique")
        return self


class ProjectOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int
    name: str
    labels: list[LabelOut]
    created: str | None = None


class VolumeOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int
    project_id: int
    name: str
    shape: list[int] = Field(description="Voxel counts along axes 0, 1, 2 of the stored array.")
    spacing: list[float] = Field(description="Voxel size in mm along axes 0, 1, 2.")
    orientation: str = Field(description="Axis codes of the voxel axes in RAS+ world space, e.g. 'RAS' or 'LPS'.")
    source: str = Field(description="'nifti' or 'dicom'.")
    created: str | None = None


class VolumeDetailOut(VolumeOut):
    affine: list[list[float]] = Field(description="4x4 matrix: voxel (i, j, k, 1) -> world RAS+ mm.")
    dtype: str
    meta: dict[str, Any] = Field(
        default_factory=dict,
        description="Source metadata: for DICOM the study/series/frame-of-reference UIDs, modality, series description.",
    )
