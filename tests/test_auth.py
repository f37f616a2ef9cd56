"""Authentication: zero-config local mode, the first user turning login on, tokens and passwords hashed
at rest, the login/logout cookie flow, the /ui guard, the CLI, and the real `slicewise serve` refusing a
non-loopback address without users (and serving tokens over HTTP once a user exists)."""

from __future__ import annotations

import hashlib
import subprocess
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from app.auth import CSRF_COOKIE, SESSION_COOKIE, is_loopback
from app.cli import main as cli_main
from app.main import create_app
from app.settings import Settings
from data.store import Workspace
from frontend.client import ApiClient
from helpers_server import running_server, slicewise_command

LABELS = [{"value": 1, "name": "anterior", "color": "#e6194b"}]


@pytest.fixture
def app_client(tmp_path):
    app = create_app(Settings(workspace=tmp_path / "ws", demo=False))
    with TestClient(app) as client:
        yield app, client


def db_bytes(root) -> bytes:
    """Everything SQLite has on disk for the workspace: the database, its WAL and shared memory."""
    return b"".join(p.read_bytes() for p in sorted(root.glob("slicewise.db*")))


def test_loopback_without_users_needs_no_login(app_client):
    app, client = app_client
    assert client.get("/api/me").json() == {"name": "local", "role": "admin", "auth": False}
    project = client.post("/api/projects", json={"name": "p", "labels": LABELS})
    assert project.status_code == 201
    assert client.get("/api/projects").status_code == 200
    assert client.get("/api/audit").status_code == 200
    assert client.get("/ui/", follow_redirects=False).status_code == 200
    assert client.post("/api/login", json={"name": "x", "password": "y"}).json()["auth"] is False


def test_is_loopback():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.org", ""))


def test_the_app_itself_refuses_a_public_address_without_users(tmp_path):
    app = create_app(Settings(workspace=tmp_path / "ws", demo=False, host="0.0.0.0"))
    with pytest.raises(RuntimeError, match="slicewise users add"):
        with TestClient(app):
            pass
    Workspace(tmp_path / "ws").add_user("ada", "admin")
    with TestClient(create_app(Settings(workspace=tmp_path / "ws", demo=False, host="0.0.0.0"))) as client:
        assert client.get("/api/projects").status_code == 401


def test_the_first_user_turns_authentication_on(app_client):
    app, client = app_client
    created = client.post("/api/users", json={"name": "ada", "role": "admin", "password": "ada-password"})
    assert created.status_code == 201 and created.json()["has_password"] is True
    assert "password_hash" not in created.json()
    refused = client.get("/api/projects")
    assert refused.status_code == 401
    assert "authentication required" in refused.json()["detail"] and "/login" in refused.json()["detail"]
    assert client.get("/api/health").status_code == 200


def test_tokens_and_passwords_are_hashed_at_rest(app_client, tmp_path):
    app, client = app_client
    ws = app.state.workspace
    ws.add_user("ada", "admin", password="a secret passphrase")
    secret, _ = ws.create_token("ada")
    bearer = {"Authorization": f"Bearer {secret}"}
    over_api = client.post("/api/users/ada/tokens", json={"label": "script"}, headers=bearer).json()["token"]
    assert client.get("/api/projects", headers={"Authorization": f"Bearer {over_api}"}).status_code == 200
    listed = client.get("/api/users/ada/tokens", headers=bearer).json()
    assert len(listed) == 2 and all("token" not in t and "token_hash" not in t for t in listed)
    ws.db.connection().execute("PRAGMA wal_checkpoint(FULL)")
    stored = db_bytes(tmp_path / "ws")
    for raw in (secret, over_api):
        assert raw.encode() not in stored
        assert hashlib.sha256(raw.encode()).hexdigest().encode() in stored
    assert b"a secret passphrase" not in stored


def test_revoked_tokens_and_deleted_users_are_refused(app_client):
    app, client = app_client
    ws = app.state.workspace
    ws.add_user("ada", "admin")
    ws.add_user("vic", "viewer")
    admin = {"Authorization": f"Bearer {ws.create_token('ada')[0]}"}
    secret, row = ws.create_token("vic")
    vic = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/projects", headers=vic).status_code == 200
    assert client.delete(f"/api/tokens/{row['id']}", headers=admin).json()["revoked"]
    refused = client.get("/api/projects", headers=vic)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    vic = {"Authorization": f"Bearer {ws.create_token('vic')[0]}"}
    assert client.delete("/api/users/vic", headers=admin).status_code == 200
    assert client.get("/api/projects", headers=vic).status_code == 401
    assert client.get("/api/users", headers=admin).json()[0]["name"] == "ada"


