"""The Gradio page's handlers without a browser: pure logic against an httpx MockTransport, and the real
path against a running `slicewise serve` (create a project, upload, a refused upload, the viewer page)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess

import httpx
import numpy as np
import pytest
from PIL import Image

from data.errors import InvalidInput
from data.label_text import parse_label_text
from frontend import handlers, render
from frontend.client import ApiClient, ApiError
from helpers_server import SHARED_DATA, running_server

# ------------------------------------------------------------------------------------------ pure logic


def test_upload_name_and_suffixes():
    assert handlers.upload_name("/tmp/gradio/abc/hippocampus_001.nii.gz") == "hippocampus_001.nii.gz"
    assert all(handlers.is_supported_upload(n) for n in ("a.nii", "a.NII.GZ", "series.zip", "a.nrrd", "a.mha"))
    assert not any(handlers.is_supported_upload(n) for n in ("a.png", "a.gz", "a.nii.bz2"))


def test_render_escapes_names_and_links_the_viewer():
    html = render.volumes_table(
        [
            {
                "id": 4,
                "name": "<script>x</script>",
                "shape": [3, 4, 5],
                "spacing": [1, 0.5, 2],
                "orientation": "RAS",
                "source": "nifti",
            }
        ],
        selected=4,
    )
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "/static/viewer.html?volume=4" in html and 'aria-current="true"' in html
    frame = render.viewer_frame({"id": 4, "name": "v"})
    assert 'id="viewer-iframe"' in frame and "volume=4&amp;embed=1" in frame
    assert 'role="alert"' in render.message("error", "bad <b>")
    assert "&lt;b&gt;" in render.message("error", "bad <b>")


class FakeApi:
    """A tiny in-memory stand-in for the API, served through httpx.MockTransport."""

    def __init__(self):
        self.projects: list[dict] = []
        self.volumes: list[dict] = []
        self.requests: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        self.requests.append((method, path))
        if path == "/api/labels/parse" and method == "GET":
            try:
                return httpx.Response(200, json=parse_label_text(request.url.params["text"]))
            except InvalidInput as exc:
                return httpx.Response(422, json={"detail": str(exc)})
        if path == "/api/projects" and method == "GET":
            return httpx.Response(200, json=self.projects)
        if path == "/api/projects" and method == "POST":
            body = json.loads(request.content)
            if any(p["name"] == body["name"] for p in self.projects):
                return httpx.Response(409, json={"detail": f"a project named {body['name']!r} exists already"})
            project = {"id": len(self.projects) + 1, **body, "active_model_id": None}
            self.projects.append(project)
            return httpx.Response(201, json=project)
        match = re.fullmatch(r"/api/projects/(\d+)(/volumes)?", path)
        if match:
            pid = int(match.group(1))
            project = next((p for p in self.projects if p["id"] == pid), None)
            if project is None:
                return httpx.Response(404, json={"detail": f"no project with id {pid}"})
            if not match.group(2):
                return httpx.Response(200, json=project)
            if method == "GET":
                return httpx.Response(200, json=[v for v in self.volumes if v["project_id"] == pid])
            name = re.search(rb'filename="([^"]+)"', request.content).group(1).decode()
            if b"CORRUPT" in request.content:
                return httpx.Response(422, json={"detail": f"{name}: file is not a NIfTI"})
            volume = {
                "id": len(self.volumes) + 1,
                "project_id": pid,
                "name": name.split(".")[0],
                "shape": [3, 4, 5],
                "spacing": [1.0, 1.0, 1.0],
                "orientation": "RAS",
                "source": "nifti",
            }
            self.volumes.append(volume)
            return httpx.Response(201, json=volume)
        return httpx.Response(404, json={"detail": "unknown path"})


@pytest.fixture
def fake():
    api = FakeApi()
    client = ApiClient("http://testserver", transport=httpx.MockTransport(api))
    yield api, client
    client.close()


def test_load_projects_with_an_empty_workspace_invites_to_create(fake):
    _, client = fake
    screen = handlers.load_projects(client, handlers.empty_state())
    assert screen.project_choices == [] and screen.state == handlers.empty_state()
    assert "No project yet" in screen.project_message


def test_create_project_selects_it_and_shows_its_labels(fake):
    api, client = fake
    screen = handlers.create_project(client, handlers.empty_state(), " Knee ", "cartilage #aa0000")
    assert screen.state == {"project_id": 1, "volume_id": None}
    assert screen.project_choices == [("Knee (#1)", 1)] and screen.project_value == 1
    assert 'data-kind="ok"' in screen.project_message and "cartilage" in screen.labels_html
    assert api.projects[0]["labels"] == [{"value": 1, "name": "cartilage", "color": "#aa0000"}]
    again = handlers.create_project(client, screen.state, "Knee", "x")
    assert "exists already" in again.project_message and again.state == screen.state


def test_create_project_refuses_bad_input_without_calling_the_api(fake):
    api, client = fake
    assert "name" in handlers.create_project(client, handlers.empty_state(), "  ", "a").project_message
    assert "Labels" in handlers.create_project(client, handlers.empty_state(), "P", "a #zz").project_message
    assert not any(method == "POST" for method, _ in api.requests)


def test_upload_reports_each_file_and_keeps_good_ones(fake, tmp_path):
    api, client = fake
    state = handlers.create_project(client, handlers.empty_state(), "P", "a").state
    good, bad, wrong = tmp_path / "scan1.nii.gz", tmp_path / "broken.nii.gz", tmp_path / "photo.png"
    good.write_bytes(b"fine")
    bad.write_bytes(b"CORRUPT")
    wrong.write_bytes(b"png")
    seen = []
    screen = handlers.upload_files(
        client, state, [str(good), str(bad), str(wrong)], progress=lambda f, d: seen.append(f)
    )
    assert [v["name"] for v in api.volumes] == ["scan1"]
    assert screen.state == {"project_id": 1, "volume_id": 1}
    assert "Uploaded scan1" in screen.upload_message
    assert "broken.nii.gz: file is not a NIfTI" in screen.upload_message
    assert "broken.nii.gz: broken.nii.gz" not in screen.upload_message  # the server's detail names it already
    assert "photo.png: not a .nii" in screen.upload_message
    assert screen.upload_message.count('role="alert"') == 2
    assert not screen.clear_upload  # keep the list so the refused files stay visible
    assert seen[0] == 0 and seen[-1] == 1.0
    assert screen.volume_choices == [("scan1 — 3 × 4 × 5 (#1)", 1)] and 'id="viewer-iframe"' in screen.viewer_html


def test_upload_needs_a_project_and_a_file(fake):
    _, client = fake
    assert "project first" in handlers.upload_files(client, handlers.empty_state(), ["a.nii"]).upload_message
    state = handlers.create_project(client, handlers.empty_state(), "P", "a").state
    assert "Choose a file" in handlers.upload_files(client, state, None).upload_message


def test_select_volume_and_unknown_ids(fake, tmp_path):
    api, client = fake
    state = handlers.create_project(client, handlers.empty_state(), "P", "a").state
    for n in (1, 2):
        (tmp_path / f"v{n}.nii").write_bytes(b"ok")
        state = handlers.upload_files(client, state, [str(tmp_path / f"v{n}.nii")]).state
    screen = handlers.select_volume(client, state, 1)
    assert screen.state["volume_id"] == 1 and "volume=1" in screen.viewer_html
    missing = handlers.select_volume(client, state, 99)
    assert missing.state["volume_id"] is None and "not in this project" in missing.project_message
    gone = handlers.select_project(client, state, 42)
    assert "no project with id 42" in gone.project_message and gone.state == state


def test_client_turns_errors_and_unreachable_servers_into_api_errors():
    client = ApiClient(
        "http://testserver",
        transport=httpx.MockTransport(lambda r: httpx.Response(422, json={"detail": [{"msg": "field required"}]})),
    )
    with pytest.raises(ApiError) as info:
        client.list_projects()
    assert info.value.status == 422 and info.value.detail == "field required"

    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    down = ApiClient("http://127.0.0.1:9", transport=httpx.MockTransport(refuse))
    with pytest.raises(ApiError) as info:
        down.health()
    assert info.value.status == 0 and "cannot reach" in info.value.detail


# ------------------------------------------------------------------------------------------ real server


@pytest.mark.slow
def test_handlers_against_a_real_server(tmp_path):
    images = sorted((SHARED_DATA / "hippocampus" / "imagesTr").glob("*.nii.gz"))
    if not images:
        pytest.skip(f"no hippocampus volumes under {SHARED_DATA} (development data absent)")
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b definitely not gzip" * 20)
    with running_server(tmp_path / "ws") as server:
        with ApiClient(server.base_url) as client:
            screen = handlers.create_project(client, handlers.empty_state(), "Hippo", "anterior\nposterior")
            assert screen.state["project_id"] is not None, screen.project_message
            screen = handlers.upload_files(client, screen.state, [str(images[0]), str(corrupt)])
            assert "Uploaded hippocampus" in screen.upload_message
            assert "corrupt.nii.gz" in screen.upload_message and 'role="alert"' in screen.upload_message
            volumes = client.list_volumes(screen.state["project_id"])
            assert [v["name"] for v in volumes] == [images[0].name[: -len(".nii.gz")]]
            reloaded = handlers.load_projects(client, handlers.empty_state())
            assert reloaded.state == screen.state and reloaded.project_value == screen.state["project_id"]

        http = server.client()
        root = http.get("/", follow_redirects=False)
        assert root.status_code in (302, 307) and root.headers["location"].endswith("/ui")
        assert http.get("/ui/").status_code == 200
        page = http.get(render.viewer_url(volumes[0]["id"]))
        assert page.status_code == 200 and all(
            f'id="canvas-{plane}"' in page.text for plane in ("axial", "coronal", "sagittal")
        )
        for asset in (
            "viewer.js",
            "viewer.css",
            "viewer-core.js",
            "viewer-geometry.js",
            "viewer-png.js",
            "viewer-draw.js",
            "viewer-jobs.js",
            "viewer-state.js",
            "viewer-slices.js",
            "viewer-views.js",
            "viewer-navigation.js",
            "viewer-brush.js",
            "viewer-edits.js",
            "viewer-pointer.js",
            "viewer-save.js",
            "viewer-status.js",
            "viewer-suggestions.js",
            "viewer-tools.js",
            "viewer-display.js",
            "viewer-review.js",
            "viewer-open.js",
            "viewer-keys.js",
        ):
            assert http.get(f"/static/{asset}").status_code == 200
        # nothing on the pages points at a CDN: scripts and styles are served by the app
        for url in (render.viewer_url(1), "/static/viewer.js", "/static/viewer.css"):
            assert not re.search(r"(src|href)=[\"']https?://", http.get(url).text)


# ------------------------------------------------------------------------------------------ the viewer's PNG encoder


def test_viewer_png_encoder_is_lossless(tmp_path):
    """The browser's hand-written greyscale PNG encoder (viewer-png.js) decodes to the exact mask."""
    assert shutil.which("node"), "node is missing: scripts/test.sh installs it (apt-get install nodejs)"
    from frontend.mount import STATIC_DIR

    rng = np.random.default_rng(1)
    mask = rng.choice([0, 1, 2, 255], size=(37, 53)).astype(np.uint8)
    script = tmp_path / "encode.mjs"
    script.write_text(
        f"import {{ encodeGreyPng }} from {json.dumps((STATIC_DIR / 'viewer-png.js').as_uri())};"
        + f"""
const mask = Uint8Array.from({json.dumps(mask.ravel().tolist())});
(async () => {{
  for (const stored of [false, true]) {{
    const saved = globalThis.CompressionStream;
    if (stored) globalThis.CompressionStream = undefined;
    const blob = await encodeGreyPng(mask, 37, 53);
    globalThis.CompressionStream = saved;
    process.stdout.write(Buffer.from(await blob.arrayBuffer()).toString('base64') + '\\n');
  }}
}})();
"""
    )
    out = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for line in out.stdout.split():
        with Image.open(io.BytesIO(base64.b64decode(line))) as image:
            assert image.mode == "L" and image.size == (53, 37)
            np.testing.assert_array_equal(np.array(image), mask)


def test_volume_table_shows_progress_and_the_last_score():
    from frontend import render

    table = render.volumes_table(
        [
            {"id": 1, "name": "a", "shape": [2, 2, 2], "spacing": [1, 1, 1]},
            {"id": 2, "name": "b", "shape": [2, 2, 2], "spacing": [1, 1, 1]},
        ],
        1,
        {
            1: {"painted": 3, "reviewed": 1, "prediction": "ready", "model_id": 4, "dice": 0.8123},
            2: {"painted": 0, "reviewed": 0, "prediction": "none", "model_id": None, "dice": None},
        },
    )
    assert "3 painted, 1 reviewed; predicted (model 4), Dice 0.81" in table
    assert "0 painted; no prediction<" in table
