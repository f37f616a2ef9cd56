"""The annotation part of the workspace: versioned painted slices, their history and the sparse label volume.

    <root>/annotations/<vol>/    <axis>_<index>_v<n>.png, one file per saved version, never overwritten

Mixed into data.store.Workspace, which provides root, db, get_volume, label_values and _audit.
"""

from __future__ import annotations

import numpy as np

from data import annotations as ann
from data.atomic import atomic_write_bytes
from data.errors import Conflict, InvalidInput, NotFound
from data.store_db import now

ANNOTATION_COLUMNS = 'volume_id, axis, "index", version, author, reviewed, updated'


def _slice_words(volume_id: int, axis: int, index: int) -> str:
    return f"slice {index} on axis {axis} of volume {volume_id}"


class AnnotationsMixin:
    """Saving, reading, deleting and listing slice annotations of a Workspace."""

    def save_annotation(
        self,
        volume_id,
        axis,
        index,
        mask,
        author: str = "local",
        expected_version: int | None = None,
        reviewed: bool = False,
    ) -> dict:
        """Store a new version of one painted slice -> the annotation dict (version, author, ...).

        expected_version: the version the client's edit is based on (0 = "there is none yet");
        None saves without checking. A mismatch raises Conflict and changes nothing.
        """
        volume = self.get_volume(volume_id)
        volume_id = volume["id"]
        axis, index, slice_shape = ann.check_slice(volume["shape"], axis, index)
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
            self._audit(
                con,
                author,
                "save_annotation",
                {"volume_id": volume_id, "axis": axis, "index": index, "version": version},
            )
        return self._annotation_row(volume_id, axis, index)

    def get_annotation(self, volume_id, axis, index, version: int | None = None) -> tuple[np.ndarray, dict]:
        """(mask, annotation dict) of the current version, or of an older saved `version`."""
        volume = self.get_volume(volume_id)
        axis, index, slice_shape = ann.check_slice(volume["shape"], axis, index)
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

    def delete_annotation(
        self, volume_id, axis, index, expected_version: int | None = None, author: str = "local"
    ) -> dict:
        """Remove the slice's annotation (its versions stay in the history) -> the removed annotation dict."""
        volume = self.get_volume(volume_id)
        volume_id = volume["id"]
        axis, index, _ = ann.check_slice(volume["shape"], axis, index)
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
            self._audit(
                con,
                author,
                "delete_annotation",
                {"volume_id": volume_id, "axis": axis, "index": index, "version": removed["version"]},
            )
        return removed

    def list_annotations(self, volume_id) -> list[dict]:
        volume_id = self.get_volume(volume_id)["id"]
        return self.db.all(
            f'SELECT {ANNOTATION_COLUMNS} FROM annotations WHERE volume_id = ? ORDER BY axis, "index"', (volume_id,)
        )

    def annotation_history(self, volume_id, axis=None, index=None) -> list[dict]:
        """Every save and delete ever made on the volume (or one slice), oldest first."""
        volume_id = self.get_volume(volume_id)["id"]
        sql = (
            'SELECT volume_id, axis, "index", version, action, author, reviewed, created'
            " FROM annotation_history WHERE volume_id = ?"
        )
        params: list = [volume_id]
        if axis is not None:
            sql, params = sql + " AND axis = ?", params + [int(axis)]
        if index is not None:
            sql, params = sql + ' AND "index" = ?', params + [int(index)]
        return self.db.all(sql + " ORDER BY id", params)

    def label_volume(self, volume_id) -> np.ndarray:
        """Sparse label volume: IGNORE everywhere except the painted slices (newest wins where they cross)."""
        volume = self.get_volume(volume_id)
        labels = ann.empty_labels(volume["shape"])
        rows = self.db.all(
            'SELECT axis, "index", path FROM annotations WHERE volume_id = ? ORDER BY updated, version',
            (volume["id"],),
        )
        for row in rows:
            _, _, shape = ann.check_slice(labels.shape, row["axis"], row["index"])
            ann.put_slice(
                labels, row["axis"], row["index"], ann.mask_from_png((self.root / row["path"]).read_bytes(), shape)
            )
        return labels

    def _annotation_row(self, volume_id: int, axis: int, index: int) -> dict | None:
        return self.db.one(
            f'SELECT {ANNOTATION_COLUMNS} FROM annotations WHERE volume_id = ? AND axis = ? AND "index" = ?',
            (volume_id, axis, index),
        )

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
            raise Conflict(
                f"{where} has no annotation now (your edit was based on version {expected}); reload it and save again"
            )
        raise Conflict(
            f"{where} was changed meanwhile: it is at version {current}, your edit was based on "
            f"version {expected}; reload it and save again"
        )

    @staticmethod
    def _next_version(con, volume_id: int, axis: int, index: int) -> int:
        last = con.execute(
            'SELECT MAX(version) FROM annotation_history WHERE volume_id = ? AND axis = ? AND "index" = ?',
            (volume_id, axis, index),
        ).fetchone()[0]
        return (last or 0) + 1
