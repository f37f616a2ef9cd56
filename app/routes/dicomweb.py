"""DICOMweb: search the admin's configured PACS, import a study or series, send a predicted mask back."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from app import dicomweb
from app.auth import Principal
from app.deps import allow, get_settings, get_workspace
from app.schemas import ErrorOut
from app.settings import Settings
from app.worker import Worker, get_worker
from data.store import Workspace

router = APIRouter(
    prefix="/api",
    tags=["DICOMweb"],
    responses={
        404: {"model": ErrorOut},
        422: {"model": ErrorOut},
        502: {"model": ErrorOut, "description": "the DICOMweb server failed or refused"},
    },
)


class DicomwebImport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(max_length=100, description="a configured source's name")
    study_uid: str = Field(max_length=64)
    series_uid: str | None = Field(None, max_length=64, description="default: every image series of the study")


class DicomwebStow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(max_length=100)


@router.get("/dicomweb", summary="The DICOMweb sources the admin configured (names only)")
def list_sources(
    settings: Settings = Depends(get_settings), user: Principal = Depends(allow("viewer", "listing DICOMweb sources"))
) -> list[dict]:
    return [{"name": name} for name in dicomweb.sources(settings)]


@router.get("/dicomweb/{source}/studies", summary="Search a source's studies (QIDO-RS)")
def search_studies(
    source: str,
    PatientID: str | None = Query(None, max_length=64),
    PatientName: str | None = Query(None, max_length=64),
    StudyDate: str | None = Query(None, max_length=64, description="YYYYMMDD or a range YYYYMMDD-YYYYMMDD"),
    ModalitiesInStudy: str | None = Query(None, max_length=64),
    AccessionNumber: str | None = Query(None, max_length=64),
    limit: int = Query(100, ge=1, le=1000),
    settings: Settings = Depends(get_settings),
    user: Principal = Depends(allow("viewer", "searching a PACS")),
) -> list[dict]:
    filters = {
        "PatientID": PatientID,
        "PatientName": PatientName,
        "StudyDate": StudyDate,
        "ModalitiesInStudy": ModalitiesInStudy,
        "AccessionNumber": AccessionNumber,
    }
    return dicomweb.search_studies(settings, source, filters, limit)


@router.get("/dicomweb/{source}/studies/{study_uid}/series", summary="A study's series on a source (QIDO-RS)")
def search_series(
    source: str,
    study_uid: str,
    settings: Settings = Depends(get_settings),
    user: Principal = Depends(allow("viewer", "searching a PACS")),
) -> list[dict]:
    return dicomweb.search_series(settings, source, study_uid)


@router.post(
    "/projects/{project_id}/imports/dicomweb",
    status_code=201,
    summary="Import a study (one volume per image series) or one series from a source (WADO-RS)",
)
async def import_dicomweb(
    project_id: int,
    body: DicomwebImport,
    ws: Workspace = Depends(get_workspace),
    settings: Settings = Depends(get_settings),
    user: Principal = Depends(allow("annotator", "importing from a PACS")),
) -> list[dict]:
    return await run_in_threadpool(
        dicomweb.import_study, ws, settings, project_id, body.source, body.study_uid, body.series_uid, user.actor()
    )


@router.post(
    "/volumes/{volume_id}/prediction/stow",
    summary="Send the predicted mask to a source as a DICOM-SEG (STOW-RS; DICOM volumes only)",
)
async def stow_prediction(
    volume_id: int,
    body: DicomwebStow,
    ws: Workspace = Depends(get_workspace),
    settings: Settings = Depends(get_settings),
    worker: Worker = Depends(get_worker),
    user: Principal = Depends(allow("annotator", "sending a mask to a PACS")),
) -> dict:
    result = await run_in_threadpool(dicomweb.stow_prediction, ws, worker.predictions, settings, volume_id, body.source)
    ws.record_audit(user.actor(), "stow_prediction", result)
    return result
