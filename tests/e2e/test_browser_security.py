"""Browser side of the security promises, in Debian's Chromium: a form or fetch from another origin
changes nothing (with a login cookie, and in the zero-config mode without users); the Gradio UI, the
login page and the viewer load under the Content-Security-Policy with no violation; hostile project,
label and volume names render as text, and no script of theirs runs."""

from __future__ import annotations

import contextlib
import http.server
import re
import threading
import time

import httpx
import pytest

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


def attack_page(target: str) -> str:
    """A form that posts JSON-looking text/plain to create a project, plus a no-cors fetch doing the same."""
    return f"""<!doctype html><html><body>
<form id="f" method="POST" action="{target}/api/projects" enctype="text/plain">
<input name='{{"name": "pwned-form", "labels": [{{"value": 1, "name": "a", "color": "#e6194b"}}], "x": "' value='"}}'>
</form>
<script>
fetch("{target}/api/projects", {{method: "POST", mode: "no-cors", credentials: "include",
  headers: {{"Content-Type": "text/plain"}},
  body: JSON.stringify({{name: "pwned-fetch", labels: [{{value: 1, name: "a", color: "#e6194b"}}]}})}})
  .finally(() => document.getElementById("f").submit());
</script></body></html>"""


def run_attack(browser, target: str, login: tuple[str, str] | None = None) -> list[int]:
    """Open the attack page (after logging in at the target, if asked) -> the statuses the target answered."""
    context = browser.new_context()
    page = context.new_page()
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if r.url.startswith(target + "/api/projects") else None)
    if login:
        page.goto(target + "/login")
        page.fill("#name", login[0])
        page.fill("#password", login[1])
        page.click("#submit")
        page.wait_for_url(re.compile(r".*/ui/?$"))
    with evil_site(attack_page(target)) as evil:
        page.goto(evil)
        deadline = time.monotonic() + 15
        while len(statuses) < 2 and time.monotonic() < deadline:
            page.wait_for_timeout(100)
    context.close()
    return statuses


def test_another_origin_changes_nothing_with_a_login_cookie(browser, tmp_path):
    root = tmp_path / "ws"
    ws = Workspace(root)
    ws.add_user("ada", "admin", password="ada-password")
    token = ws.create_token("ada")[0]
    ws.close()
    bearer = {"Authorization": f"Bearer {token}"}
    with running_server(root) as server:
        statuses = run_attack(browser, server.base_url, login=("ada", "ada-password"))
        assert statuses and all(s == 403 for s in statuses), statuses  # both reached the server, both refused
        assert httpx.get(server.url("/api/projects"), headers=bearer).json() == []
        # the same browser on slicewise's own page can change things (the refusal above is not a broken API)
        context = browser.new_context()
        page = context.new_page()
        page.goto(server.url("/login"))
        page.fill("#name", "ada")
        page.fill("#password", "ada-password")
        page.click("#submit")
        page.wait_for_url(re.compile(r".*/ui/?$"))
        page.goto(server.url("/static/viewer.html"))
        status = page.evaluate("""async () => {
            const csrf = document.cookie.split('; ').find((c) => c.startsWith('slicewise_csrf=')).split('=')[1];
            const r = await fetch('/api/projects', {method: 'POST', headers: {'Content-Type': 'application/json',
              'X-CSRF-Token': csrf}, body: JSON.stringify({name: 'mine', labels: [{value: 1, name: 'a',
              color: '#e6194b'}]})});
            return r.status; }""")
        context.close()
        assert status == 201
        assert [p["name"] for p in httpx.get(server.url("/api/projects"), headers=bearer).json()] == ["mine"]


def test_another_origin_changes_nothing_without_users(browser, server):
    statuses = run_attack(browser, server.base_url)
    assert statuses and all(s == 403 for s in statuses), statuses
    assert not any(p["name"].startswith("pwned") for p in httpx.get(server.url("/api/projects")).json())


def watch_csp(page) -> list[str]:
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.add_init_script("""document.addEventListener('securitypolicyviolation',
        (e) => { (window.__csp = window.__csp || []).push(e.violatedDirective + ' ' + e.blockedURI); });""")
    return violations


def test_hostile_names_render_as_text_under_the_csp(page, server):
    http = server.client()
    project = http.post("/api/projects", json={"name": "hostile " + HOSTILE, "labels": [
        {"value": 1, "name": HOSTILE, "color": "#e6194b"}]})
    assert project.status_code == 201, project.text
    pid = project.json()["id"]
    volume = http.post(f"/api/projects/{pid}/volumes", files={"file": (HOSTILE.replace("/", "") + ".nii.gz", GOOD_NIFTI)})
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
