"""What the MONAI Label-compatible routes answer, built from the workspace, the worker and the predictions.

One slicewise project is one MONAI Label app: its volumes are the datastore's images (image id = the volume
id), its painted slices the label of tag "final", its active model version the one model, its retrain
the one trainer. Nothing here keeps state of its own.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from app import suggest
from app.worker import job_view
from data.errors import InvalidInput, NotFound
from data.store import Workspace
from data.volume import IGNORE

MODEL = "slicewise"
FINAL_TAG = "final"
STRATEGIES = {
    "slicewise": "the volume whose best next slice helps most (model uncertainty, change since the last "
    "retrain, distance from painted slices)",
    "random": "a random volume with no painted slice",
    "first": "the first volume with no painted slice",
}
TASK_STATUS = {
    "queued": "SUBMITTED",
    "running": "RUNNING",
    "succeeded": "DONE",
    "failed": "ERROR",
    "cancelled": "STOPPED",
}


def volume_of(ws: Workspace, project_id: int, image: str | None) -> dict:
    """The project's volume named by a MONAI Label image id, or NotFound."""
    text = str(image or "").strip()
    if not text.isdigit() or len(text) > 18:
        raise NotFound(f"no image {image!r} in this project (image ids are the volume ids, e.g. '3')")
    volume = ws.get_volume(int(text))
    if volume["project_id"] != int(project_id):
        raise NotFound(f"no image {image!r} in this project")
    return volume


def check_model(model: str) -> None:
    if model != MODEL:
        raise NotFound(f"no model {model!r}: this server has one model per project, {MODEL!r}")


def check_tag(tag: str | None) -> str:
    tag = tag or FINAL_TAG
    if tag != FINAL_TAG:
        raise InvalidInput(f"label tag must be {FINAL_TAG!r}: slicewise keeps one label per image (its painted slices)")
    return tag


def label_map(ws: Workspace, project_id: int) -> dict[str, int]:
    return {str(item["name"]): int(item["value"]) for item in ws.get_project(project_id)["labels"]}


def datastore_stats(ws: Workspace, project_id: int) -> dict:
    volumes = ws.list_volumes(project_id)
    completed = sum(1 for v in volumes if ws.list_annotations(v["id"]))
    return {"total": len(volumes), "completed": completed, "label_tags": {FINAL_TAG: completed}}


def info(ws: Workspace, project_id: int, version: str) -> dict:
    project = ws.get_project(project_id)
    labels = label_map(ws, project["id"])
    model = ws.active_model(project["id"])
    description = "paint a few slices, retrain, get a 3D segmentation"
    return {
        "name": project["name"],
        "description": f"slicewise project {project['id']}: {description}",
        "version": version,
        "labels": list(labels),
        "models": {
            MODEL: {
                "type": "segmentation",
                "labels": labels,
                "dimension": 3,
                "description": "the project's active model version (2D U-Net, slice by slice)",
                "model_id": None if model is None else model["id"],
                "config": {},
            }
        },
        "trainers": {
            MODEL: {
                "description": "slicewise retrain (coalesces with a queued one)",
                "config": {"preset": "", "mode": "auto"},
            }
        },
        "strategies": {name: {"description": text} for name, text in STRATEGIES.items()},
        "scoring": {},
        "train_stats": {MODEL: _train_stats(model)} if model is not None else {},
        "datastore": datastore_stats(ws, project["id"]),
    }


def _train_stats(model: dict) -> dict:
    metrics = model.get("metrics") or {}
    dice = metrics.get("val_dice", metrics.get("dice"))
    return {
        "model_id": model["id"],
        "created": model.get("created"),
        "best_metric": float(dice) if isinstance(dice, (int, float)) else 0,
        "metrics": metrics,
    }


def image_info(ws: Workspace, volume: dict) -> dict:
    painted = ws.list_annotations(volume["id"])
    return {
        "name": volume["name"],
        "source": volume["source"],
        "shape": volume["shape"],
        "spacing": volume["spacing"],
        "painted_slices": [[a["axis"], a["index"]] for a in painted],
    }