def test_login_sets_an_httponly_cookie_and_logout_ends_the_session(app_client):
    app, client = app_client
    ws = app.state.workspace
    ws.add_user("anna", "annotator", password="anna-password")
    wrong = client.post("/api/login", json={"name": "anna", "password": "nope-nope"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "wrong user name or password"
    unknown = client.post("/api/login", json={"name": "nobody", "password": "anna-password"})
    assert unknown.status_code == 401 and unknown.json()["detail"] == wrong.json()["detail"]

    ok = client.post("/api/login", json={"name": "anna", "password": "anna-password"})
    assert ok.status_code == 200 and ok.json()["role"] == "annotator"
    set_cookie = ok.headers["set-cookie"]
    assert SESSION_COOKIE in set_cookie and "HttpOnly" in set_cookie and "samesite=lax" in set_cookie.lower()
    cookie = client.cookies.get(SESSION_COOKIE)
    assert cookie and cookie.encode() not in db_bytes(ws.root)
    assert client.get("/api/me").json() == {"name": "anna", "role": "annotator", "auth": True}
    assert client.get("/api/projects").status_code == 200
    csrf = {"X-CSRF-Token": client.cookies.get(CSRF_COOKIE)}
    refused = client.post("/api/projects", json={"name": "p", "labels": LABELS}, headers=csrf)
    assert refused.status_code == 403 and "has the annotator role" in refused.json()["detail"]
    assert client.get("/ui/", follow_redirects=False).status_code == 200  # the UI with the cookie

    assert client.post("/api/logout", headers=csrf).status_code == 200
    assert client.get("/api/projects").status_code == 401
    client.cookies.set(SESSION_COOKIE, cookie)  # a replayed cookie is dead too
    replay = client.get("/api/projects")
    assert replay.status_code == 401 and "expired" in replay.json()["detail"]
    assert {"login", "login_failed"} <= {e["what"] for e in ws.query_audit(who="anna")}


def test_an_expired_session_is_refused(app_client):
    app, client = app_client
    ws = app.state.workspace
    ws.add_user("vic", "viewer")
    secret, _ = ws.create_token("vic", kind="session", ttl_s=-1)
    client.cookies.set(SESSION_COOKIE, secret)
    assert client.get("/api/projects").status_code == 401
    # a session secret is not an API token (and the other way round)
    assert client.get("/api/projects", headers={"Authorization": f"Bearer {secret}"}).status_code == 401


def test_the_ui_and_viewer_send_a_browser_without_login_to_the_login_page(app_client):
    app, client = app_client
    app.state.workspace.add_user("vic", "viewer", password="vic-password")
    page = client.get("/ui", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=/ui"
    assert client.get("/ui/gradio_api/info", follow_redirects=False).status_code == 401
    login = client.get("/login")
    assert login.status_code == 200 and "/static/login.js" in login.text
    assert "/api/login" in client.get("/static/login.js").text
    viewer = client.get("/static/viewer-core.js")  # the viewer's one fetch helper
    assert viewer.status_code == 200 and "/login?next=" in viewer.text


def test_cli_users_tokens_members(tmp_path, capsys):
    ws_dir = tmp_path / "ws"
    ws = Workspace(ws_dir)
    project = ws.create_project("p", LABELS)
    assert cli_main(["users", "add", "anna", "--role", "annotator", "--workspace", str(ws_dir)]) == 0
    assert cli_main(["users", "add", "anna", "--role", "viewer", "--workspace", str(ws_dir)]) == 2
    assert cli_main(["users", "add", "bad name", "--role", "viewer", "--workspace", str(ws_dir)]) == 2
    capsys.readouterr()
    assert cli_main(["tokens", "create", "anna", "--workspace", str(ws_dir)]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("sw_") and ws.user_for_token(token)["name"] == "anna"
    assert cli_main(["members", "add", str(project["id"]), "anna", "--workspace", str(ws_dir)]) == 0
    assert ws.is_member(project["id"], "anna")
    assert cli_main(["users", "list", "--workspace", str(ws_dir)]) == 0
    assert "anna\tannotator\ttokens only" in capsys.readouterr().out
    assert cli_main(["tokens", "revoke", "--user", "anna", "--workspace", str(ws_dir)]) == 0
    assert ws.user_for_token(token) is None


@pytest.mark.slow
def test_serve_refuses_a_public_address_without_users_then_serves_tokens(tmp_path):
    ws_dir = tmp_path / "ws"
    refused = subprocess.run(
        [*slicewise_command(), "serve", "--workspace", str(ws_dir), "--host", "0.0.0.0", "--port", "1", "--no-demo"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2
    assert "refusing to listen on 0.0.0.0" in refused.stderr and "slicewise users add" in refused.stderr
    assert "slicewise tokens create" in refused.stderr

    add = subprocess.run(
        [
            *slicewise_command(),
            "users",
            "add",
            "ada",
            "--role",
            "admin",
            "--password-stdin",
            "--workspace",
            str(ws_dir),
        ],
        input="ada-password\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert add.returncode == 0, add.stderr
    made = subprocess.run(
        [*slicewise_command(), "tokens", "create", "ada", "--workspace", str(ws_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    token = made.stdout.strip()
    # with a user, any address is allowed (the last --host wins over the helper's 127.0.0.1)
    with (
        running_server(ws_dir, extra_args=["--host", "0.0.0.0"], startup_timeout=180) as server,
        server.client() as http,
    ):
        assert http.get("/api/projects").status_code == 401
        bearer = {"Authorization": f"Bearer {token}"}
        assert http.get("/api/projects", headers=bearer).status_code == 200
        assert http.post("/api/projects", json={"name": "p", "labels": LABELS}, headers=bearer).status_code == 201
        # the Gradio UI's server-side client acts for the browser: with its token or forwarded cookie
        login = http.post("/api/login", json={"name": "ada", "password": "ada-password"})
        cookie = f"{SESSION_COOKIE}={login.cookies[SESSION_COOKIE]}"
        with ApiClient(server.base_url) as api:
            assert [p["name"] for p in api.as_caller(cookie=cookie).list_projects()] == ["p"]
            assert [p["name"] for p in api.as_caller(token=token).list_projects()] == ["p"]
            with pytest.raises(Exception) as refused_call:
                api.list_projects()
            assert getattr(refused_call.value, "status", None) == 401
        start = time.monotonic()
        assert httpx.get(server.url("/ui"), follow_redirects=False).status_code == 303
        assert time.monotonic() - start < 10
