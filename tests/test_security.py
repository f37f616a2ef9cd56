"""Security promises over real HTTP against a real `slicewise serve`: login throttling with back-off and
unlock, Argon2id hashing with old scrypt hashes upgraded at login, CSRF and origin checks for cookie
sessions (API tokens unaffected), DNS-rebinding refusal without users, security headers, idle/absolute
session expiry, logout everywhere, and access revoked on a role change. The browser side of the same
promises is in tests/e2e/test_browser_security.py."""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import subprocess
import time

import httpx
import pytest

from app.auth import CSRF_COOKIE, SESSION_COOKIE
from data.store import Workspace
from helpers_server import running_server, slicewise_command

LABELS = [{"value": 1, "name": "anterior", "color": "#e6194b"}]
BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/140.0"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server with users: ada (admin, also an API token), anna (annotator) and vic (viewer)."""
    root = tmp_path_factory.mktemp("security") / "ws"
    ws = Workspace(root)
    for name, role in (("ada", "admin"), ("anna", "annotator"), ("vic", "viewer")):
        ws.add_user(name, role, password=f"{name}-password")
    token = ws.create_token("ada")[0]
    ws.close()
    with running_server(root) as server:
        server.admin = {"Authorization": f"Bearer {token}"}
        yield server


def db(server) -> sqlite3.Connection:
    return sqlite3.connect(server.workspace / "slicewise.db", timeout=30)


def cli(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*slicewise_command(), *args, "--workspace", str(server.workspace)], capture_output=True, text=True, timeout=120
    )


def login(http: httpx.Client, name: str, password: str | None = None) -> httpx.Response:
    return http.post("/api/login", json={"name": name, "password": password or f"{name}-password"})


def lock_seconds(server, name: str) -> float:
    """How long the account's current lock lasts, from the throttle's own row."""
    from datetime import datetime

    with db(server) as con:
        last, until = con.execute(
            "SELECT last_failure, locked_until FROM login_failures WHERE kind = 'user' AND key = ?", (name,)
        ).fetchone()
    return (datetime.fromisoformat(until) - datetime.fromisoformat(last)).total_seconds()


def unlock_client(served) -> None:
    assert served.client().post("/api/users/nobody/unlock", headers=served.admin).status_code == 200
    assert cli(served, "users", "unlock", "--client", "127.0.0.1").returncode == 0


# ------------------------------------------------------------------ 1 throttling


def test_failed_logins_lock_the_account_with_doubling_back_off_and_an_admin_unlocks_it(served):
    unlock_client(served)
    with served.client() as http:
        for _ in range(5):
            assert login(http, "anna", "wrong-password").status_code == 401
        locked = login(http, "anna")  # even the right password is not looked at while locked
        assert locked.status_code == 429 and locked.headers["retry-after"] == "1"
        assert "account 'anna' is locked" in locked.json()["detail"]
        assert "slicewise users unlock anna" in locked.json()["detail"]
        assert lock_seconds(served, "anna") == pytest.approx(1, abs=0.05)
        time.sleep(1.2)
        assert login(http, "anna", "wrong-password").status_code == 401  # the 6th failure: 2 s
        again = login(http, "anna")
        assert again.status_code == 429 and "after 6 failed logins" in again.json()["detail"]
        assert int(again.headers["retry-after"]) <= 2 and lock_seconds(served, "anna") == pytest.approx(2, abs=0.05)
        time.sleep(2.2)
        assert login(http, "anna", "wrong-password").status_code == 401  # the 7th: 4 s
        again = login(http, "anna")
        assert again.status_code == 429 and "after 7 failed logins" in again.json()["detail"]
        assert int(again.headers["retry-after"]) <= 4 and lock_seconds(served, "anna") == pytest.approx(4, abs=0.05)

        refused = http.post("/api/users/anna/unlock", headers={"Authorization": "Bearer sw_nope"})
        assert refused.status_code == 401
        assert http.post("/api/users/anna/unlock", headers=served.admin).json() == {"user": "anna", "unlocked": True}
        assert login(http, "anna").status_code == 200
        audit = http.get("/api/audit", params={"who": "anna", "limit": 100}, headers=served.admin).json()
        locks = [e for e in audit if e["what"] == "login_locked"]
        assert len(locks) >= 3 and {"login_failed", "login"} <= {e["what"] for e in audit}
        assert any(
            e["what"] == "unlock_login"
            for e in http.get("/api/audit", params={"who": "ada"}, headers=served.admin).json()
        )


def test_a_success_clears_the_account_count_and_the_cli_unlocks(served):
    unlock_client(served)
    with served.client() as http:
        for _ in range(4):
            assert login(http, "vic", "wrong-password").status_code == 401
        assert login(http, "vic").status_code == 200  # 4 < 5: not locked, and the count starts over
        for _ in range(5):
            assert login(http, "vic", "wrong-password").status_code == 401
        assert login(http, "vic").status_code == 429
        done = cli(served, "users", "unlock", "vic")
        assert done.returncode == 0 and "unlocked" in done.stdout
        assert login(http, "vic").status_code == 200