def datastore_all(ws: Workspace, project_id: int) -> dict:
    project = ws.get_project(project_id)
    objects = {}
    for volume in ws.list_volumes(project["id"]):
        entry = {"image": {"ext": ".nii.gz", "info": image_info(ws, volume)}, "labels": {}}
        painted = ws.list_annotations(volume["id"])
        if painted:
            entry["labels"][FINAL_TAG] = {
                "ext": ".nii.gz",
                "info": {
                    "authors": sorted({a["author"] for a in painted}),
                    "updated": max(a["updated"] for a in painted),
                    "params": {"label_names": label_map(ws, project["id"])},
                },
            }
        objects[str(volume["id"])] = entry
    return {"name": project["name"], "description": f"slicewise project {project['id']}", "objects": objects}


def painted_label_volume(ws: Workspace, volume_id: int) -> np.ndarray:
    """The painted slices as a label volume; voxels never painted are 0, as MONAI Label clients expect."""
    labels = ws.label_volume(volume_id)
    if not ws.list_annotations(volume_id):
        raise NotFound(f"image {volume_id} has no label yet: nothing is painted on it")
    return np.where(labels == IGNORE, 0, labels).astype(np.uint8)


def next_sample(ws: Workspace, predictions, project_id: int, strategy: str, seed=None) -> dict:
    if strategy not in STRATEGIES:
        raise NotFound(f"no strategy {strategy!r}; the strategies are {', '.join(STRATEGIES)}")
    volumes = ws.list_volumes(project_id)
    if not volumes:
        return {}
    painted = {v["id"]: [(a["axis"], a["index"]) for a in ws.list_annotations(v["id"])] for v in volumes}
    unpainted = [v for v in volumes if not painted[v["id"]]]
    chosen, best = None, None
    if strategy == "first":
        chosen = unpainted[0] if unpainted else None
    elif strategy == "random":
        chosen = random.Random(seed).choice(unpainted) if unpainted else None
    else:
        for volume in volumes:
            result = suggest.suggest(
                volume["shape"],
                volume["spacing"],
                painted[volume["id"]],
                predictions.uncertainty(volume["id"]),
                limit=1,
                disagreement_by_axis=predictions.disagreement(volume["id"]),
            )
            top = result["slices"][0] if result["slices"] else None
            if top is not None and (best is None or top["score"] > best["score"]):
                chosen, best = volume, top
    if chosen is None:
        return {}
    sample = {
        "id": str(chosen["id"]),
        "name": f"{chosen['name']}.nii.gz",
        "strategy": strategy,
        **image_info(ws, chosen),
    }
    if best is not None:
        sample["slice"] = {"axis": best["axis"], "index": best["index"], "score": best["score"]}
    return sample


def task_view(job: dict) -> dict:
    """A slicewise job in MONAI Label's task shape (plus the slicewise fields)."""
    view = job_view(job)
    return {
        **view,
        "name": "train",
        "status": TASK_STATUS.get(job["state"], job["state"].upper()),
        "start_ts": job.get("started"),
        "end_ts": job.get("finished"),
        "result": {"model_id": view.get("model_id"), "error": view.get("error")},
        "details": [view["message"]] if view.get("message") else [],
    }


def train_jobs(ws: Workspace, project_id: int) -> list[dict]:
    return [job for job in ws.list_jobs(project_id=project_id) if job["kind"] == "train"]


def train_params(params: dict) -> tuple[str | None, str | None]:
    """(preset, mode) from a train request's JSON params; MONAI Label clients add client_id and may nest the
    model's own options under its name."""
    if not isinstance(params, dict):
        raise InvalidInput("train params must be a JSON object")
    own = params.get(MODEL) if isinstance(params.get(MODEL), dict) else params
    preset, mode = own.get("preset") or None, own.get("mode") or None
    for name, value in (("preset", preset), ("mode", mode)):
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"train param {name!r} must be a string, got {value!r}")
    return preset, mode


def base_name(upload_name: str) -> str:
    """MONAI Label's client sends the whole local path as the file name; only its last part is a name."""
    return str(upload_name).replace("\\", "/").rsplit("/", 1)[-1]


def filename_for(image: str | None, upload_name: str) -> str:
    """The file name an uploaded image is stored under: MONAI Label's image id when given, with the upload's
    extension (which says its format)."""
    upload_name = base_name(upload_name)
    suffix = (
        "".join(Path(upload_name).suffixes[-2:]) if upload_name.lower().endswith(".gz") else Path(upload_name).suffix
    )
    if not image:
        return upload_name
    return f"{image}{suffix}"
