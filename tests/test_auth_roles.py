"""Every endpoint group under every role: one allowed and one refused case each, membership isolation
(404 for non-members, like an unknown id), 401 without credentials, and the audit trail of who did what.

One in-process app (fake trainer) per module: an admin, an annotator and a viewer who are members of the
project, and an annotator who is not.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from helpers_bad_input import assert_refused
from helpers_retrain import LABELS, SHAPE, fake_runner, make_untrained_model, synthetic_nifti

ROLES = ("viewer", "annotator", "admin")
USERS = {"viewer": "vic", "annotator": "anna", "admin": "ada"}
OUTSIDER = "olga"  # an annotator, not a member of the project
COUNTER = itertools.count(1)


class World:
    def __init__(self, client, app, tokens, project, volume, model_id, job_id, tmp_path):
        self.client, self.app, self.tokens = client, app, tokens
        self.p, self.v, self.m, self.j = project["id"], volume["id"], model_id, job_id
        self.tmp_path = tmp_path
        self.root = tmp_path / "ws"  # what assert_refused snapshots

    def auth(self, user: str) -> dict:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def call(self, user: str | None, method: str, path: str, **kwargs):
        headers = {**(self.auth(user) if user else {}), **kwargs.pop("headers", {})}
        return self.client.request(method, path, headers=headers, **kwargs)


def wait_job(world: World, job_id: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = world.call("ada", "GET", f"/api/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def wait_quiet(world: World, timeout: float = 60) -> None:
    """No job queued or running and no prediction being computed: the workspace changes only by requests."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = world.call("ada", "GET", f"/api/projects/{world.p}/jobs").json()
        volumes = world.call("ada", "GET", f"/api/projects/{world.p}/volumes").json()
        if all(j["state"] in ("succeeded", "failed", "cancelled") for j in jobs) and all(
            world.call("ada", "GET", f"/api/volumes/{v['id']}/prediction").json()["status"] in ("ready", "none")
            for v in volumes
        ):
            return
        time.sleep(0.05)
    raise AssertionError("the workspace did not come to rest")


