"""The in-process app with the fake trainer of tests/helpers_retrain.py, for tests that drive the retrain
service over HTTP (test_faults.py, test_retrain_api.py).

    from helpers_fake_trainer import fake_trainer_app, model_file, upload_synthetic  # noqa: F401 (fixture)

    @pytest.fixture
    def api(tmp_path, model_file):
        with fake_trainer_app(tmp_path, model_file) as (client, app, project):
            volume, label = upload_synthetic(client, project, tmp_path / "v.nii.gz")
            yield client, app, project, volume, label

`model_file` is a pytest fixture: importing it into a test module makes it available there (module scope).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from helpers_retrain import LABELS, fake_runner, make_untrained_model, synthetic_nifti


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A real, untrained model.pt (made once per module): what the fake trainer hands back as its result."""
    return make_untrained_model(tmp_path_factory.mktemp("model") / "model.pt")


@contextlib.contextmanager
def fake_trainer_app(tmp_path: Path, model_file: Path) -> Iterator[tuple[TestClient, FastAPI, dict]]:
    """(client, app, project): the app over tmp_path/ws on the CPU, its worker running the fake trainer with the
    quick preset, and one project "p" with LABELS. The client is started and stopped around the block."""
    app = create_app(Settings(workspace=tmp_path / "ws", demo=False, device="cpu"))
    with TestClient(app) as client:
        worker = app.state.worker
        worker.runner = fake_runner(tmp_path, model_file)
        worker.default_preset = "quick"
        project = client.post("/api/projects", json={"name": "p", "labels": LABELS}).json()
        yield client, app, project


def upload_synthetic(client: TestClient, project: dict, path: Path, seed: int = 0) -> tuple[dict, np.ndarray]:
    """Write helpers_retrain.synthetic_nifti(path, seed) and upload it to `project`: (the volume, its full label)."""
    path, label = synthetic_nifti(path, seed=seed)
    r = client.post(f"/api/projects/{project['id']}/volumes", files={"file": (path.name, path.read_bytes())})
    assert r.status_code == 201, r.text
    return r.json(), label
