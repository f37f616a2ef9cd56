"""Browser side of the security promises, in Debian's Chromium: a form or fetch from another origin
changes nothing (with a login cookie, and in the zero-config mode without users); the Gradio UI, the
login page and the viewer load under the Content-Security-Policy with no violation; hostile project,
label and volume names render as text, and no script of theirs runs."""

from __future__ import annotations

import base64
import contextlib
import http.server
import re
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from app.auth import SESSION_COOKIE
from data.store import Workspace
from helpers_bad_input import GOOD_NIFTI
from helpers_server import free_port, running_server

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

LABELS = [{"value": 1, "name": "anterior", "color": "#e6194b"}]
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>${window.__pwned=3}"\'&amp;'


@contextlib.contextmanager
def evil_site(html: str):
    """Another origin (same host, another port: the same *site*, so SameSite=Lax cookies do go along)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.shutdown()
        server.server_close()


def attack_page(target: str, project_id: int) -> str:
    """Three requests another site can make a visitor's browser send without asking: a no-cors fetch that
    uploads a real NIfTI as multipart form data (a "simple" request: no preflight), a no-cors fetch of
    JSON as text/plain, and a form posting JSON-looking text/plain."""
    nifti = base64.b64encode(GOOD_NIFTI).decode()
    return f"""<!doctype html><html><body>
