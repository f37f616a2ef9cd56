"""The workspace: one folder holding a SQLite database (WAL) and the files it points to.

    <root>/slicewise.db          projects, volumes, annotations (+ history), models, jobs, predictions, audit
    <root>/volumes/<id>/         the uploaded source (NIfTI bytes or extracted DICOM) + image.npy cache
    <root>/annotations/<vol>/    <axis>_<index>_v<n>.png, one file per saved version, never overwritten
    <root>/jobs/<id>/            default out_dir of a job
    <root>/tmp/                  staging for imports (same filesystem, so publishing is a rename)

A file is always complete on disk before the row that points to it commits, so a crash at any moment
leaves the previous state readable.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np

from data import io as volume_io
from data.errors import Conflict, InvalidInput, NotFound
from data.store_annotations import AnnotationsMixin
from data.store_db import Database, now, to_json
from data.store_files import IMAGE_CACHE, fsync_dir, remove_stale_staging, remove_tree, stage_volume
from data.store_labels import validate_labels, validate_project_name
from data.store_project_admin import ProjectAdminMixin
from data.store_recovery import sweep_uncommitted
from data.store_scores import ScoresMixin
from data.store_users import UsersMixin
from data.volume import IGNORE, Volume

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATES = JOB_STATES[2:]  # a finished job never changes state again
JOB_FIELDS = {
    "state",
    "stage",
    "epoch",
    "progress",
    "eta_s",
    "message",
    "error",
    "pid",
    "started",
    "finished",
    "out_dir",
    "params",
}
STALE_STAGING_S = 24 * 3600
VOLUME_COLUMNS = "id, project_id, name, source, shape, spacing, orientation, affine, meta, created"
SOURCE_SUFFIXES = (".nii.gz", ".nii", ".zip", ".dcm", ".nrrd", ".nhdr", ".mha", ".mhd")


def _id(value, what: str) -> int:
    if isinstance(value, bool):
        raise NotFound(f"no {what} with id {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise NotFound(f"no {what} with id {value!r}") from None
    if not -(2**63) <= number < 2**63:  # beyond SQLite's integers: no row can have it
        raise NotFound(f"no {what} with id {value!r}")
    return number


def _volume_name(filename: str) -> str:
    name = Path(filename).name
    for suffix in SOURCE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


class Workspace(AnnotationsMixin, UsersMixin, ScoresMixin, ProjectAdminMixin):
    """The workspace API; the annotation methods (save/get/delete/list_annotations, annotation_history,
    label_volume) come from data.store_annotations.AnnotationsMixin."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        for folder in ("volumes", "annotations", "jobs", "models", "predictions", "tmp"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.db = Database(self.root / "slicewise.db")
        self._create_users_schema()  # users, tokens, members (data.store_users)
        self._create_scores_schema()  # prequential slice scores (data.store_scores)
        remove_stale_staging(self.root / "tmp", STALE_STAGING_S)

    def sweep_uncommitted(self) -> dict:
        """Remove files that writes killed before their commit left behind (data.store_recovery); the server
        calls this at start-up, before its worker runs -> counts of what was removed."""
        return sweep_uncommitted(self.root, self.db)

    def close(self) -> None:
        """Close this thread's database connection (others close when their thread ends)."""
        self.db.close()

    # ---------------------------------------------------------------- projects

    def create_project(self, name: str, labels: list[dict], who: str = "local") -> dict:
        name = validate_project_name(name)
        labels = validate_labels(labels)
        with self.db.write() as con:
            if con.execute("SELECT 1 FROM projects WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"a project named {name!r} already exists")
            cur = con.execute(
                "INSERT INTO projects (name, labels, created) VALUES (?, ?, ?)", (name, to_json(labels), now())
            )
            self._audit(con, who, "create_project", {"project_id": cur.lastrowid, "name": name})
        return self.get_project(cur.lastrowid)

    def list_projects(self) -> list[dict]:
        return self.db.all("SELECT * FROM projects ORDER BY id")

    def get_project(self, project_id) -> dict:
        project = self.db.one("SELECT * FROM projects WHERE id = ?", (_id(project_id, "project"),))
        if project is None:
            raise NotFound(f"no project with id {project_id}")
        return project

    def label_values(self, project_id) -> set[int]:
        """Values a mask of this project may hold: its labels, background 0 and IGNORE."""
        return {label["value"] for label in self.get_project(project_id)["labels"]} | {0, IGNORE}

    # ---------------------------------------------------------------- volumes

    def import_volume(
        self, project_id, upload_path: Path, filename: str, max_bytes_expanded: int, who: str = "local"
    ) -> dict:
        project_id = self.get_project(project_id)["id"]
        volume = volume_io.read_upload(Path(upload_path), filename, max_bytes_expanded)
        staging = self.root / "tmp" / f"import-{secrets.token_hex(8)}"
        published = None
        try:
            source_rel = stage_volume(staging, Path(upload_path), volume, max_bytes_expanded)
            summary = volume.summary()
            # source_zip names the caller's temporary upload, meaningless once it is gone
            meta = {"dtype": summary.get("dtype"), **summary.get("meta", {})}
            meta.pop("source_zip", None)
            with self.db.write() as con:
                cur = con.execute(
                    "INSERT INTO volumes (project_id, name, source, shape, spacing, orientation, affine, meta,"
                    " path, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, '', ?)",
                    (
                        project_id,
                        _volume_name(filename),
                        volume.source,
                        to_json(volume.shape),
                        to_json(volume.spacing),
                        volume.orientation,
                        to_json(volume.affine),
                        to_json(meta),
                        now(),
                    ),
                )
                volume_id = cur.lastrowid
                target = self.root / "volumes" / str(volume_id)
                # An id is only reused after a rolled-back import, so a folder already here is its orphan.
                remove_tree(target)
                os.rename(staging, target)
                published = target
                fsync_dir(target.parent)
                con.execute(
                    "UPDATE volumes SET path = ? WHERE id = ?", (f"volumes/{volume_id}/{source_rel}", volume_id)
                )
                self._audit(con, who, "import_volume", {"volume_id": volume_id, "filename": filename})
        except BaseException:
            remove_tree(staging)
            if published is not None:
                remove_tree(published)
            raise
        return self.get_volume(volume_id)

    def list_volumes(self, project_id) -> list[dict]:
        project_id = self.get_project(project_id)["id"]
        return self.db.all(f"SELECT {VOLUME_COLUMNS} FROM volumes WHERE project_id = ? ORDER BY id", (project_id,))

    def get_volume(self, volume_id) -> dict:
        volume = self.db.one(f"SELECT {VOLUME_COLUMNS} FROM volumes WHERE id = ?", (_id(volume_id, "volume"),))
        if volume is None:
            raise NotFound(f"no volume with id {volume_id}")
        return volume

    def load_volume(self, volume_id) -> Volume:
        """The full Volume (geometry + source metadata), read again from the stored source."""
        return volume_io.read_volume(self.volume_source_path(volume_id))

    def volume_array(self, volume_id) -> np.ndarray:
        """The voxel array, memory-mapped read-only from the cache written at import."""
        volume_id = self.get_volume(volume_id)["id"]
        return np.load(self.root / "volumes" / str(volume_id) / IMAGE_CACHE, mmap_mode="r")

    def volume_source_path(self, volume_id) -> Path:
        """Absolute path of the stored source that data.io.read_volume reads: the uploaded .nii/.nii.gz
        file, or the folder of the extracted DICOM series (the job worker hands it to model.train)."""
        row = self.db.one("SELECT path FROM volumes WHERE id = ?", (_id(volume_id, "volume"),))
        if row is None:
            raise NotFound(f"no volume with id {volume_id}")
        return (self.root / row["path"]).resolve()

    # ---------------------------------------------------------------- models

    def add_model(self, project_id, job_id, path, config: dict, metrics: dict, annotations_seen: list) -> dict:
        """Register an immutable model version (it does not become active by itself)."""
        project_id = self.get_project(project_id)["id"]
        if job_id is not None:
            job_id = self.get_job(job_id)["id"]
        with self.db.write() as con:
            cur = con.execute(
                "INSERT INTO models (project_id, job_id, path, config, metrics, annotations_seen, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (project_id, job_id, str(path), to_json(config), to_json(metrics), to_json(annotations_seen), now()),
            )
        return self.get_model(cur.lastrowid)

    def list_models(self, project_id) -> list[dict]:
        project = self.get_project(project_id)
        models = self.db.all("SELECT * FROM models WHERE project_id = ? ORDER BY id", (project["id"],))
        return [{**m, "active": m["id"] == project["active_model_id"]} for m in models]

    def get_model(self, model_id) -> dict:
        model = self.db.one("SELECT * FROM models WHERE id = ?", (_id(model_id, "model"),))
        if model is None:
            raise NotFound(f"no model with id {model_id}")
        active = self.db.one("SELECT active_model_id FROM projects WHERE id = ?", (model["project_id"],))
        return {**model, "active": active["active_model_id"] == model["id"]}

    def activate_model(self, project_id, model_id, who: str = "local") -> dict:
        """Point the project at this model version (also for rollback) -> the model dict."""
        project_id = self.get_project(project_id)["id"]
        model = self.get_model(model_id)
        if model["project_id"] != project_id:
            raise NotFound(f"no model with id {model_id} in project {project_id}")
        with self.db.write() as con:
            con.execute("UPDATE projects SET active_model_id = ? WHERE id = ?", (model["id"], project_id))
            self._audit(con, who, "activate_model", {"project_id": project_id, "model_id": model["id"]})
        return self.get_model(model["id"])

    def active_model(self, project_id) -> dict | None:
        active = self.get_project(project_id)["active_model_id"]
        return None if active is None else self.get_model(active)

    # ---------------------------------------------------------------- jobs

    def create_job(self, project_id, kind: str, params: dict) -> dict:
        """A queued job; its out_dir defaults to <root>/jobs/<id>."""
        project_id = self.get_project(project_id)["id"]
        if not isinstance(kind, str) or not kind:
            raise InvalidInput("a job needs a kind, e.g. 'train'")
        with self.db.write() as con:
            cur = con.execute(
                "INSERT INTO jobs (project_id, kind, state, params, created) VALUES (?, ?, 'queued', ?, ?)",
                (project_id, kind, to_json(params or {}), now()),
            )
            out_dir = str((self.root / "jobs" / str(cur.lastrowid)).resolve())
            con.execute("UPDATE jobs SET out_dir = ? WHERE id = ?", (out_dir, cur.lastrowid))
        return self.get_job(cur.lastrowid)

    def get_job(self, job_id) -> dict:
        job = self.db.one("SELECT * FROM jobs WHERE id = ?", (_id(job_id, "job"),))
        if job is None:
            raise NotFound(f"no job with id {job_id}")
        return job

    def update_job(self, job_id, **fields) -> dict:
        """Set some of a job's columns -> the job dict.

        Entering running stamps `started`, entering a finished state stamps `finished` (unless given).
        A finished job (succeeded/failed/cancelled) cannot change state again: Conflict.
        """
        unknown = set(fields) - JOB_FIELDS
        if unknown:
            raise ValueError(f"update_job: unknown job fields {sorted(unknown)}")
        state = fields.get("state")
        if state is not None and state not in JOB_STATES:
            raise ValueError(f"update_job: state must be one of {JOB_STATES}, got {state!r}")
        if "params" in fields:
            fields["params"] = to_json(fields["params"])
        if "out_dir" in fields and fields["out_dir"] is not None:
            fields["out_dir"] = str(fields["out_dir"])
        with self.db.write() as con:
            row = con.execute("SELECT state, started FROM jobs WHERE id = ?", (_id(job_id, "job"),)).fetchone()
            if row is None:
                raise NotFound(f"no job with id {job_id}")
            current = row["state"]
            if state is not None and state != current:
                if current in FINISHED_STATES:
                    raise Conflict(f"job {job_id} already finished ({current}); it cannot become {state}")
                if state == "running" and row["started"] is None:
                    fields.setdefault("started", now())
                if state in FINISHED_STATES:
                    fields.setdefault("finished", now())
            if fields:
                columns = ", ".join(f"{name} = ?" for name in fields)
                con.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*fields.values(), int(job_id)))
        return self.get_job(job_id)

    def list_jobs(self, state: str | list[str] | None = None, project_id=None) -> list[dict]:
        sql, params = "SELECT * FROM jobs WHERE 1 = 1", []
        if state is not None:
            states = [state] if isinstance(state, str) else list(state)
            sql += f" AND state IN ({', '.join('?' * len(states))})"
            params += states
        if project_id is not None:
            sql += " AND project_id = ?"
            params.append(_id(project_id, "project"))
        return self.db.all(sql + " ORDER BY id", params)

    # ---------------------------------------------------------------- predictions

    def set_prediction(self, volume_id, model_id, path, status: str) -> dict:
        """Create or update the cached prediction of (volume, model version) -> the prediction dict."""
        volume = self.get_volume(volume_id)
        model = self.get_model(model_id)
        if model["project_id"] != volume["project_id"]:
            raise InvalidInput(f"model {model['id']} belongs to another project than volume {volume['id']}")
        if not isinstance(status, str) or not status:
            raise InvalidInput("a prediction needs a status, e.g. 'ready'")
        stamp = now()
        with self.db.write() as con:
            con.execute(
                "INSERT INTO predictions (volume_id, model_id, path, status, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (volume_id, model_id) DO UPDATE SET"
                " path = excluded.path, status = excluded.status, updated = excluded.updated",
                (volume["id"], model["id"], None if path is None else str(path), status, stamp, stamp),
            )
        return self.get_prediction(volume["id"], model["id"])

    def get_prediction(self, volume_id, model_id=None) -> dict | None:
        """The prediction of this volume by `model_id`, by default by the project's active model
        (or the newest one when no model is active); None when there is none."""
        volume = self.get_volume(volume_id)
        if model_id is None:
            model_id = self.get_project(volume["project_id"])["active_model_id"]
        if model_id is None:
            return self.db.one(
                "SELECT * FROM predictions WHERE volume_id = ? ORDER BY model_id DESC LIMIT 1", (volume["id"],)
            )
        return self.db.one(
            "SELECT * FROM predictions WHERE volume_id = ? AND model_id = ?", (volume["id"], _id(model_id, "model"))
        )

    def list_predictions(self, volume_id=None, model_id=None) -> list[dict]:
        sql, params = "SELECT * FROM predictions WHERE 1 = 1", []
        if volume_id is not None:
            sql, params = sql + " AND volume_id = ?", params + [_id(volume_id, "volume")]
        if model_id is not None:
            sql, params = sql + " AND model_id = ?", params + [_id(model_id, "model")]
        return self.db.all(sql + " ORDER BY volume_id, model_id", params)

    # ---------------------------------------------------------------- audit

    def record_audit(self, who: str, what: str, details: dict | None = None) -> dict:
        with self.db.write() as con:
            audit_id = self._audit(con, who, what, details)
        return self.db.one("SELECT * FROM audit WHERE id = ?", (audit_id,))

    def list_audit(self, limit: int = 100) -> list[dict]:
        return self.db.all("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (int(limit),))

    @staticmethod
    def _audit(con, who: str, what: str, details: dict | None) -> int:
        cur = con.execute(
            'INSERT INTO audit (who, what, "when", details) VALUES (?, ?, ?, ?)',
            (str(who), str(what), now(), to_json(details or {})),
        )
        return cur.lastrowid