def wait_prediction(world: World, volume_id: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if world.call("ada", "GET", f"/api/volumes/{volume_id}/prediction").json()["status"] == "ready":
            return
        time.sleep(0.05)
    raise AssertionError("prediction not ready")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("roles")
    model_file = make_untrained_model(tmp_path / "model.pt")
    app = create_app(Settings(workspace=tmp_path / "ws", demo=False, device="cpu"))
    with TestClient(app) as client:
        app.state.worker.runner = fake_runner(tmp_path, model_file)
        app.state.worker.default_preset = "quick"
        ws = app.state.workspace
        tokens = {}
        for role, name in [*USERS.items(), ("annotator", OUTSIDER)]:
            ws.add_user(name, role, password=f"{name}-password")
            tokens[name] = ws.create_token(name)[0]
        headers = {"Authorization": f"Bearer {tokens['ada']}"}
        project = client.post("/api/projects", json={"name": "roles", "labels": LABELS}, headers=headers).json()
        for name in ("vic", "anna"):
            assert (
                client.post(f"/api/projects/{project['id']}/members", json={"user": name}, headers=headers).status_code
                == 201
            )
        path, label = synthetic_nifti(tmp_path / "v.nii.gz")
        volume = client.post(
            f"/api/projects/{project['id']}/volumes", files={"file": (path.name, path.read_bytes())}, headers=headers
        ).json()
        mask = np.take(label, 5, axis=0).astype(np.uint8)
        r = client.put(
            f"/api/volumes/{volume['id']}/annotations/0/5",
            content=mask.tobytes(),
            headers={**headers, "Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 200, r.text
        job = client.post(f"/api/projects/{project['id']}/train", headers=headers).json()
        world = World(client, app, tokens, project, volume, None, job["id"], tmp_path)
        assert wait_job(world, job["id"])["state"] == "succeeded"
        world.m = client.get(f"/api/projects/{project['id']}/models", headers=headers).json()[-1]["id"]
        wait_prediction(world, volume["id"])
        yield world


def raw_mask(axis: int = 0, fill: int = 1) -> bytes:
    rows, cols = (n for a, n in enumerate(SHAPE) if a != axis)
    return np.full((rows, cols), fill, dtype=np.uint8).tobytes()


RAW = {"Content-Type": "application/octet-stream"}


def nifti_upload(world: World) -> dict:
    path, _ = synthetic_nifti(world.tmp_path / f"up{next(COUNTER)}.nii.gz")
    return {"files": {"file": (path.name, path.read_bytes())}}


def save_then(world: World, axis: int) -> int:
    """An annotation to delete, saved by the admin -> its slice index."""
    index = next(COUNTER) % SHAPE[axis]
    world.call("ada", "PUT", f"/api/volumes/{world.v}/annotations/{axis}/{index}", content=raw_mask(axis), headers=RAW)
    return index


# (group, method, path, minimum role, expected status when allowed, request kwargs factory)
ENDPOINTS = [
    ("projects", "GET", "/api/projects", "viewer", 200, None),
    ("projects", "GET", "/api/projects/{p}", "viewer", 200, None),
    (
        "projects",
        "POST",
        "/api/projects",
        "admin",
        201,
        lambda w: {"json": {"name": f"new{next(COUNTER)}", "labels": LABELS}},
    ),
    ("volumes", "GET", "/api/projects/{p}/volumes", "viewer", 200, None),
    ("volumes", "GET", "/api/volumes/{v}", "viewer", 200, None),
    ("volumes", "POST", "/api/projects/{p}/volumes", "annotator", 201, nifti_upload),
    ("slices", "GET", "/api/volumes/{v}/slices/0/3.png", "viewer", 200, None),
    ("annotations", "GET", "/api/volumes/{v}/annotations", "viewer", 200, None),
    ("annotations", "GET", "/api/volumes/{v}/annotations/0/5", "viewer", 200, None),
    (
        "annotations",
        "PUT",
        "/api/volumes/{v}/annotations/1/{i}",
        "annotator",
        200,
        lambda w: {"content": raw_mask(1), "headers": RAW},
    ),
    ("annotations", "DELETE", "/api/volumes/{v}/annotations/2/{d}", "annotator", 200, None),
    ("training", "GET", "/api/jobs/{j}", "viewer", 200, None),
    ("training", "GET", "/api/projects/{p}/jobs", "viewer", 200, None),
    ("training", "GET", "/api/jobs/{j}/events", "viewer", 200, None),
    ("training", "POST", "/api/projects/{p}/train", "annotator", 202, None),
    ("training", "POST", "/api/jobs/{j}/cancel", "annotator", 409, None),  # finished: nothing to cancel
    ("models", "GET", "/api/projects/{p}/models", "viewer", 200, None),
    ("models", "GET", "/api/models/{m}", "viewer", 200, None),
    ("models", "POST", "/api/projects/{p}/models/{m}/activate", "admin", 200, None),
    ("predictions", "GET", "/api/volumes/{v}/prediction", "viewer", 200, None),
    ("predictions", "GET", "/api/volumes/{v}/prediction/slices/0/3.png", "viewer", 200, None),
    ("predictions", "GET", "/api/volumes/{v}/prediction.nii.gz", "viewer", 200, None),
    ("predictions", "GET", "/api/projects/{p}/predictions.zip", "viewer", 200, None),
    ("review", "POST", "/api/volumes/{v}/review/0/{i}", "annotator", 200, lambda w: {"json": {"decision": "reject"}}),
    ("review", "GET", "/api/volumes/{v}/suggestions", "viewer", 200, None),
    ("review", "GET", "/api/projects/{p}/suggestions", "viewer", 200, None),
    ("audit", "GET", "/api/audit", "admin", 200, None),
    ("users", "GET", "/api/users", "admin", 200, None),
    ("users", "POST", "/api/users", "admin", 201, lambda w: {"json": {"name": f"u{next(COUNTER)}", "role": "viewer"}}),
    ("users", "POST", "/api/users/vic/tokens", "admin", 201, None),
    ("members", "GET", "/api/projects/{p}/members", "viewer", 200, None),
    ("members", "POST", "/api/projects/{p}/members", "admin", 201, lambda w: {"json": {"user": "vic"}}),
]
IDS = [f"{method} {path}" for _, method, path, *_ in ENDPOINTS]
PROJECT_SCOPED = [e for e in ENDPOINTS if any(k in e[2] for k in ("{p}", "{v}", "{j}", "{m}"))]


def request_for(world: World, endpoint) -> tuple[str, str, dict]:
    _, method, path, _, _, make = endpoint
    fill = {
        "p": world.p,
        "v": world.v,
        "j": world.j,
        "m": world.m,
        "i": next(COUNTER) % SHAPE[1],
        "d": save_then(world, 2) if "{d}" in path else 0,
    }
    return method, path.format(**fill), (make(world) if make else {})


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=IDS)
def test_each_role_on_each_endpoint(world, endpoint, role):
    group, method, _, needed, ok_status, _ = endpoint
    method, path, kwargs = request_for(world, endpoint)
    allowed = ROLES.index(role) >= ROLES.index(needed)
    if allowed:
        response = world.call(USERS[role], method, path, **kwargs)
        expected = {ok_status, 200} if ok_status == 202 else {ok_status}  # a retrain may join a queued one
        assert response.status_code in expected, (role, path, response.text)
    else:  # refused, and provably nothing changed: every file, folder and database row as before
        wait_quiet(world)
        assert_refused(
            world, lambda: world.call(USERS[role], method, path, **kwargs), 403, f"has the {role} role", needed
        )


@pytest.mark.parametrize("endpoint", PROJECT_SCOPED, ids=[f"{e[1]} {e[2]}" for e in PROJECT_SCOPED])
def test_a_non_member_sees_404_as_for_an_unknown_id(world, endpoint):
    method, path, kwargs = request_for(world, endpoint)
    response = world.call(OUTSIDER, method, path, **kwargs)
    assert response.status_code == 404, response.text
    assert response.json()["detail"].startswith("no ")
    assert "member" not in response.json()["detail"]


def test_a_non_member_cannot_tell_a_hidden_project_from_a_missing_one(world):
    hidden = world.call(OUTSIDER, "GET", f"/api/projects/{world.p}")
    missing = world.call(OUTSIDER, "GET", "/api/projects/99999")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["detail"].replace(str(world.p), "N") == missing.json()["detail"].replace("99999", "N")
    assert world.call(OUTSIDER, "GET", "/api/projects").json() == []
    assert [p["id"] for p in world.call("vic", "GET", "/api/projects").json()] == [world.p]
    assert world.p in [p["id"] for p in world.call("ada", "GET", "/api/projects").json()]  # admins see all


def test_membership_granted_and_revoked_takes_effect_at_once(world):
    assert world.call(OUTSIDER, "GET", f"/api/volumes/{world.v}").status_code == 404
    assert world.call("ada", "POST", f"/api/projects/{world.p}/members", json={"user": OUTSIDER}).status_code == 201
    assert world.call(OUTSIDER, "GET", f"/api/volumes/{world.v}").status_code == 200
    assert world.call("ada", "DELETE", f"/api/projects/{world.p}/members/{OUTSIDER}").status_code == 200
    assert world.call(OUTSIDER, "GET", f"/api/volumes/{world.v}").status_code == 404


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=IDS)
def test_no_credentials_is_401_everywhere(world, endpoint):
    method, path, kwargs = request_for(world, endpoint)
    response = world.call(None, method, path, **kwargs)
    assert response.status_code == 401, response.text
    assert "Bearer" in response.headers.get("www-authenticate", "")
    assert "authentication required" in response.json()["detail"]


def test_a_bad_token_is_401(world):
    for header in ("Bearer sw_not-a-real-token", "Bearer " + world.tokens["vic"][:-2], "Basic dmljOnZpYw==", "Bearer"):
        response = world.client.get("/api/projects", headers={"Authorization": header})
        assert response.status_code == 401, header
    assert world.client.get("/api/health").status_code == 200  # the health check stays public


def test_the_audit_log_records_who_did_what_and_when(world):
    ws = world.app.state.workspace
    before = ws.query_audit(limit=1)[0]["id"]
    # the claimed author is ignored: the authenticated user is recorded
    r = world.call(
        "anna",
        "PUT",
        f"/api/volumes/{world.v}/annotations/0/7",
        params={"author": "mallory"},
        content=raw_mask(),
        headers=RAW,
    )
    assert r.status_code == 200 and r.json()["author"] == "anna"
    version = r.json()["version"]
    assert (
        world.call(
            "anna", "DELETE", f"/api/volumes/{world.v}/annotations/0/7", headers={"If-Match": f'"{version}"'}
        ).status_code
        == 200
    )
    assert (
        world.call(
            "anna", "POST", f"/api/volumes/{world.v}/review/0/8", json={"decision": "accept", "author": "mallory"}
        ).status_code
        == 200
    )
    job = world.call("anna", "POST", f"/api/projects/{world.p}/train").json()
    wait_job(world, job["id"])
    assert world.call("ada", "POST", f"/api/projects/{world.p}/models/{world.m}/activate").status_code == 200

    entries = [e for e in world.call("ada", "GET", "/api/audit", params={"limit": 1000}).json() if e["id"] > before]
    done = {(e["who"], e["what"]) for e in entries}
    assert {
        ("anna", "save_annotation"),
        ("anna", "delete_annotation"),
        ("anna", "review_accept"),
        ("anna", "retrain"),
        ("ada", "activate_model"),
    } <= done
    assert all(e["when"] and e["who"] != "mallory" for e in entries)
    only_anna = world.call("ada", "GET", "/api/audit", params={"who": "anna", "what": "retrain"}).json()
    assert only_anna and {(e["who"], e["what"]) for e in only_anna} == {("anna", "retrain")}
    assert world.call("anna", "GET", "/api/audit").status_code == 403
