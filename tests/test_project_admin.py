"""Labels edited after a project exists; deleting a volume or a project: confirmed by name, audited, refused
while a retrain runs, rows and files removed together, and nothing half-deleted after a crash."""

from __future__ import annotations

import io
import textwrap

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_store_crash import assert_database_intact, run_child_until

import data.store_project_admin as admin
from app.main import create_app
from app.settings import Settings
from data.errors import Conflict
from data.store import Workspace
from helpers_bad_input import GOOD_NIFTI, LABELS, assert_refused, make_api

DELETE_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import data.store_project_admin as admin
    from data.store import Workspace

    root, project_id, point, signal_file = sys.argv[1:5]

    def hang(*args, **kwargs):
        Path(signal_file).write_text("ready")
        time.sleep(120)

    if point == "before-commit":   # rows deleted inside the open transaction, audit row being written
        Workspace._audit = staticmethod(hang)
    else:                          # committed, the first file not yet removed
        admin.remove_tree = hang
    Workspace(root).delete_project(int(project_id), "P")
    Path(signal_file).write_text("finished without being killed")
    """
)


@pytest.fixture
def api(tmp_path):
    api = make_api(tmp_path)
    yield api
    api.client.__exit__(None, None, None)


def paint(api, volume_id: int, index: int, value: int) -> None:
    shape = api.client.get(f"/api/volumes/{volume_id}").json()["shape"]
    mask = np.zeros(shape[1:], np.uint8)
    mask[1:4, 2:5] = value
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    r = api.client.put(
        f"/api/volumes/{volume_id}/annotations/0/{index}",
        content=buf.getvalue(),
        headers={"Content-Type": "image/png", "If-Match": '"0"'},
    )
    assert r.status_code == 200, r.text


def audit(api) -> list[dict]:
    return Workspace(api.root).list_audit()


def files_of(root, volume_id: int) -> list:
    return [p for p in (root / "volumes" / str(volume_id), root / "annotations" / str(volume_id)) if p.exists()]


def stored_files(root) -> list:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and "slicewise.db" not in p.name)


def test_labels_are_renamed_recoloured_and_added(api):
    paint(api, api.volume_id, 2, 1)
    new = [
        {"value": 1, "name": "head", "color": "#112233"},
        {"value": 2, "name": "posterior", "color": "#3cb44b"},
        {"value": 3, "name": "tail", "color": "#AABBCC"},
    ]
    r = api.client.put(f"/api/projects/{api.project_id}/labels", json={"labels": new})
    assert r.status_code == 200, r.text
    assert r.json()["labels"][0] == {"value": 1, "name": "head", "color": "#112233"}
    assert r.json()["labels"][2]["color"] == "#aabbcc"
    assert api.client.get(f"/api/projects/{api.project_id}").json()["labels"] == r.json()["labels"]
    entry = audit(api)[0]
    assert entry["what"] == "update_labels" and entry["details"]["before"] == LABELS
    paint(api, api.volume_id, 3, 3)  # the new label can be painted at once


def test_a_painted_label_cannot_be_removed_but_an_unused_one_can(api):
    paint(api, api.volume_id, 2, 2)
    only_one = {"labels": [LABELS[0]]}
    assert_refused(
        api, lambda: api.client.put(f"/api/projects/{api.project_id}/labels", json=only_one), 409, "[2]", "painted"
    )
    assert_refused(
        api,
        lambda: api.client.put(
            f"/api/projects/{api.project_id}/labels",
            json={"labels": [LABELS[0], {**LABELS[1], "name": LABELS[0]["name"]}]},
        ),
        422,
        "twice",
    )
    r = api.client.put(f"/api/projects/{api.project_id}/labels", json={"labels": [LABELS[1]]})
    assert r.status_code == 200 and [label["value"] for label in r.json()["labels"]] == [2]


def test_deleting_a_volume_needs_its_name_and_removes_rows_and_files(api):
    other = api.upload("second.nii.gz", GOOD_NIFTI).json()["id"]
    paint(api, api.volume_id, 2, 1)
    paint(api, other, 3, 2)
    url = f"/api/volumes/{api.volume_id}"
    assert_refused(api, lambda: api.client.delete(url), 422, "confirm='good'")
    assert_refused(api, lambda: api.client.delete(url, params={"confirm": "second"}), 422, "got 'second'")
    r = api.client.delete(url, params={"confirm": "good"})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "deleted": "volume",
        "volume_id": api.volume_id,
        "name": "good",
        "project_id": api.project_id,
        "annotations": 1,
        "annotation_versions": 1,
        "predictions": 0,
    }
    assert api.client.get(url).status_code == 404
    assert api.client.get(f"/api/volumes/{api.volume_id}/voxels").status_code == 404
    assert files_of(api.root, api.volume_id) == []
    assert [v["id"] for v in api.client.get(f"/api/projects/{api.project_id}/volumes").json()] == [other]
    assert len(api.client.get(f"/api/volumes/{other}/annotations").json()) == 1
    assert audit(api)[0]["what"] == "delete_volume" and audit(api)[0]["details"]["name"] == "good"
    assert api.client.delete(url, params={"confirm": "good"}).status_code == 404


def test_deleting_a_project_removes_everything_it_owns(api):
    paint(api, api.volume_id, 2, 1)
    api.client.__exit__(None, None, None)  # jobs are made by hand below: no worker may pick them up
    ws = Workspace(api.root)
    job = ws.create_job(api.project_id, "train", {})
    ws.update_job(job["id"], state="running")
    with pytest.raises(Conflict, match=f"job {job['id']} is running"):
        ws.delete_project(api.project_id, "P")
    ws.update_job(job["id"], state="cancelled")
    (api.root / "jobs" / str(job["id"])).mkdir(parents=True, exist_ok=True)
    (api.root / "jobs" / str(job["id"]) / "progress.jsonl").write_text("{}\n")
    api.client = TestClient(create_app(Settings(workspace=api.root, demo=False)))
    api.client.__enter__()
    kept = api.client.post("/api/projects", json={"name": "Q", "labels": LABELS}).json()
    url = f"/api/projects/{api.project_id}"
    assert_refused(api, lambda: api.client.delete(url), 422, "confirm='P'")
    r = api.client.delete(url, params={"confirm": "P"})
    assert r.status_code == 200, r.text
    assert r.json()["volumes"] == 1 and r.json()["jobs"] == 1 and r.json()["annotations"] == 1
    assert api.client.get(url).status_code == 404
    assert [p["id"] for p in api.client.get("/api/projects").json()] == [kept["id"]]
    assert files_of(api.root, api.volume_id) == [] and not (api.root / "jobs" / str(job["id"])).exists()
    assert audit(api)[0]["what"] == "delete_project"


def test_a_delete_that_fails_before_commit_changes_nothing(api, monkeypatch):
    paint(api, api.volume_id, 2, 1)

    def crash(*args, **kwargs):
        raise RuntimeError("killed before the commit")

    monkeypatch.setattr(Workspace, "_audit", staticmethod(crash))
    ws = Workspace(api.root)
    with pytest.raises(RuntimeError):
        ws.delete_volume(api.volume_id, "good")
    assert ws.get_volume(api.volume_id)["name"] == "good" and len(ws.list_annotations(api.volume_id)) == 1
    assert len(files_of(api.root, api.volume_id)) == 2
    ws.get_annotation(api.volume_id, 0, 2)  # its file is still readable


def test_a_delete_killed_after_commit_leaves_only_files_the_next_start_sweeps(api, monkeypatch):
    paint(api, api.volume_id, 2, 1)
    prediction = api.root / "predictions" / "7" / str(api.volume_id)
    prediction.mkdir(parents=True)
    (prediction / "mask.npy").write_bytes(b"x")

    def killed(path):
        raise SystemExit("killed after the commit")

    monkeypatch.setattr(admin, "remove_tree", killed)
    ws = Workspace(api.root)
    with pytest.raises(SystemExit):
        ws.delete_volume(api.volume_id, "good")
    monkeypatch.undo()
    assert ws.list_volumes(api.project_id) == []  # the rows went in one transaction
    assert len(files_of(api.root, api.volume_id)) == 2  # the files are orphans now
    swept = Workspace(api.root).sweep_uncommitted()
    assert swept["volume_folders"] == 1 and swept["annotation_files"] == 1 and swept["prediction_folders"] == 1
    assert files_of(api.root, api.volume_id) == [] and not prediction.exists()


def test_store_refuses_while_a_job_is_queued(api):
    api.client.__exit__(None, None, None)
    ws = Workspace(api.root)
    ws.create_job(api.project_id, "train", {})
    with pytest.raises(Conflict, match="queued"):
        ws.delete_volume(api.volume_id, "good")
    assert ws.get_volume(api.volume_id)["name"] == "good"
    api.client = TestClient(create_app(Settings(workspace=api.root / "unused", demo=False)))
    api.client.__enter__()


@pytest.mark.parametrize("point", ["before-commit", "after-commit"])
def test_a_project_delete_killed_with_sigkill_is_all_or_nothing(api, tmp_path, point):
    paint(api, api.volume_id, 2, 1)
    api.client.__exit__(None, None, None)  # the child is the only process using the workspace
    files = stored_files(api.root)
    signal_file = tmp_path / "signal"
    run_child_until(
        point, [str(api.root), str(api.project_id), point, str(signal_file)], signal_file, script=DELETE_CHILD
    )
    assert_database_intact(api.root)
    ws = Workspace(api.root)
    if point == "before-commit":  # nothing happened: rows, files, the annotation readable
        assert ws.get_project(api.project_id)["name"] == "P"
        assert len(ws.list_annotations(api.volume_id)) == 1
        ws.get_annotation(api.volume_id, 0, 2)
        assert ws.sweep_uncommitted() == {k: 0 for k in ws.sweep_uncommitted()}
        assert stored_files(api.root) == files
    else:  # all rows gone; the files left are orphans the next start removes
        assert ws.list_projects() == [] and files_of(api.root, api.volume_id)
        swept = ws.sweep_uncommitted()
        assert swept["volume_folders"] == 1 and swept["annotation_files"] == 1
        assert files_of(api.root, api.volume_id) == []
    api.client = TestClient(create_app(Settings(workspace=api.root / "unused", demo=False)))
    api.client.__enter__()
