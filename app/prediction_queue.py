"""Masks on demand: a thread that predicts the volumes whose active model has no cached mask yet
(after a rollback, an upload, or a server start), one project at a time."""

from __future__ import annotations

import logging
import threading

from app.predictions import Predictions
from data.errors import NotFound
from data.store import Workspace

log = logging.getLogger("slicewise.worker")


class PredictionQueue:
    def __init__(self, workspace: Workspace, predictions: Predictions):
        self.workspace, self.predictions = workspace, predictions
        self._wanted: set[int] = set()  # projects whose active model lacks some masks
        self._wake = threading.Event()
        self._stop = threading.Event()

    def request(self, project_id: int) -> None:
        self._wanted.add(int(project_id))
        self._wake.set()

    def start(self) -> threading.Thread:
        self._stop.clear()
        for project in self.workspace.list_projects():
            if project.get("active_model_id"):
                self._wanted.add(project["id"])
        thread = threading.Thread(target=self._loop, name="slicewise-predict", daemon=True)
        thread.start()
        self._wake.set()
        return thread

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            while self._wanted and not self._stop.is_set():
                project_id = self._wanted.pop()
                try:
                    model = self.workspace.active_model(project_id)
                    if model is None:
                        continue
                    for volume_id in self.predictions.missing(project_id, model["id"]):
                        if self._stop.is_set() or self.workspace.active_model(project_id)["id"] != model["id"]:
                            break
                        self.predictions.predict_volume(volume_id, model)
                except NotFound:
                    continue
                except Exception:
                    log.exception("predicting project %s failed", project_id)
