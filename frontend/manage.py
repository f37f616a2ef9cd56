"""Handlers of the "Manage this project" panel: edit labels, delete a volume or the whole project.
Pure functions of (client, state, inputs) -> Screen, like frontend/handlers.py."""

from __future__ import annotations

from frontend import handlers, render
from frontend.client import ApiClient, ApiError
from frontend.handlers import Screen


def labels_text(labels: list[dict]) -> str:
    """The label map as editable lines `value name #rrggbb` (the value keeps painted voxels attached)."""
    return "\n".join(f"{int(label['value'])} {label['name']} {label['color']}" for label in labels)


def project_labels_text(client: ApiClient, state: dict) -> str:
    if state.get("project_id") is None:
        return ""
    try:
        return labels_text(client.get_project(state["project_id"])["labels"])
    except ApiError:
        return ""


def save_labels(client: ApiClient, state: dict, text: str) -> Screen:
    pid = state.get("project_id")
    if pid is None:
        return Screen(state=state, project_message=render.message("error", "Pick a project first."))
    try:
        labels = handlers.parse_labels(client, text)
        project = client.update_labels(pid, labels)
    except ValueError as exc:
        return Screen(state=state, project_message=render.message("error", f"Labels: {exc}"))
    except ApiError as exc:
        return Screen(state=state, project_message=render.message("error", f"Labels not changed: {exc.detail}"))
    screen = handlers.select_project(client, state, pid)
    names = ", ".join(f"{label['value']} {label['name']}" for label in project["labels"])
    screen.project_message = render.message("ok", f'Labels of "{project["name"]}" saved: {names}')
    return screen


def delete_volume(client: ApiClient, state: dict, confirm: str) -> Screen:
    vid, pid = state.get("volume_id"), state.get("project_id")
    if vid is None:
        return Screen(state=state, project_message=render.message("error", "Select the volume to delete first."))
    try:
        removed = client.delete_volume(vid, (confirm or "").strip())
    except ApiError as exc:
        return Screen(state=state, project_message=render.message("error", f"Not deleted: {exc.detail}"))
    screen = handlers.select_project(client, {"project_id": pid, "volume_id": None}, pid)
    screen.project_message = render.message(
        "ok",
        f'Deleted volume "{removed["name"]}" with {removed["annotations"]} painted slice'
        f"{'s' if removed['annotations'] != 1 else ''}.",
    )
    return screen


def delete_project(client: ApiClient, state: dict, confirm: str) -> Screen:
    pid = state.get("project_id")
    if pid is None:
        return Screen(state=state, project_message=render.message("error", "Pick the project to delete first."))
    try:
        removed = client.delete_project(pid, (confirm or "").strip())
    except ApiError as exc:
        return Screen(state=state, project_message=render.message("error", f"Not deleted: {exc.detail}"))
    screen = handlers.load_projects(client, handlers.empty_state())
    screen.project_message = render.message(
        "ok",
        f'Deleted project "{removed["name"]}": {removed["volumes"]} volumes, {removed["annotations"]} '
        f"painted slices, {removed['models']} models.",
    )
    return screen
