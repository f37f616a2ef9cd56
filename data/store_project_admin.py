"""Changing a project after it exists: its label map, and deleting a volume or the whole project.

Mixed into data.store.Workspace (which provides root, db, get_project, get_volume and _audit).

Deleting is one transaction: the rows go (and an audit row records who deleted what) before any file is
touched; only after COMMIT are the files removed. A crash before COMMIT changes nothing; a crash after it
leaves files that no row names, which `sweep_uncommitted` removes at the next start. So a volume or project
is never half-deleted: either all its rows are there (and its files), or none are.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from data.errors import Conflict, InvalidInput
from data.store_db import to_json
from data.store_files import remove_tree
from data.store_labels import validate_labels

ACTIVE_JOB_STATES = ("queued", "running")


def _painted_values(root: Path, paths: list[str]) -> set[int]:
    values: set[int] = set()
    for rel in paths:
        with Image.open(io.BytesIO((root / rel).read_bytes())) as image:
            values |= {int(v) for v in np.unique(np.asarray(image))}
    return values


def _check_confirm(what: str, name: str, confirm: str | None) -> None:
    if confirm != name:
        raise InvalidInput(
            f"deleting {what} cannot be undone: to confirm, pass its exact name "
            f"(confirm={name!r}){'' if confirm is None else f'; got {confirm!r}'}"
        )


class ProjectAdminMixin:
    def update_labels(self, project_id, labels, who: str = "local") -> dict:
        """Rename, recolour or add labels; a label may only be removed while no annotation holds it."""
        project = self.get_project(project_id)
        labels = validate_labels(labels)
        removed = {label["value"] for label in project["labels"]} - {label["value"] for label in labels}
        with self.db.write() as con:
            if removed:  # inside the write lock: no save can paint a removed value meanwhile
                paths = [
                    r[0]
                    for r in con.execute(
                        "SELECT a.path FROM annotations a JOIN volumes v ON v.id = a.volume_id WHERE v.project_id = ?",
                        (project["id"],),
                    )
                ]
                used = sorted(removed & _painted_values(self.root, paths))
                if used:
                    raise Conflict(
                        f"label value(s) {used} are painted in this project's annotations: repaint or "
                        "unpaint those slices before removing the label (renaming it is fine)"
                    )
            con.execute("UPDATE projects SET labels = ? WHERE id = ?", (to_json(labels), project["id"]))
            self._audit(
                con, who, "update_labels", {"project_id": project["id"], "before": project["labels"], "after": labels}
            )
        return self.get_project(project["id"])

    def _refuse_while_training(self, con, project_id: int, what: str) -> None:
        job = con.execute(
            f"SELECT id, state FROM jobs WHERE project_id = ? AND state IN {ACTIVE_JOB_STATES}", (project_id,)
        ).fetchone()
        if job:
            raise Conflict(
                f"cannot delete {what} while retrain job {job[0]} is {job[1]}: cancel it or wait until it finishes"
            )

    def delete_volume(self, volume_id, confirm: str | None, who: str = "local") -> dict:
        """Delete one volume with its annotations (and their history) and predictions -> what was removed."""
        volume = self.get_volume(volume_id)
        vid = volume["id"]
        _check_confirm(f"volume {vid}", volume["name"], confirm)
        with self.db.write() as con:
            self._refuse_while_training(con, volume["project_id"], f"volume {vid}")
            removed = {
                "annotations": con.execute("DELETE FROM annotations WHERE volume_id = ?", (vid,)).rowcount,
                "annotation_versions": con.execute(
                    "DELETE FROM annotation_history WHERE volume_id = ?", (vid,)
                ).rowcount,
                "predictions": con.execute("DELETE FROM predictions WHERE volume_id = ?", (vid,)).rowcount,
            }
            con.execute("DELETE FROM slice_scores WHERE volume_id = ?", (vid,))
            con.execute("DELETE FROM volumes WHERE id = ?", (vid,))
            details = {"volume_id": vid, "name": volume["name"], "project_id": volume["project_id"], **removed}
            self._audit(con, who, "delete_volume", details)
        self._remove_volume_files([vid])
        return details

    def delete_project(self, project_id, confirm: str | None, who: str = "local") -> dict:
        """Delete a project with its volumes, annotations, models, jobs and memberships -> what was removed."""
        project = self.get_project(project_id)
        pid = project["id"]
        _check_confirm(f"project {pid}", project["name"], confirm)
        with self.db.write() as con:
            self._refuse_while_training(con, pid, f"project {pid}")
            volumes = [r[0] for r in con.execute("SELECT id FROM volumes WHERE project_id = ?", (pid,))]
            models = [r[0] for r in con.execute("SELECT id FROM models WHERE project_id = ?", (pid,))]
            jobs = con.execute("SELECT id, out_dir FROM jobs WHERE project_id = ?", (pid,)).fetchall()
            of_volumes = f"volume_id IN (SELECT id FROM volumes WHERE project_id = {int(pid)})"
            removed = {
                "volumes": len(volumes),
                "models": len(models),
                "jobs": len(jobs),
                "annotations": con.execute(f"DELETE FROM annotations WHERE {of_volumes}").rowcount,
                "annotation_versions": con.execute(f"DELETE FROM annotation_history WHERE {of_volumes}").rowcount,
                "predictions": con.execute(
                    f"DELETE FROM predictions WHERE {of_volumes} OR model_id IN "
                    f"(SELECT id FROM models WHERE project_id = {int(pid)})"
                ).rowcount,
            }
            con.execute(
                f"DELETE FROM slice_scores WHERE {of_volumes} OR model_id IN "
                f"(SELECT id FROM models WHERE project_id = {int(pid)})"
            )
            con.execute("UPDATE projects SET active_model_id = NULL WHERE id = ?", (pid,))
            con.execute("DELETE FROM models WHERE project_id = ?", (pid,))
            con.execute("DELETE FROM jobs WHERE project_id = ?", (pid,))
            con.execute("DELETE FROM members WHERE project_id = ?", (pid,))
            con.execute("DELETE FROM volumes WHERE project_id = ?", (pid,))
            con.execute("DELETE FROM projects WHERE id = ?", (pid,))
            details = {"project_id": pid, "name": project["name"], **removed}
            self._audit(con, who, "delete_project", details)
        self._remove_volume_files(volumes)
        for model_id in models:
            remove_tree(self.root / "predictions" / str(model_id))
        for job_id, out_dir in jobs:  # a job's folder holds its model versions
            remove_tree(self.root / "jobs" / str(job_id))
            if out_dir and Path(out_dir).resolve().is_relative_to(self.root.resolve()):
                remove_tree(Path(out_dir))
        return details

    def _remove_volume_files(self, volume_ids: list[int]) -> None:
        for vid in volume_ids:
            remove_tree(self.root / "volumes" / str(vid))
            remove_tree(self.root / "annotations" / str(vid))
            for folder in (self.root / "predictions").glob(f"*/{int(vid)}"):
                remove_tree(folder)
