"""DICOMweb: search a PACS (QIDO-RS), import its series as volumes (WADO-RS), send a predicted mask back (STOW-RS).

Sources are what the admin configured (`slicewise serve --dicomweb NAME=URL`, credentials from a file);
a request names a source, never a URL, so no user can make the server fetch an address of their choosing.
Retrieved series go through the same checks and the same import as an uploaded zip of a DICOM series.
"""

from __future__ import annotations

import json
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.settings import Settings
from data import io as volume_io
from data.errors import InvalidInput, NotFound, SlicewiseError, TooLarge
from data.store import Workspace

UID = re.compile(r"[0-9]+(\.[0-9]+)*")
QIDO_FILTERS = ("PatientID", "PatientName", "StudyDate", "ModalitiesInStudy", "AccessionNumber", "StudyInstanceUID")
NOT_IMAGES = {"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "DOC"}
TIMEOUT_S = 60


class SourceError(SlicewiseError):
    """The DICOMweb server failed or refused; the request itself was fine."""

    status = 502


@dataclass(frozen=True)
class Source:
    name: str
    url: str
    auth: dict = field(default_factory=dict, repr=False)


def sources(settings: Settings) -> dict[str, Source]:
    credentials: dict = {}
    if settings.dicomweb_credentials is not None:
        try:
            credentials = json.loads(Path(settings.dicomweb_credentials).read_text())
        except (OSError, ValueError) as exc:
            raise SlicewiseError(f"the DICOMweb credentials file cannot be read ({exc})") from None
    out = {}
    for entry in settings.dicomweb:
        name, _, url = entry.partition("=")
        name = name.strip()
        out[name] = Source(name, url.strip().rstrip("/"), dict(credentials.get(name) or {}))
    return out


def get_source(settings: Settings, name: str) -> Source:
    configured = sources(settings)
    if name not in configured:
        known = ", ".join(sorted(configured)) or "none (the admin adds them with slicewise serve --dicomweb NAME=URL)"
        raise NotFound(f"no DICOMweb source {name!r}; configured sources: {known}")
    return configured[name]


def client(source: Source):
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if source.auth.get("token"):
        session.headers["Authorization"] = f"Bearer {source.auth['token']}"
    elif source.auth.get("username"):
        session.auth = (str(source.auth["username"]), str(source.auth.get("password", "")))
    dicom = DICOMwebClient(url=source.url, session=session, timeout=TIMEOUT_S)
    # its default retries any failure 5 times with exponential back-off: 30 s before an unreachable PACS is reported
    dicom.set_http_retry_params(max_attempts=2, wait_exponential_multiplier=250)
    return dicom


def _call(source: Source, what: str, function, *args, **kwargs):
    import requests

    try:
        return function(*args, **kwargs)
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        if status == 404:
            raise NotFound(f"DICOMweb source {source.name!r} has no such {what}") from None
        raise SourceError(f"DICOMweb source {source.name!r} answered {status} to the {what} request") from None
    except requests.RequestException as exc:
        raise SourceError(f"DICOMweb source {source.name!r} cannot be reached ({type(exc).__name__})") from None


def check_uid(value, what: str) -> str:
    if not isinstance(value, str) or len(value) > 64 or not UID.fullmatch(value):
        raise InvalidInput(f"{what} must be a DICOM UID (digits and dots, at most 64 characters), got {value!r}")
    return value


def check_filters(filters: dict) -> dict:
    out = {}
    for key, value in filters.items():
        if value is None or value == "":
            continue
        if key not in QIDO_FILTERS:
            raise InvalidInput(f"unknown search field {key!r}; use {', '.join(QIDO_FILTERS)}")
        if len(value) > 64 or not all(c.isprintable() for c in value) or "\\" in value:
            raise InvalidInput(f"search field {key} must be at most 64 printable characters, got {value!r}")
        out[key] = value
    return out


def _value(item: dict, tag: str):
    values = (item.get(tag) or {}).get("Value") or []
    if not values:
        return None
    first = values[0]
    if isinstance(first, dict) and "Alphabetic" in first:
        return first["Alphabetic"]
    return values if len(values) > 1 else first


def search_studies(settings: Settings, source_name: str, filters: dict, limit: int) -> list[dict]:
    source = get_source(settings, source_name)
    found = _call(
        source,
        "study search",
        client(source).search_for_studies,
        search_filters=check_filters(filters),
        limit=limit,
        fields=["StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries"],
    )
    return [
        {
            "study_uid": _value(s, "0020000D"),
            "patient_id": _value(s, "00100020"),
            "patient_name": _value(s, "00100010"),
            "study_date": _value(s, "00080020"),
            "description": _value(s, "00081030"),
            "modalities": _as_list(_value(s, "00080061")),
            "accession_number": _value(s, "00080050"),
            "series_count": _value(s, "00201206"),
        }
        for s in found
    ]


def search_series(settings: Settings, source_name: str, study_uid: str) -> list[dict]:
    source = get_source(settings, source_name)
    found = _call(
        source,
        "series search",
        client(source).search_for_series,
        study_instance_uid=check_uid(study_uid, "study_uid"),
        fields=["SeriesDescription", "NumberOfSeriesRelatedInstances"],
    )
    return [
        {
            "series_uid": _value(s, "0020000E"),
            "modality": _value(s, "00080060"),
            "description": _value(s, "0008103E"),
            "series_number": _value(s, "00200011"),
            "instances": _value(s, "00201209"),
        }
        for s in found
    ]


def _as_list(value) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def _series_zip(source: Source, study_uid: str, series_uid: str, folder: Path, max_bytes: int) -> Path:
    """Fetch one series (WADO-RS) into a zip of its instances, stopping at max_bytes."""
    from pydicom.filebase import DicomBytesIO

    path = folder / f"{series_uid}.zip"

    def fetch() -> None:
        total = 0
        instances = client(source).iter_series(study_instance_uid=study_uid, series_instance_uid=series_uid)
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
            for number, dataset in enumerate(instances):  # one instance in memory at a time
                buffer = DicomBytesIO()
                dataset.save_as(buffer, enforce_file_format=True)
                data = buffer.getvalue()
                total += len(data)
                if total > max_bytes:
                    raise TooLarge(
                        f"series {series_uid} is larger than the upload limit of {max_bytes / (1 << 20):g} MB"
                    )
                archive.writestr(f"{number:05d}.dcm", data)

    _call(source, "series", fetch)
    return path


def import_study(
    ws: Workspace,
    settings: Settings,
    project_id: int,
    source_name: str,
    study_uid: str,
    series_uid: str | None,
    who: str,
) -> list[dict]:
    """One volume per image series of the study (or just `series_uid`); every series is fetched and checked
    before the first is imported, so a refused series adds nothing."""
    source = get_source(settings, source_name)
    study_uid = check_uid(study_uid, "study_uid")
    project_id = ws.get_project(project_id)["id"]
    if series_uid is not None:
        check_uid(series_uid, "series_uid")
    wanted = [
        (s["series_uid"], s["description"] or s["series_uid"])
        for s in search_series(settings, source_name, study_uid)
        if s["series_uid"]
        and str(s["modality"] or "").upper() not in NOT_IMAGES
        and series_uid in (None, s["series_uid"])
    ]
    if not wanted:
        which = "no image series" if series_uid is None else f"no image series {series_uid}"
        raise NotFound(f"study {study_uid} on {source_name!r} has {which}")
    with tempfile.TemporaryDirectory(prefix=".dicomweb-", dir=ws.root / "tmp") as tmp:
        fetched = []
        for uid, description in wanted:
            path = _series_zip(source, study_uid, uid, Path(tmp), settings.max_upload_bytes)
            name = _file_name(description)
            volume_io.read_upload(path, name, settings.max_expanded_bytes)  # the checks of an upload, up front
            fetched.append((path, name))
        return [ws.import_volume(project_id, path, name, settings.max_expanded_bytes, who) for path, name in fetched]


def _file_name(description: str) -> str:
    clean = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(description))[:100].strip("._") or "series"
    return f"{clean}.zip"


