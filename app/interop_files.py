"""Files labs exchange: a mask volume imported as painted slices, and exports for Slicer, ITK-SNAP and nnU-Net.

The functions call the workspace like the /api routes do (save_annotation, label_volume, load_volume); the
file formats live in data/ (mask_files, slicer_seg, nnunet).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from app.predictions import SEG_NRRD_NAME, safe_name
from data.errors import InvalidInput, NotFound
from data.mask_files import painted_masks, read_mask_file
from data.nnunet import write_nnunet_zip
from data.slicer_seg import write_seg_nrrd
from data.store import Workspace


def import_annotations(
    ws: Workspace, volume_id: int, path: Path, filename: str, axis: int, author: str, max_bytes: int | None
) -> dict:
    """Every slice along `axis` of the mask file holding a labelled voxel becomes that slice's next annotation
    version (as a PUT of the slice would); the rest of the volume stays as it was. All slices are checked
    before the first one is saved."""
    if axis not in (0, 1, 2):
        raise InvalidInput(f"axis must be 0, 1 or 2, got {axis}")
    if not filename or "/" in filename or "\\" in filename or "\x00" in filename:
        raise InvalidInput("the mask file needs a plain file name (its extension says its format)")
    volume = ws.get_volume(volume_id)
    project = ws.get_project(volume["project_id"])
    labels = read_mask_file(path, filename, ws.load_volume(volume["id"]), project["labels"], max_bytes)
    masks = painted_masks(labels, axis)
    if not masks:
        raise InvalidInput(
            f"{filename}: the mask has no labelled voxel (all background or unannotated), "
            "so there is no slice to import"
        )
    saved = [ws.save_annotation(volume["id"], axis, index, mask, author=author) for index, mask in masks]
    return {"volume_id": volume["id"], "axis": axis, "slices": [index for index, _ in masks], "annotations": saved}


def prediction_seg_nrrd(ws: Workspace, predictions, volume_id: int) -> Path:
    """The active model's prediction as a Slicer .seg.nrrd, written beside the cached NIfTI on first request."""
    volume = ws.get_volume(volume_id)

    def write(labels, path):
        write_seg_nrrd(labels, ws.load_volume(volume["id"]), ws.get_project(volume["project_id"])["labels"], path)

    return predictions.export_file(volume["id"], SEG_NRRD_NAME, write)


def nnunet_zip(ws: Workspace, project_id: int) -> tuple[Path, str]:
    """(temporary zip file the caller removes, download name) of the project's painted volumes."""
    project = ws.get_project(project_id)
    volumes = [v for v in ws.list_volumes(project["id"]) if ws.list_annotations(v["id"])]
    if not volumes:
        raise NotFound(f"project {project['id']} has no painted slice yet, so there is no dataset to export")
    channel = next((str(v["meta"].get("modality")) for v in volumes if (v.get("meta") or {}).get("modality")), "image")

    def cases():
        for volume in volumes:
            yield f"case_{volume['id']:04d}", ws.load_volume(volume["id"]), ws.label_volume(volume["id"])

    fd, name = tempfile.mkstemp(prefix=".export-", suffix=".zip", dir=ws.root / "tmp")
    os.close(fd)
    path = Path(name)
    try:
        write_nnunet_zip(cases(), project["labels"], safe_name(project["name"]), channel, path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, f"{safe_name(project['name'])}_nnunet.zip"
