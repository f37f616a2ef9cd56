"""Handlers of the Gradio page: pure functions of (client, state, inputs) -> Screen, tested without a browser.

`state` is a plain dict {"project_id": int | None, "volume_id": int | None}; handlers never mutate it,
they return a new one. A `Screen` says what to show; fields left as None mean "leave that part as it is".
The painting, retraining and review loop lives on the dedicated viewer page (frontend/static/viewer.*),
which talks to the API from the browser.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from frontend import render
from frontend.client import ApiClient, ApiError

UPLOAD_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".zip")
MASK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".dcm")  # .seg.nrrd ends in .nrrd


def empty_state() -> dict:
    return {"project_id": None, "volume_id": None}


@dataclass
class Screen:
    state: dict
    project_choices: list[tuple[str, int]] | None = None
    project_value: int | None = None
    project_message: str | None = None
    labels_html: str | None = None
    volume_choices: list[tuple[str, int]] | None = None
    volume_value: int | None = None
    volumes_html: str | None = None
    upload_message: str | None = None
    viewer_html: str | None = None
    clear_upload: bool = False
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- pure helpers


def parse_labels(client: ApiClient, text: str) -> list[dict]:
    """The label box's text as a label map; the server owns the syntax. Raises ValueError saying what is wrong
    (ApiError, a refusal other than the text's, passes through)."""
    try:
        return client.parse_labels(text or "")
    except ApiError as exc:
        if exc.status == 422:
            raise ValueError(exc.detail) from None
        raise


def project_choices(projects: Iterable[dict]) -> list[tuple[str, int]]:
    return [(f"{p['name']} (#{p['id']})", int(p["id"])) for p in projects]


def volume_choices(volumes: Iterable[dict]) -> list[tuple[str, int]]:
    return [(f"{v['name']} — {' × '.join(str(n) for n in v['shape'])} (#{v['id']})", int(v["id"])) for v in volumes]


def upload_name(path: str | Path) -> str:
    return Path(path).name


def is_supported_upload(name: str) -> bool:
    return name.lower().endswith(UPLOAD_SUFFIXES)


def _file_path(item) -> str:
    """Gradio gives file paths (str) or objects with .name / .path, depending on the component settings."""
    if isinstance(item, (str, Path)):
        return str(item)
    for attr in ("path", "name"):
        value = getattr(item, attr, None)
        if isinstance(value, str):
            return value
    if isinstance(item, dict) and "path" in item:
        return str(item["path"])
    raise ValueError(f"unexpected upload item {item!r}")


# ---------------------------------------------------------------------------- handlers


def volume_progress(client: ApiClient, volumes: list[dict]) -> dict[int, dict]:
    """Per volume: painted and reviewed slices, the state of its prediction by the active model, and that
    model's validation Dice (the last score)."""
    out: dict[int, dict] = {}
    try:
        scores = {
            m["id"]: ((m.get("metrics") or {}).get("validation") or {}).get("dice_mean")
            for m in (client.list_models(volumes[0]["project_id"]) if volumes else [])
        }
    except ApiError:
        scores = {}
    for v in volumes:
        try:
            painted = client.list_annotations(v["id"])
            prediction = client.prediction_status(v["id"])
        except ApiError:
            continue
        out[v["id"]] = {
            "painted": len(painted),
            "reviewed": sum(1 for a in painted if a.get("reviewed")),
            "prediction": prediction.get("status"),
            "model_id": prediction.get("model_id"),
            "dice": scores.get(prediction.get("model_id")),
        }
    return out


def load_projects(client: ApiClient, state: dict) -> Screen:
    """Page load / refresh: list projects, keep the selected one if it still exists, else pick the first."""
    try:
        projects = client.list_projects()
    except ApiError as exc:
        return Screen(state=state, project_choices=[], project_message=render.message("error", exc.detail))
    ids = [p["id"] for p in projects]
    pid = state.get("project_id") if state.get("project_id") in ids else (ids[0] if ids else None)
    if pid is None:
        return Screen(
            state=empty_state(),
            project_choices=[],
            project_value=None,
            project_message=render.message("info", "No project yet: create one below with its labels."),
            labels_html="",
            volume_choices=[],
            volume_value=None,
            volumes_html=render.volumes_table([]),
            viewer_html=render.viewer_frame(None),
        )
    screen = select_project(
        client,
        {**state, "project_id": pid} if pid == state.get("project_id") else {"project_id": pid, "volume_id": None},
        pid,
    )
    screen.project_choices = project_choices(projects)
    screen.project_value = pid
    return screen


def select_project(client: ApiClient, state: dict, project_id) -> Screen:
    if project_id in (None, ""):
        return Screen(
            state=empty_state(),
            labels_html="",
            volume_choices=[],
            volume_value=None,
            volumes_html=render.volumes_table([]),
            viewer_html=render.viewer_frame(None),
        )
    try:
        project = client.get_project(int(project_id))
        volumes = client.list_volumes(project["id"])
    except ApiError as exc:
        return Screen(state=state, project_message=render.message("error", exc.detail))
    keep = state.get("volume_id") if state.get("project_id") == project["id"] else None
    ids = [v["id"] for v in volumes]
    vid = keep if keep in ids else (ids[0] if ids else None)
    volume = next((v for v in volumes if v["id"] == vid), None)
    text = f'Project "{project["name"]}": {len(volumes)} volume{"s" if len(volumes) != 1 else ""}.' + (
        "" if volumes else " Upload a volume to start."
    )
    return Screen(
        state={"project_id": project["id"], "volume_id": vid},
        project_message=render.message("info", text),
        labels_html=render.labels_legend(project["labels"]),
        volume_choices=volume_choices(volumes),
        volume_value=vid,
        volumes_html=render.volumes_table(volumes, vid, volume_progress(client, volumes)),
        viewer_html=render.viewer_frame(volume),
    )


def create_project(client: ApiClient, state: dict, name: str, labels_text: str) -> Screen:
    name = (name or "").strip()
    if not name:
        return Screen(state=state, project_message=render.message("error", "Give the new project a name."))
    try:
        labels = parse_labels(client, labels_text)
        project = client.create_project(name, labels)
        projects = client.list_projects()
    except ValueError as exc:
        return Screen(state=state, project_message=render.message("error", f"Labels: {exc}"))
    except ApiError as exc:
        return Screen(
            state=state, project_message=render.message("error", f"Could not create the project: {exc.detail}")
        )
    screen = select_project(client, {"project_id": None, "volume_id": None}, project["id"])
    screen.project_choices = project_choices(projects)
    screen.project_value = project["id"]
    screen.project_message = render.message(
        "ok",
        f'Created project "{project["name"]}" with {len(labels)} label{"s" if len(labels) != 1 else ""}. '
        "Now upload volumes.",
    )
    return screen


def upload_files(client: ApiClient, state: dict, files, progress: Callable[[float, str], None] | None = None) -> Screen:
    """Upload each file to the selected project; report every success and every refusal by name."""
    pid = state.get("project_id")
    if pid is None:
        return Screen(state=state, upload_message=render.message("error", "Create or pick a project first."))
    items = [files] if isinstance(files, (str, Path)) else list(files or [])
    if not items:
        return Screen(
            state=state,
            upload_message=render.message(
                "error", "Choose a file first: a .nii or .nii.gz volume, or a .zip of one DICOM series."
            ),
        )
    added, errors = [], []
    for n, item in enumerate(items):
        path = _file_path(item)
        name = upload_name(path)
        if progress:
            progress(n / len(items), f"uploading {name} ({n + 1} of {len(items)})")
        if not is_supported_upload(name):
            errors.append(f"{name}: not a .nii, .nii.gz, .nrrd, .mha or .zip file")
            continue
        try:
            added.append(client.upload_volume(pid, path, filename=name))
        except ApiError as exc:
            errors.append(exc.detail if exc.detail.startswith(name) else f"{name}: {exc.detail}")
        except OSError as exc:
            errors.append(f"{name}: could not read the file ({exc.strerror or exc})")
    if progress:
        progress(1.0, "done")
    screen = select_project(
        client, {"project_id": pid, "volume_id": added[-1]["id"] if added else state.get("volume_id")}, pid
    )
    parts = []
    if added:
        parts.append(
            render.message(
                "ok",
                "Uploaded " + ", ".join(f"{v['name']} ({' × '.join(str(s) for s in v['shape'])})" for v in added) + ".",
            )
        )
    for err in errors:
        parts.append(render.message("error", f"Upload refused — {err}"))
    screen.upload_message = '<div id="upload-result">' + "".join(parts) + "</div>"
    screen.clear_upload = bool(added) and not errors
    return screen


def import_mask(client: ApiClient, state: dict, item) -> Screen:
    """Import a mask volume made elsewhere onto the selected volume: its labelled slices become painted slices."""
    volume_id = state.get("volume_id")
    if volume_id is None:
        return Screen(state=state, extra={"mask_message": render.message("error", "Pick a volume first.")})
    if not item:
        return Screen(
            state=state,
            extra={
                "mask_message": render.message(
                    "error", "Choose a mask file first: .nii, .nii.gz, .nrrd, .seg.nrrd, .mha or a DICOM-SEG .dcm."
                )
            },
        )
    path = _file_path(item)
    name = upload_name(path)
    if not name.lower().endswith(MASK_SUFFIXES):
        return Screen(
            state=state,
            extra={
                "mask_message": render.message(
                    "error", f"Import refused — {name}: not a .nii, .nii.gz, .nrrd, .seg.nrrd, .mha or .dcm file"
                )
            },
        )
    try:
        result = client.import_annotations(volume_id, path, filename=name)
    except ApiError as exc:
        detail = exc.detail if exc.detail.startswith(name) else f"{name}: {exc.detail}"
        return Screen(state=state, extra={"mask_message": render.message("error", f"Import refused — {detail}")})
    except OSError as exc:
        return Screen(
            state=state,
            extra={
                "mask_message": render.message(
                    "error", f"Import refused — {name}: could not read the file ({exc.strerror or exc})"
                )
            },
        )
    slices = ", ".join(str(i) for i in result["slices"])
    return Screen(
        state=state,
        extra={
            "mask_message": render.message(
                "ok",
                f"Imported {name}: slices {slices} on axis {result['axis']} are now painted "
                "(reopen the volume in the viewer to see them).",
            )
        },
    )


def select_volume(client: ApiClient, state: dict, volume_id) -> Screen:
    pid = state.get("project_id")
    if pid is None or volume_id in (None, ""):
        return Screen(state={**state, "volume_id": None}, viewer_html=render.viewer_frame(None))
    try:
        volumes = client.list_volumes(pid)
    except ApiError as exc:
        return Screen(state=state, project_message=render.message("error", exc.detail))
    volume = next((v for v in volumes if v["id"] == int(volume_id)), None)
    if volume is None:
        return Screen(
            state={**state, "volume_id": None},
            viewer_html=render.viewer_frame(None),
            project_message=render.message("error", f"volume {volume_id} is not in this project"),
        )
    return Screen(
        state={**state, "volume_id": volume["id"]},
        volumes_html=render.volumes_table(volumes, volume["id"], volume_progress(client, volumes)),
        viewer_html=render.viewer_frame(volume),
    )
