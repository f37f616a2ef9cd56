"""Mount the browser UI on the FastAPI app: Gradio at /ui, the viewer page's files at /static.

The only thing app/ imports from frontend/. The Gradio handlers reach the API over HTTP at `api_url`
(the server's own loopback address), like any other client.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
UI_PATH = "/ui"


def mount_ui(app: FastAPI, api_url: str) -> FastAPI:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # never phone home
    import gradio as gr  # imported here: the API alone does not need it

    from frontend.client import ApiClient
    from frontend.ui import CSS, build_ui, theme

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/login", include_in_schema=False)
    def login_page() -> FileResponse:  # posts to /api/login, then goes back to ?next= (default /ui)
        return FileResponse(STATIC_DIR / "login.html", media_type="text/html")

    client = ApiClient(api_url)
    return gr.mount_gradio_app(
        app,
        build_ui(client),
        path=UI_PATH,
        theme=theme(),
        css=CSS,
        ssr_mode=False,
        footer_links=[],
        pwa=False,
        mcp_server=False,
    )