<form id="f" method="POST" action="{target}/api/projects" enctype="text/plain">
<input name='{{"name": "pwned-form", "labels": [{{"value": 1, "name": "a", "color": "#e6194b"}}], "x": "' value='"}}'>
</form>
<script>
const bytes = Uint8Array.from(atob("{nifti}"), (c) => c.charCodeAt(0));
const upload = new FormData();
upload.append("file", new Blob([bytes]), "planted.nii.gz");
Promise.allSettled([
  fetch("{target}/api/projects/{project_id}/volumes", {{method: "POST", mode: "no-cors", credentials: "include",
    body: upload}}),
  fetch("{target}/api/projects", {{method: "POST", mode: "no-cors", credentials: "include",
    headers: {{"Content-Type": "text/plain"}},
    body: JSON.stringify({{name: "pwned-fetch", labels: [{{value: 1, name: "a", color: "#e6194b"}}]}})}}),
]).finally(() => document.getElementById("f").submit());
</script></body></html>"""


def log_in(page, base_url: str, name: str, password: str) -> None:
    """Through the real /login page; returns once the browser holds the session cookie and is at /ui."""
    page.goto(base_url + "/login?next=/ui")
    page.fill("#name", name)
    page.fill("#password", password)
    page.click("#submit")
    page.wait_for_url(lambda url: urlsplit(url).path in ("/ui", "/ui/"))
    assert SESSION_COOKIE in {c["name"] for c in page.context.cookies()}


def run_attack(browser, target: str, project_id: int, login: tuple[str, str] | None = None) -> list[int]:
    """Open the attack page (after logging in at the target, if asked) -> the statuses the target answered."""
    context = browser.new_context()
    page = context.new_page()
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if r.url.startswith(target + "/api/projects") else None)
    if login:
        log_in(page, target, *login)
    with evil_site(attack_page(target, project_id)) as evil:
        page.goto(evil)
        deadline = time.monotonic() + 15
        while len(statuses) < 3 and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        if login:  # the visitor's own session was not touched either
            assert page.evaluate(
                "async () => (await fetch('" + target + "/api/me', {credentials: 'include'})).status"
            ) in (0, 200)
    context.close()
    return statuses


def assert_unchanged(server, project_id: int, headers: dict | None = None) -> None:
    projects = httpx.get(server.url("/api/projects"), headers=headers).json()
    assert [p["id"] for p in projects] == [project_id]
    assert httpx.get(server.url(f"/api/projects/{project_id}/volumes"), headers=headers).json() == []


def test_another_origin_changes_nothing_with_a_login_cookie(browser, tmp_path):
    root = tmp_path / "ws"
    ws = Workspace(root)
    ws.add_user("ada", "admin", password="ada-password")
    token = ws.create_token("ada")[0]
    ws.close()
    bearer = {"Authorization": f"Bearer {token}"}
    with running_server(root) as server:
        target = httpx.post(
            server.url("/api/projects"), json={"name": "target", "labels": LABELS}, headers=bearer
        ).json()
        statuses = run_attack(browser, server.base_url, target["id"], login=("ada", "ada-password"))
        assert len(statuses) == 3 and all(s == 403 for s in statuses), statuses  # all reached the server, refused
        assert_unchanged(server, target["id"], bearer)
        # the same browser on slicewise's own page can change things (the refusal above is not a broken API)
        context = browser.new_context()
        page = context.new_page()
        log_in(page, server.base_url, "ada", "ada-password")
        page.goto(server.url("/static/viewer.html"))
        status = page.evaluate("""async () => {
            const csrf = document.cookie.split('; ').find((c) => c.startsWith('slicewise_csrf=')).split('=')[1];
            const r = await fetch('/api/projects', {method: 'POST', headers: {'Content-Type': 'application/json',
              'X-CSRF-Token': csrf}, body: JSON.stringify({name: 'mine', labels: [{value: 1, name: 'a',
              color: '#e6194b'}]})});
            return r.status; }""")
        context.close()
        assert status == 201
        assert [p["name"] for p in httpx.get(server.url("/api/projects"), headers=bearer).json()] == ["target", "mine"]


def test_another_origin_changes_nothing_without_users(browser, tmp_path):
    with running_server(tmp_path / "ws") as server:
        target = httpx.post(server.url("/api/projects"), json={"name": "target", "labels": LABELS}).json()
        statuses = run_attack(browser, server.base_url, target["id"])
        assert len(statuses) == 3 and all(s == 403 for s in statuses), statuses
        assert_unchanged(server, target["id"])


def watch_csp(page) -> list[str]:
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.add_init_script("""document.addEventListener('securitypolicyviolation',
        (e) => { (window.__csp = window.__csp || []).push(e.violatedDirective + ' ' + e.blockedURI); });""")
    return violations


def test_hostile_names_render_as_text_under_the_csp(page, server):
    http = server.client()
    project = http.post(
        "/api/projects",
        json={"name": "hostile " + HOSTILE, "labels": [{"value": 1, "name": HOSTILE, "color": "#e6194b"}]},
    )
    assert project.status_code == 201, project.text
    pid = project.json()["id"]
    volume = http.post(
        f"/api/projects/{pid}/volumes", files={"file": (HOSTILE.replace("/", "") + ".nii.gz", GOOD_NIFTI)}
    )
    assert volume.status_code == 201, volume.text
    vid, stored_name = volume.json()["id"], volume.json()["name"]
    assert "<script>" in stored_name

    pg = page.page
    violations = watch_csp(pg)
    pg.goto(server.url("/ui/"))
    pg.locator("#project-select input").first.click()
    pg.get_by_role("option", name=re.compile("^hostile")).first.click()
    pg.locator("#project-labels").get_by_text(HOSTILE, exact=False).first.wait_for()
    pg.locator(f"tr[data-volume-id='{vid}']").first.wait_for()
    assert stored_name in pg.locator(f"tr[data-volume-id='{vid}']").first.inner_text()
    pg.wait_for_timeout(500)
    assert pg.evaluate("window.__pwned") is None
    assert pg.evaluate("window.__csp || []") == [] and violations == []

    pg.goto(server.url(f"/static/viewer.html?volume={vid}"))
    pg.locator("body[data-loaded=true]").wait_for(timeout=30_000)
    assert HOSTILE in pg.locator("body").inner_text()
    pg.wait_for_timeout(300)
    assert pg.evaluate("window.__pwned") is None
    assert pg.evaluate("window.__csp || []") == [] and violations == []

    pg.goto(server.url("/login"))
    pg.get_by_text("needs no login").wait_for()
    assert pg.evaluate("window.__csp || []") == [] and violations == []


def test_logged_in_the_ui_and_the_viewer_still_change_things(browser, tmp_path):
    """With a login cookie, the Gradio UI (its server-side client echoes the CSRF cookie) and the viewer's
    own api() (it sends X-CSRF-Token) make changes; a bare fetch without the header is refused."""
    from .test_browser_loop import create_project_in_ui

    root = tmp_path / "ws"
    ws = Workspace(root)
    ws.add_user("ada", "admin", password="ada-password")
    token = ws.create_token("ada")[0]
    ws.close()
    bearer = {"Authorization": f"Bearer {token}"}
    with running_server(root) as server:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        log_in(pg, server.base_url, "ada", "ada-password")

        class Wrapped:  # what create_project_in_ui expects: .page and .base_url
            page, base_url = pg, server.base_url

        create_project_in_ui(Wrapped, "made in the UI")

        pg.goto(server.url("/static/viewer.html"))
        pg.locator("#message").wait_for()
        body = "JSON.stringify({name: NAME, labels: [{value: 1, name: 'a', color: '#e6194b'}]})"
        via_viewer = pg.evaluate(f"""async () => (await (await import('/static/viewer-core.js')).api('/projects', {{method: 'POST',
            headers: {{'Content-Type': 'application/json'}}, body: {body.replace("NAME", "'made in the viewer'")}}})).status""")
        bare = pg.evaluate(f"""async () => (await fetch('/api/projects', {{method: 'POST',
            headers: {{'Content-Type': 'application/json'}}, body: {body.replace("NAME", "'bare fetch'")}}})).status""")
        context.close()
        assert via_viewer == 201 and bare == 403 and errors == []
        names = {p["name"] for p in httpx.get(server.url("/api/projects"), headers=bearer).json()}
        assert names == {"made in the UI", "made in the viewer"}