def stow_prediction(ws: Workspace, predictions, settings: Settings, volume_id: int, source_name: str) -> dict:
    """Send the active model's mask of a DICOM volume to the source as a DICOM-SEG referencing its series."""
    import pydicom

    source = get_source(settings, source_name)
    volume = ws.get_volume(volume_id)
    if volume["source"] != "dicom":
        raise InvalidInput(
            f"volume {volume['id']} was not imported from DICOM, so there is no series for a DICOM-SEG to reference"
        )
    folder, model = predictions.ready_folder(volume["id"])
    labels = np.load(folder / "labels.npy")
    project = ws.get_project(volume["project_id"])
    with tempfile.TemporaryDirectory(prefix=".stow-", dir=ws.root / "tmp") as tmp:
        path = volume_io.write_mask_dicom_seg(
            labels,
            ws.load_volume(volume["id"]),
            Path(tmp) / "seg.dcm",
            labels=project["labels"],
            model_version=str(model["id"]),
        )
        seg = pydicom.dcmread(path)
    _call(source, "store", client(source).store_instances, datasets=[seg])
    return {
        "source": source.name,
        "volume_id": volume["id"],
        "model_id": model["id"],
        "study_uid": str(seg.StudyInstanceUID),
        "series_uid": str(seg.SeriesInstanceUID),
        "sop_instance_uid": str(seg.SOPInstanceUID),
        "referenced_series_uid": str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID),
    }
