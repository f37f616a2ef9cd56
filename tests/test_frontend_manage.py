"""The "Manage this project" handlers and the per-volume progress column, against a real `slicewise serve`."""

from __future__ import annotations

import io

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from frontend import handlers, manage
from frontend.client import ApiClient
from helpers_server import running_server

pytestmark = pytest.mark.slow


def nifti(path, shape=(6, 7, 5)):
    nib.save(nib.Nifti1Image(np.arange(np.prod(shape), dtype=np.int16).reshape(shape), np.eye(4)), str(path))
    return path


def test_labels_edit_delete_volume_and_project_from_the_project_page(tmp_path):
    with running_server(tmp_path / "ws") as server, ApiClient(server.base_url) as client:
        screen = handlers.create_project(client, handlers.empty_state(), "Lab", "liver\nspleen")
        assert manage.project_labels_text(client, screen.state) == "1 liver #e6194b\n2 spleen #3cb44b"
        screen = handlers.upload_files(
            client, screen.state, [str(nifti(tmp_path / "a.nii.gz")), str(nifti(tmp_path / "b.nii.gz"))]
        )
        first, second = (v["id"] for v in client.list_volumes(screen.state["project_id"]))
        mask = np.zeros((7, 5), np.uint8)
        mask[2:4, 1:3] = 2
        buf = io.BytesIO()
        Image.fromarray(mask).save(buf, format="PNG")
        server.client().put(
            f"/api/volumes/{first}/annotations/0/3",
            content=buf.getvalue(),
            headers={"Content-Type": "image/png", "If-Match": '"0"'},
        ).raise_for_status()

        state = handlers.select_volume(client, screen.state, first).state
        table = handlers.select_project(client, state, state["project_id"]).volumes_html
        assert "1 painted; no prediction" in table and "0 painted; no prediction" in table

        edited = manage.save_labels(client, state, "1 liver #112233\n2 right kidney #3cb44b\n3 spleen")
        assert "saved" in edited.project_message and "right kidney" in edited.labels_html
        assert [lab["name"] for lab in client.get_project(state["project_id"])["labels"]] == [
            "liver",
            "right kidney",
            "spleen",
        ]
        refused = manage.save_labels(client, state, "1 liver")
        assert "not changed" in refused.project_message and "painted" in refused.project_message
        assert len(client.get_project(state["project_id"])["labels"]) == 3

        wrong = manage.delete_volume(client, state, "b")
        assert "Not deleted" in wrong.project_message and "exact name (confirm=&#x27;a&#x27;)" in wrong.project_message
        assert len(client.list_volumes(state["project_id"])) == 2
        done = manage.delete_volume(client, state, " a ")
        assert "Deleted volume &quot;a&quot; with 1 painted slice." in done.project_message
        assert [v["id"] for v in client.list_volumes(state["project_id"])] == [second]
        assert done.state["volume_id"] == second

        gone = manage.delete_project(client, done.state, "Lab")
        assert "Deleted project &quot;Lab&quot;: 1 volumes" in gone.project_message
        assert client.list_projects() == [] and gone.state == handlers.empty_state()
        audit = server.client().get("/api/audit")
        assert audit.status_code == 200, audit.text
        assert {"delete_volume", "delete_project", "update_labels"} <= {a["what"] for a in audit.json()}
