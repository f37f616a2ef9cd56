"""SQLite plumbing for the workspace: schema, connections, transactions, row decoding.

One connection per thread (FastAPI's threadpool and the job worker share a Workspace), WAL so
readers never wait for the writer, and every write inside `BEGIN IMMEDIATE` so two writers
serialise on the database lock instead of failing half-way.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from data.errors import SlicewiseError

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);

CREATE TABLE IF NOT EXISTS projects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL,
    active_model_id INTEGER REFERENCES models(id),
    created TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS volumes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    source TEXT NOT NULL,
    shape TEXT NOT NULL,
    spacing TEXT NOT NULL,
    orientation TEXT NOT NULL,
    affine TEXT NOT NULL,
    meta TEXT NOT NULL,
    path TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS volumes_by_project ON volumes(project_id);

CREATE TABLE IF NOT EXISTS annotations (
    volume_id INTEGER NOT NULL REFERENCES volumes(id),
    axis INTEGER NOT NULL,
    "index" INTEGER NOT NULL,
    version INTEGER NOT NULL,
    path TEXT NOT NULL,
    author TEXT NOT NULL,
    reviewed INTEGER NOT NULL DEFAULT 0,
    updated TEXT NOT NULL,
    PRIMARY KEY (volume_id, axis, "index")
);

CREATE TABLE IF NOT EXISTS annotation_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    volume_id INTEGER NOT NULL REFERENCES volumes(id),
    axis INTEGER NOT NULL,
    "index" INTEGER NOT NULL,
    version INTEGER NOT NULL,
    action TEXT NOT NULL,
    path TEXT,
    author TEXT NOT NULL,
    reviewed INTEGER NOT NULL DEFAULT 0,
    created TEXT NOT NULL,
    UNIQUE (volume_id, axis, "index", version)
);

CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    job_id INTEGER REFERENCES jobs(id),
    path TEXT NOT NULL,
    config TEXT NOT NULL,
    metrics TEXT NOT NULL,
    annotations_seen TEXT NOT NULL,
    created TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    kind TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    params TEXT NOT NULL,
    stage TEXT,
    epoch INTEGER,
    progress REAL NOT NULL DEFAULT 0,
    eta_s REAL,
    message TEXT,
    error TEXT,
    pid INTEGER,
    created TEXT NOT NULL,
    started TEXT,
    finished TEXT,
    out_dir TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state);

CREATE TABLE IF NOT EXISTS predictions (
    volume_id INTEGER NOT NULL REFERENCES volumes(id),
    model_id INTEGER NOT NULL REFERENCES models(id),
    path TEXT,
    status TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    PRIMARY KEY (volume_id, model_id)
);

CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    who TEXT NOT NULL,
    what TEXT NOT NULL,
    "when" TEXT NOT NULL,
    details TEXT NOT NULL
);
"""

JSON_COLUMNS = {
    "labels",
    "shape",
    "spacing",
    "affine",
    "meta",
    "config",
    "metrics",
    "annotations_seen",
    "params",
    "details",
}
BOOL_COLUMNS = {"reviewed"}


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def jsonable(value):
    """Plain JSON types only: numpy scalars/arrays become Python ones, NaN/inf become None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalar or array
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def to_json(value) -> str:
    return json.dumps(jsonable(value), allow_nan=False)


def row_to_dict(row: sqlite3.Row | None) -> dict | None:
    if row is None:
        return None
    out = {}
    for key in row.keys():
        value = row[key]
        if key in JSON_COLUMNS and value is not None:
            value = json.loads(value)
        elif key in BOOL_COLUMNS:
            value = bool(value)
        out[key] = value
    return out


class Database:
    """A SQLite file shared by threads: lazily opens one connection per thread."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        con = self.connection()
        con.execute("PRAGMA journal_mode=WAL")
        self._create_schema()

    def connection(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA foreign_keys=ON")
            con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            # FULL: a commit that returned has reached the disk, also across a power cut.
            con.execute("PRAGMA synchronous=FULL")
            self._local.con = con
        return con

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; takes the database write lock up front (BEGIN IMMEDIATE)."""
        con = self.connection()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def one(self, sql: str, params=()) -> dict | None:
        return row_to_dict(self.connection().execute(sql, params).fetchone())

    def all(self, sql: str, params=()) -> list[dict]:
        return [row_to_dict(r) for r in self.connection().execute(sql, params).fetchall()]

    def apply_schema(self, sql: str) -> None:
        """Run `CREATE ... IF NOT EXISTS` statements (separated by ';') in one transaction."""
        with self.write() as con:
            self.execute_all(con, sql)

    @staticmethod
    def execute_all(con: sqlite3.Connection, sql: str) -> None:
        for statement in sql.split(";"):
            if statement.strip():
                con.execute(statement)

    def _create_schema(self) -> None:
        with self.write() as con:
            self.execute_all(con, SCHEMA)
            row = con.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                con.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] > SCHEMA_VERSION:
                raise SlicewiseError(
                    f"this workspace was created by a newer slicewise (schema {row[0]}, "
                    f"this version knows up to {SCHEMA_VERSION}); upgrade slicewise to open it"
                )
