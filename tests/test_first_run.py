"""The first start of an empty workspace on a public address (what `docker run` does): the initial admin
from SLICEWISE_ADMIN_PASSWORD_FILE, or a one-time setup token printed with --setup-token; neither again
once a user exists; still a refusal without either. Real `slicewise serve` processes over HTTP."""

from __future__ import annotations

import re
import subprocess

import httpx
import pytest

from helpers_server import running_server, slicewise_command

pytestmark = pytest.mark.slow
PUBLIC = ["--host", "0.0.0.0"]  # the last --host wins over the helper's 127.0.0.1


def test_the_admin_password_file_makes_the_first_admin_once(tmp_path):
    secret = tmp_path / "admin_password"
    secret.write_text("a docker secret passphrase\n")
    root = tmp_path / "ws"
    env = {"SLICEWISE_ADMIN_PASSWORD_FILE": str(secret)}
    with running_server(root, extra_args=PUBLIC, env=env) as server, server.client() as http:
        assert "created the admin user 'admin'" in server.log()
        assert http.get("/api/projects").status_code == 401  # login is on
        assert (
            http.post("/api/login", json={"name": "admin", "password": "a docker secret passphrase"}).json()["role"]
            == "admin"
        )
    secret.write_text("another passphrase\n")
    with running_server(root, extra_args=PUBLIC, env=env) as server, server.client() as http:
        assert "created the admin user" not in server.log()  # a user exists: the file is ignored
        assert http.post("/api/login", json={"name": "admin", "password": "another passphrase"}).status_code == 401


def test_a_too_short_password_file_refuses_to_start(tmp_path):
    secret = tmp_path / "admin_password"
    secret.write_text("short\n")
    done = subprocess.run(
        [
            *slicewise_command(),
            "serve",
            "--workspace",
            str(tmp_path / "ws"),
            "--host",
            "0.0.0.0",
            "--port",
            "1",
            "--no-demo",
        ],
        env={**__import__("os").environ, "SLICEWISE_ADMIN_PASSWORD_FILE": str(secret)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "SLICEWISE_ADMIN_PASSWORD_FILE" in done.stderr and "8 characters" in done.stderr


def test_the_setup_token_is_printed_once_and_sets_the_admin_password(tmp_path):
    root = tmp_path / "ws"
    with running_server(root, extra_args=[*PUBLIC, "--setup-token"]) as server, server.client() as http:
        found = re.findall(r"^\s+(sw_\S+)$", server.log(), re.M)
        assert len(found) == 1, server.log()
        bearer = {"Authorization": f"Bearer {found[0]}"}
        assert http.get("/api/me", headers=bearer).json() == {"name": "admin", "role": "admin", "auth": True}
        assert (
            http.patch("/api/users/admin", json={"password": "the admin passphrase"}, headers=bearer).status_code == 200
        )
        assert http.post("/api/login", json={"name": "admin", "password": "the admin passphrase"}).status_code == 200
        token_id = http.get("/api/users/admin/tokens", headers=bearer).json()[0]["id"]
        assert http.delete(f"/api/tokens/{token_id}", headers=bearer).status_code == 200
        assert http.get("/api/me", headers=bearer).status_code == 401
    with running_server(root, extra_args=[*PUBLIC, "--setup-token"]) as server:
        assert not re.findall(r"^\s+(sw_\S+)$", server.log(), re.M)  # never a second token
        assert httpx.get(server.url("/api/projects")).status_code == 401
