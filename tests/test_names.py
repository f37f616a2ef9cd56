"""Shared names are defined once: GET /api/info serves them, and the typed job params are strict."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.job_params import JobParams
from app.main import create_app
from app.settings import Settings
from app.views import job_view


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(Settings(workspace=tmp_path / "ws", demo=False, default_preset="quick"))) as c:
        yield c


def test_info_names_stages_states_presets_devices_roles_and_label_values(client):
    info = client.get("/api/info").json()
    stages = {s["name"]: s for s in info["stages"]}
    assert list(stages) == ["global", "local", "finetune", "pseudo", "predict", "done"]
    assert [n for n, s in stages.items() if s["training"]] == ["global", "local", "finetune", "pseudo"]
    assert all(s["label"] and s["label"] != n for n, s in stages.items())
    assert info["job_states"] == ["queued", "running", "succeeded", "failed", "cancelled"]
    assert info["finished_job_states"] == ["succeeded", "failed", "cancelled"]
    assert info["presets"] == ["quick", "cpu", "paper"] and info["default_preset"] == "quick"
    assert info["devices"] == ["auto", "cpu", "cuda"] and info["modes"] == ["auto", "refresh", "full"]
    assert info["roles"] == ["viewer", "annotator", "admin"] and info["ignore"] == 255
    label_map = info["label_map"]
    assert (label_map["background"], label_map["min_value"], label_map["max_value"]) == (0, 1, 254)
    assert re.match(label_map["color_pattern"], "#e6194b") and not re.match(label_map["color_pattern"], "red")
    # what /api/info says is what the API enforces
    ok = client.post("/api/projects", json={"name": "p", "labels": [{"value": 254, "name": "a", "color": "#e6194b"}]})
    assert ok.status_code == 201, ok.text
    refused = client.post(
        "/api/projects", json={"name": "q", "labels": [{"value": 255, "name": "a", "color": "#e6194b"}]}
    )
    assert refused.status_code == 422


def test_the_openapi_job_schema_documents_every_stage_and_state(client):
    job = client.get("/openapi.json").json()["components"]["schemas"]["JobOut"]["properties"]
    for stage in ("global", "local", "finetune", "pseudo", "predict", "done"):
        assert stage in job["stage"]["description"]
    assert job["state"]["description"] == "queued | running | succeeded | failed | cancelled"


def test_job_params_round_trip_and_refuse_unknown_keys_and_wrong_types():
    params = JobParams(
        preset="cpu", stages={"pseudo": False}, mode_requested="auto", global_stage={"use": "reused", "job_id": 4}
    )
    stored = params.to_dict()
    assert stored["global"] == {"use": "reused", "job_id": 4} and "global_stage" not in stored
    assert JobParams.from_dict(stored) == params
    assert JobParams.from_dict({"preset": "quick"}).requests == 1  # what older rows lack takes the default
    with pytest.raises(ValueError, match="unknown job params: presets"):
        JobParams.from_dict({"presets": "cpu"})
    with pytest.raises(ValueError, match="requests must be int"):
        JobParams.from_dict({"requests": "2"})
    with pytest.raises(ValueError, match="mode must be one of refresh, full"):
        JobParams.from_dict({"mode": "auto"})
    with pytest.raises(ValueError, match="resume must be bool"):
        JobParams.from_dict({"resume": 1})


def test_job_view_shows_the_decision_from_typed_params():
    job = {
        "id": 1,
        "project_id": 2,
        "kind": "train",
        "state": "running",
        "progress": 0.123456,
        "params": JobParams(mode_requested="auto", mode="full", global_stage={"use": "reused", "job_id": 7}).to_dict(),
    }
    view = job_view(job)
    assert (view["mode"], view["mode_requested"], view["global_stage"], view["global_from_job"]) == (
        "full",
        "auto",
        "reused",
        7,
    )
    assert view["progress"] == 0.1235 and view["requests"] == 1 and "out_dir" not in view
    queued = job_view({**job, "params": {"mode_requested": "refresh"}})
    assert queued["mode"] == "refresh" and queued["global_stage"] is None