def test_guessing_across_many_names_locks_the_client_address(served):
    unlock_client(served)
    with served.client() as http:
        for i in range(20):  # unknown names are counted too, so a lock tells nothing about who exists
            assert login(http, f"guess{i}", "wrong-password").status_code == 401
        locked = login(http, "ada")
        assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1
        assert "logins from 127.0.0.1 are locked" in locked.json()["detail"]
        assert http.get("/api/projects", headers=served.admin).status_code == 200  # tokens still work
    unlock_client(served)
    assert login(served.client(), "ada").status_code == 200


# ------------------------------------------------------------------ 2 hashing


def scrypt_hash(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return f"scrypt${2**14}$8$1${salt.hex()}${digest.hex()}"


def test_passwords_are_argon2id_and_an_old_scrypt_hash_is_upgraded_at_login(served):
    unlock_client(served)
    with served.client() as http:
        made = http.post(
            "/api/users", json={"name": "olga", "role": "viewer", "password": "olga-password"}, headers=served.admin
        )
        assert made.status_code == 201
        with db(served) as con:
            assert (
                con.execute("SELECT password_hash FROM users WHERE name = 'olga'")
                .fetchone()[0]
                .startswith("$argon2id$v=19$m=65536,t=3,p=4$")
            )
            con.execute("UPDATE users SET password_hash = ? WHERE name = 'olga'", (scrypt_hash("old-password"),))
        assert login(http, "olga", "wrong-password").status_code == 401
        with db(served) as con:  # a failed login changes nothing
            assert (
                con.execute("SELECT password_hash FROM users WHERE name = 'olga'").fetchone()[0].startswith("scrypt$")
            )
        assert login(http, "olga", "old-password").status_code == 200
        with db(served) as con:
            stored = con.execute("SELECT password_hash FROM users WHERE name = 'olga'").fetchone()[0]
        assert stored.startswith("$argon2id$") and "old-password" not in stored
        assert login(http, "olga", "old-password").status_code == 200  # the new hash verifies


# ------------------------------------------------------------------ 3 CSRF


def test_a_cookie_session_needs_the_csrf_header_and_a_same_origin_request(served):
    unlock_client(served)
    with served.client() as http:
        assert login(http, "ada").status_code == 200
        csrf = http.cookies[CSRF_COOKIE]
        body = {"name": f"csrf-{secrets.token_hex(3)}", "labels": LABELS}
        bare = http.post("/api/projects", json=body)
        assert bare.status_code == 403 and "X-CSRF-Token" in bare.json()["detail"]
        wrong = http.post("/api/projects", json=body, headers={"X-CSRF-Token": csrf[:-1] + "x"})
        assert wrong.status_code == 403
        foreign = http.post("/api/projects", json=body, headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"})
        assert foreign.status_code == 403 and "cross-origin" in foreign.json()["detail"]
        sibling = http.post("/api/projects", json=body, headers={"X-CSRF-Token": csrf, "Sec-Fetch-Site": "same-site"})
        assert sibling.status_code == 403
        names = [p["name"] for p in http.get("/api/projects").json()]
        assert body["name"] not in names  # none of the refused requests changed anything
        ok = http.post("/api/projects", json=body, headers={"X-CSRF-Token": csrf, "Origin": served.base_url})
        assert ok.status_code == 201
        # an API token is not a cookie: no CSRF header needed, whatever the Origin says
        other = {"name": body["name"] + "-token", "labels": LABELS}
        assert (
            http.post(
                "/api/projects", json=other, headers={**served.admin, "Origin": "http://evil.example"}
            ).status_code
            == 201
        )


def test_without_users_another_origin_or_a_rebound_host_changes_nothing(tmp_path):
    with running_server(tmp_path / "ws") as server, server.client() as http:
        body = {"name": "p", "labels": LABELS}
        evil = http.post("/api/projects", json=body, headers={"Origin": "http://evil.example", **BROWSER})
        assert evil.status_code == 403
        form = http.post(
            "/api/projects",
            content=b'{"name": "p", "labels": []}',
            headers={"Origin": "null", "Content-Type": "text/plain"},
        )
        assert form.status_code == 403
        rebound = http.get("/api/projects", headers={"Host": f"evil.example:{server.port}", **BROWSER})
        assert rebound.status_code == 403 and "loopback" in rebound.json()["detail"]
        assert http.get("/api/projects").json() == []
        assert http.post("/api/projects", json=body, headers={"Origin": server.base_url, **BROWSER}).status_code == 201
        assert http.get("/api/projects", headers={"Host": f"localhost:{server.port}", **BROWSER}).status_code == 200


# ------------------------------------------------------------------ 4 headers


def test_security_headers_and_a_nonce_for_every_gradio_script(served):
    unlock_client(served)
    with served.client() as http:
        assert login(http, "vic").status_code == 200
        ui = http.get("/ui/")
        assert ui.status_code == 200
        policy = ui.headers["content-security-policy"]
        nonce = re.search(r"'nonce-([^']+)'", policy).group(1)
        tags = re.findall(r"<script[^>]*>", ui.text)
        assert tags and all(f'nonce="{nonce}"' in tag for tag in tags)
        assert nonce not in http.get("/ui/").headers["content-security-policy"]  # a new one each time
        assert "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
        assert "'unsafe-eval'" in policy  # Gradio's gr.HTML templates; nowhere else (below)
        assert int(ui.headers["content-length"]) == len(ui.content)
        for path in ("/static/viewer.html", "/login", "/api/me", "/ui/"):
            headers = http.get(path).headers
            assert headers["x-content-type-options"] == "nosniff", path
            assert "frame-ancestors 'self'" in headers["content-security-policy"], path
            assert headers["referrer-policy"] == "same-origin", path
            assert "strict-transport-security" not in headers, path
        static = http.get("/static/viewer.html").headers["content-security-policy"]
        assert "script-src 'self';" in static and "'unsafe-eval'" not in static
        behind_tls = http.get("/api/me", headers={"X-Forwarded-Proto": "https"})
        assert behind_tls.headers["strict-transport-security"].startswith("max-age=")


# ------------------------------------------------------------------ 5 sessions


def session_of(http: httpx.Client) -> str:
    return hashlib.sha256(http.cookies[SESSION_COOKIE].encode()).hexdigest()


def test_idle_and_absolute_session_expiry(served):
    unlock_client(served)
    idle, old = served.client(), served.client()
    for http in (idle, old):
        assert login(http, "vic").status_code == 200
    with db(served) as con:
        con.execute(
            "UPDATE tokens SET last_used = '2000-01-01T00:00:00.000+00:00' WHERE token_hash = ?", (session_of(idle),)
        )
        con.execute(
            "UPDATE tokens SET expires = '2000-01-01T00:00:00.000+00:00', last_used = NULL,"
            " created = '2000-01-01T00:00:00.000+00:00' WHERE token_hash = ?",
            (session_of(old),),
        )
    for http in (idle, old):
        refused = http.get("/api/me")
        assert refused.status_code == 401 and "expired" in refused.json()["detail"]
    fresh = served.client()
    assert login(fresh, "vic").status_code == 200 and fresh.get("/api/me").status_code == 200


def test_logout_everywhere_ends_every_session_of_the_user(served):
    unlock_client(served)
    first, second, other = served.client(), served.client(), served.client()
    for http, name in ((first, "anna"), (second, "anna"), (other, "vic")):
        assert login(http, name).status_code == 200
    out = first.post("/api/logout", params={"everywhere": "true"}, headers={"X-CSRF-Token": first.cookies[CSRF_COOKIE]})
    assert out.status_code == 200 and out.json()["sessions_ended"] >= 2
    assert first.get("/api/me").status_code == 401 and second.get("/api/me").status_code == 401
    assert other.get("/api/me").json()["name"] == "vic"


def test_a_role_change_or_revoke_ends_sessions_and_tokens(served):
    unlock_client(served)
    with served.client() as admin:
        assert (
            admin.post(
                "/api/users",
                json={"name": "rolf", "role": "annotator", "password": "rolf-password"},
                headers=served.admin,
            ).status_code
            == 201
        )
        token = admin.post("/api/users/rolf/tokens", headers=served.admin).json()["token"]
        browser = served.client()
        assert login(browser, "rolf").status_code == 200
        bearer = {"Authorization": f"Bearer {token}"}
        assert admin.get("/api/me", headers=bearer).json()["role"] == "annotator"
        assert admin.patch("/api/users/rolf", json={"role": "annotator"}, headers=served.admin).status_code == 200
        assert admin.get("/api/me", headers=bearer).status_code == 200  # the same role: nothing revoked
        assert admin.patch("/api/users/rolf", json={"role": "viewer"}, headers=served.admin).status_code == 200
        assert admin.get("/api/me", headers=bearer).status_code == 401
        assert browser.get("/api/me").status_code == 401

        token = admin.post("/api/users/rolf/tokens", headers=served.admin).json()["token"]
        assert login(browser, "rolf").status_code == 200
        done = admin.post("/api/users/rolf/revoke", headers=served.admin).json()
        assert done == {"user": "rolf", "sessions_ended": 1, "tokens_revoked": 1}
        assert admin.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
        assert browser.get("/api/me").status_code == 401
        token = admin.post("/api/users/rolf/tokens", headers=served.admin).json()["token"]
        revoked = cli(served, "users", "revoke", "rolf")
        assert revoked.returncode == 0 and "1 token(s) revoked" in revoked.stdout
        assert admin.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
