"""Browser-test fixtures: Debian's Chromium driven by Playwright against a real `slicewise serve`.

Skips (with the reason) when /usr/bin/chromium or the playwright package is missing. Never downloads a
browser. Every page records requests that leave the server, so tests can assert the app works offline.
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/helpers_server.py

from helpers_server import running_server  # noqa: E402

CHROMIUM = Path(os.environ.get("SLICEWISE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium); not found")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("browser tests need the playwright Python package (pip install -e '.[test]')")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, browser):
    """One real server per test module, empty workspace, no demo project."""
    with running_server(tmp_path_factory.mktemp("e2e") / "workspace") as handle:
        yield handle


class Page:
    """A 1280x800 page plus what it saw: external requests, page errors."""

    def __init__(self, page, base_url: str):
        self.page = page
        self.base_url = base_url
        self.external: list[str] = []
        self.errors: list[str] = []
        page.on("request", self._request)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _request(self, request) -> None:
        url = request.url
        if not url.startswith((self.base_url, "data:", "blob:", "about:")):
            self.external.append(url)

    def shot(self, name: str, *, full_page: bool = False) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        png = self.page.screenshot(full_page=full_page)
        with Image.open(io.BytesIO(png)) as image:  # a 256-colour palette keeps the README's images small
            image.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
                path, optimize=True
            )
        return path


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    wrapped = Page(context.new_page(), server.base_url)
    wrapped.page.set_default_timeout(30_000)
    yield wrapped
    context.close()
    assert wrapped.external == [], f"the UI reached outside the server: {wrapped.external}"
    assert wrapped.errors == [], f"JavaScript errors on the page: {wrapped.errors}"


def wait_js(page, expression: str, timeout: float = 30_000, interval_s: float = 0.1) -> None:
    """Like page.wait_for_function, for pages whose Content-Security-Policy forbids string evaluation
    (Playwright polls wait_for_function with eval inside the page; page.evaluate is not affected)."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(f"() => !!({expression})"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true within {timeout / 1000:.0f} s: {expression}")
        time.sleep(interval_s)
