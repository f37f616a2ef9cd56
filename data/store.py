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

from data import annotations as ann
from data import io as volume_io
from data.atomic import atomic_write_bytes
from data.errors import Conflict, InvalidInput, NotFound
from data.store_db import Database, now, to_json
from data.store_files import IMAGE_CACHE, fsync_dir, remove_stale_staging, remove_tree, stage_volume
from data.store_labels import validate_labels, validate_project_name
from data.volume import IGNORE, Volume

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATES = ("succeeded", "failed", "cancelled")
JOB_FIELDS = {
    "state", "stage", "epoch", "progress", "eta_s", "message", "error", "pid", "started", "finished",
    "out_dir", "params",
}
STALE_STAGING_S = 24 * 3600
VOLUME_COLUMNS = "id, project_id, name, source, shape, spacing, orientation, affine, meta, created"
ANNOTATION_COLUMNS = 'volume_id, axis, "index", version, author, reviewed, updated'
SOURCE_SUFFIXES = (".nii.gz", ".nii", ".zip", ".dcm")


def _id(value, what: str) -> int:
    if isinstance(value, bool):
        raise NotFound(f"no {what} with id {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise NotFound(f"no {what} with id {value!r}") from None


def _volume_name(filename: str) -> str:
    name = Path(filename).name
    for suffix in SOURCE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def _slice_words(volume_id: int, axis: int, index: int) -> str:
    return f"slice {index} on axis {axis} of volume {volume_id}"


class Workspace:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        for folder in ("volumes", "annotations", "jobs", "models", "predictions", "tmp"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.db = Database(self.root / "slicewise.db")
        remove_stale_staging(self.root / "tmp", STALE_STAGING_S)

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
                        project_id, _volume_name(filename), volume.source, to_json(volume.shape),
                        to_json(volume.spacing), volume.orientation, to_json(volume.affine), to_json(meta), now(),
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

    # ---------------------------------------------------------------- annotations

    def save_annotation(
        self, volume_id, axis, index, mask, author: str = "local", expected_version: int | None = None,
        reviewed: bool = False,
    ) -> dict:
        """Store a new version of one painted slice -> the annotation dict (version, author, ...).

        expected_version: the version the client's edit is based on (0 = "there is none yet");
        None saves without checking. A mismatch raises Conflict and changes nothing.
        """
        volume = self.get_volume(volume_id)
        volume_id = volume["id"]
        axis, index, slice_shape = self._check_slice(volume, axis, index)
        expected_version = self._check_expected(expected_version)
        author = self._check_author(author)
        mask = ann.validate_mask(mask, slice_shape, self.label_values(volume["project_id"]))
        png = ann.mask_to_png(mask)
        (self.root / "annotations" / str(volume_id)).mkdir(exist_ok=True)
        with self.db.write() as con:
            self._check_current(con, volume_id, axis, index, expected_version)
            version = self._next_version(con, volume_id, axis, index)
            rel = f"annotations/{volume_id}/{axis}_{index}_v{version}.png"
            # Written under the write lock, so no one else can be writing this version's file; a crash
            # before COMMIT leaves an unreferenced file and the previous version current.
            atomic_write_bytes(self.root / rel, png)
            stamp = now()
            con.execute(
                'INSERT INTO annotation_history (volume_id, axis, "index", version, action, path, author,'
                " reviewed, created) VALUES (?, ?, ?, ?, 'save', ?, ?, ?, ?)",
                (volume_id, axis, index, version, rel, author, int(bool(reviewed)), stamp),
            )
            con.execute(
                'INSERT INTO annotations (volume_id, axis, "index", version, path, author, reviewed, updated)'
                ' VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (volume_id, axis, "index") DO UPDATE SET'
                " version = excluded.version, path = excluded.path, author = excluded.author,"
                " reviewed = excluded.reviewed, updated = excluded.updated",
                (volume_id, axis, index, version, rel, author, int(bool(reviewed)), stamp),
            )
            self._audit(con, author, "save_annotation",
                        {"volume_id": volume_id, "axis": axis, "index": index, "version": version})
        return self._annotation_row(volume_id, axis, index)

    def get_annotation(self, volume_id, axis, index, version: int | None = None) -> tuple[np.ndarray, dict]:
        """(mask, annotation dict) of the current version, or of an older saved `version`."""
        volume = self.get_volume(volume_id)
        axis, index, slice_shape = self._check_slice(volume, axis, index)
        if version is None:
            row = self.db.one(
                f'SELECT {ANNOTATION_COLUMNS}, path FROM annotations WHERE volume_id = ? AND axis = ? AND "index" = ?',
                (volume["id"], axis, index),
            )
        else:
            row = self.db.one(
                'SELECT volume_id, axis, "index", version, author, reviewed, created AS updated, path'
                ' FROM annotation_history WHERE volume_id = ? AND axis = ? AND "index" = ? AND version = ?'
                " AND action = 'save'",
                (volume["id"], axis, index, self._check_expected(version)),
            )
        if row is None:
            which = "" if version is None else f" version {version}"
            raise NotFound(f"no annotation{which} for {_slice_words(volume['id'], axis, index)}")
        mask = ann.mask_from_png((self.root / row.pop("path")).read_bytes(), slice_shape)
        return mask, row

    def delete_annotation(self, volume_id, axis, index, expected_version: int | None = None,
                          author: str = "local") -> dict:
        """Remove the slice's annotation (its versions stay in the history) -> the removed annotation dict."""
        volume = self.get_volume(volume_id)
        volume_id = volume["id"]
        axis, index, _ = self._check_slice(volume, axis, index)
        expected_version = self._check_expected(expected_version)
        author = self._check_author(author)
        with self.db.write() as con:
            removed = self._annotation_row(volume_id, axis, index)
            if removed is None:
                raise NotFound(f"no annotation for {_slice_words(volume_id, axis, index)}")
            self._check_current(con, volume_id, axis, index, expected_version)
            version = self._next_version(con, volume_id, axis, index)
            con.execute(
                'INSERT INTO annotation_history (volume_id, axis, "index", version, action, path, author,'
                " reviewed, created) VALUES (?, ?, ?, ?, 'delete', NULL, ?, 0, ?)",
                (volume_id, axis, index, version, author, now()),
            )
            con.execute(
                'DELETE FROM annotations WHERE volume_id = ? AND axis = ? AND "index" = ?', (volume_id, axis, index)
            )
            self._audit(con, author, "delete_annotation",
                        {"volume_id": volume_id, "axis": axis, "index": index, "version": removed["version"]})
        return removed

    def list_annotations(self, volume_id) -> list[dict]:
        volume_id = self.get_volume(volume_id)["id"]
        return self.db.all(
            f'SELECT {ANNOTATION_COLUMNS} FROM annotations WHERE volume_id = ? ORDER BY axis, "index"', (volume_id,)
        )

    def annotation_history(self, volume_id, axis=None, index=None) -> list[dict]:
        """Every save and delete ever made on the volume (or one slice), oldest first."""
        volume_id = self.get_volume(volume_id)["id"]
        sql = ('SELECT volume_id, axis, "index", version, action, author, reviewed, created'
               " FROM annotation_history WHERE volume_id = ?")
        params: list = [volume_id]
        if axis is not None:
            sql, params = sql + " AND axis = ?", params + [int(axis)]
        if index is not None:
            sql, params = sql + ' AND "index" = ?', params + [int(index)]
        return self.db.all(sql + " ORDER BY id", params)

    def label_volume(self, volume_id) -> np.ndarray:
        """Sparse label volume: IGNORE everywhere except the painted slices (newest wins where they cross)."""
        volume = self.get_volume(volume_id)
        labels = np.full(tuple(volume["shape"]), IGNORE, dtype=np.uint8)
        rows = self.db.all(
            'SELECT axis, "index", path FROM annotations WHERE volume_id = ? ORDER BY updated, version',
            (volume["id"],),
        )
        for row in rows:
            where: list = [slice(None)] * 3
            where[row["axis"]] = row["index"]
            labels[tuple(where)] = ann.mask_from_png(
                (self.root / row["path"]).read_bytes(), labels[tuple(where)].shape
            )
        return labels

    def _annotation_row(self, volume_id: int, axis: int, index: int) -> dict | None:
        return self.db.one(
            f'SELECT {ANNOTATION_COLUMNS} FROM annotations WHERE volume_id = ? AND axis = ? AND "index" = ?',
            (volume_id, axis, index),
        )

    @staticmethod
    def _check_slice(volume: dict, axis, index) -> tuple[int, int, tuple[int, ...]]:
        shape = volume["shape"]
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not 0 <= axis <= 2:
            raise InvalidInput(f"axis must be 0, 1 or 2, got {axis!r}")
        axis = int(axis)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < shape[axis]:
            raise InvalidInput(
                f"slice index must be between 0 and {shape[axis] - 1} on axis {axis} of volume {volume['id']}, "
                f"got {index!r}"
            )
        return axis, int(index), tuple(n for a, n in enumerate(shape) if a != axis)

    @staticmethod
    def _check_expected(version) -> int | None:
        if version is None:
            return None
        if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
            raise InvalidInput(f"a version is a whole number 0 or more, got {version!r}")
        return int(version)

    @staticmethod
    def _check_author(author) -> str:
        if not isinstance(author, str) or not author.strip():
            raise InvalidInput("an annotation needs an author name")
        return author.strip()

    @staticmethod
    def _check_current(con, volume_id: int, axis: int, index: int, expected: int | None) -> None:
        if expected is None:
            return
        row = con.execute(
            'SELECT version FROM annotations WHERE volume_id = ? AND axis = ? AND "index" = ?',
            (volume_id, axis, index),
        ).fetchone()
        current = row[0] if row else 0
        if current == expected:
            return
        where = _slice_words(volume_id, axis, index)
        if current == 0:
            raise Conflict(f"{where} has no annotation now (your edit was based on version {expected}); "
                           "reload it and save again")
        raise Conflict(f"{where} was changed meanwhile: it is at version {current}, your edit was based on "
                       f"version {expected}; reload it and save again")

    @staticmethod
    def _next_version(con, volume_id: int, axis: int, index: int) -> int:
        last = con.execute(
            'SELECT MAX(version) FROM annotation_history WHERE volume_id = ? AND axis = ? AND "index" = ?',
            (volume_id, axis, index),
        ).fetchone()[0]
        return (last or 0) + 1

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
        return self.db.one('SELECT * FROM audit WHERE id = ?', (audit_id,))

    def list_audit(self, limit: int = 100) -> list[dict]:
        return self.db.all('SELECT * FROM audit ORDER BY id DESC LIMIT ?', (int(limit),))

    @staticmethod
    def _audit(con, who: str, what: str, details: dict | None) -> int:
        cur = con.execute(
            'INSERT INTO audit (who, what, "when", details) VALUES (?, ?, ?, ?)',
            (str(who), str(what), now(), to_json(details or {})),
        )
        return cur.lastrowid
