"""A training run's progress file (model/progress.py) followed into its job: each line goes to the job's
event stream as it is read, the job row is brought up to date at most every ROW_UPDATE_S and at the end."""

from __future__ import annotations

import time
from pathlib import Path

from app.job_params import JobParams
from app.jobs import EventHub
from app.views import job_view, pending_columns
from data.errors import Conflict
from data.store import Workspace
from model.progress import progress_fields, read_new_lines, reported_error

ROW_UPDATE_S = 0.5


class ProgressFollower:
    def __init__(self, workspace: Workspace, hub: EventHub, job_id: int, path: Path, offset: int = 0):
        self.workspace, self.hub, self.job_id = workspace, hub, job_id
        self.path, self.offset = path, offset  # a resumed run appends: its lines start at offset
        self.error: str | None = None  # the last error the run reported
        self._pending: dict = {}  # progress fields read since the row's last update
        self._row_updated = 0.0

    def read(self, final: bool = False) -> None:
        """Publish the lines written since the last read. final: the run has ended, so the row catches up."""
        self.offset, events = read_new_lines(self.path, self.offset)
        for event in events:
            self.error = reported_error(event) or self.error
            fields = progress_fields(event)
            if not fields:
                continue
            self._pending.update(fields)
            view = job_view({**self.workspace.get_job(self.job_id), **pending_columns(self._pending)})
            self.hub.publish(self.job_id, "progress", {**view, "event": event})
        if self._pending and (final or time.monotonic() - self._row_updated > ROW_UPDATE_S):
            self._write_row()
            self._pending, self._row_updated = {}, time.monotonic()

    def _write_row(self) -> None:
        columns = pending_columns(self._pending)
        if "loss" in self._pending:
            params = JobParams.from_dict(self.workspace.get_job(self.job_id)["params"])
            columns["params"] = params.replace(loss=self._pending["loss"]).to_dict()
        try:
            self.workspace.update_job(self.job_id, **columns)
        except Conflict:
            pass  # finished meanwhile (cancel)
