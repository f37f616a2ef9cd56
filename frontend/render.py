"""HTML snippets of the Gradio page: messages, the label legend, the volume table, the embedded viewer.

Pure string functions (escaped), so the handlers that use them stay testable without a browser.
"""

from __future__ import annotations

from html import escape
from urllib.parse import urlencode

VIEWER_PATH = "/static/viewer.html"

_KIND = {
    "ok": ("status", "sw-msg sw-ok", "✓"),
    "info": ("status", "sw-msg sw-info", "ℹ"),
    "error": ("alert", "sw-msg sw-error", "✗"),
}


def message(kind: str, text: str, *, elem_id: str | None = None) -> str:
    role, css, icon = _KIND.get(kind, _KIND["info"])
    ident = f' id="{escape(elem_id)}"' if elem_id else ""
    return (
        f'<div{ident} class="{css}" role="{role}" data-kind="{escape(kind)}">'
        f'<span aria-hidden="true">{icon}</span> {escape(text)}</div>'
    )


def labels_legend(labels: list[dict]) -> str:
    if not labels:
        return ""
    chips = "".join(
        f'<span class="sw-chip"><span class="sw-swatch" style="background:{escape(label["color"])}"></span>'
        f"{int(label['value'])} · {escape(label['name'])}</span>"
        for label in labels
    )
    return f'<div class="sw-legend" aria-label="labels of this project">Labels: {chips}</div>'


def _shape(volume: dict) -> str:
    return " × ".join(str(n) for n in volume.get("shape", []))


def _spacing(volume: dict) -> str:
    return " × ".join(f"{float(s):g}" for s in volume.get("spacing", []))


def viewer_url(volume_id: int, *, embed: bool = False) -> str:
    query = {"volume": int(volume_id)}
    if embed:
        query["embed"] = 1
    return f"{VIEWER_PATH}?{urlencode(query)}"


def _progress(p: dict | None) -> str:
    if not p:
        return ""
    painted = f"{p['painted']} painted" + (f", {p['reviewed']} reviewed" if p["reviewed"] else "")
    prediction = {"ready": f"predicted (model {p['model_id']})", "pending": "predicting…"}.get(
        p["prediction"], "no prediction"
    )
    score = f", Dice {p['dice']:.2f}" if isinstance(p.get("dice"), (int, float)) else ""
    return f"{painted}; {prediction}{score}"


def volumes_table(volumes: list[dict], selected: int | None = None, progress: dict | None = None) -> str:
    if not volumes:
        return (
            '<p id="volume-table-empty" class="sw-empty">No volumes yet: upload a NIfTI file '
            "(.nii, .nii.gz) or a .zip of one DICOM series above.</p>"
        )
    rows = []
    for v in volumes:
        mark = ' class="sw-selected" aria-current="true"' if v["id"] == selected else ""
        rows.append(
            f'<tr{mark} data-volume-id="{int(v["id"])}"><td>{int(v["id"])}</td><td>{escape(str(v["name"]))}</td>'
            f"<td>{escape(_shape(v))}</td><td>{escape(_spacing(v))}</td>"
            f"<td>{escape(str(v.get('orientation', '')))}</td><td>{escape(str(v.get('source', '')))}</td>"
            f'<td class="sw-progress">{escape(_progress((progress or {}).get(v["id"])))}</td>'
            f'<td><a href="{escape(viewer_url(v["id"]))}" target="_blank" rel="noopener">open viewer</a></td></tr>'
        )
    return (
        '<table class="sw-table" aria-label="volumes of this project"><thead><tr><th scope="col">id</th>'
        '<th scope="col">name</th><th scope="col">shape (voxels)</th><th scope="col">spacing (mm)</th>'
        '<th scope="col">orientation</th><th scope="col">source</th><th scope="col">progress</th>'
        '<th scope="col">viewer</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def viewer_frame(volume: dict | None) -> str:
    """The painting/review page of one volume, embedded, with a link to open it full size."""
    if not volume:
        return '<p id="viewer-empty" class="sw-empty">Select a volume to paint, retrain and review it here.</p>'
    vid = int(volume["id"])
    full = escape(viewer_url(vid))
    return (
        f'<div class="sw-viewer-head"><strong>{escape(str(volume.get("name", vid)))}</strong> '
        f'<a id="open-viewer" class="sw-button-link" href="{full}" target="_blank" rel="noopener">'
        "Open the viewer full size in a new tab</a></div>"
        f'<iframe id="viewer-iframe" title="slice viewer of volume {vid}" src="{escape(viewer_url(vid, embed=True))}" '
        'style="width:100%;height:860px;border:1px solid #8a8f98;border-radius:6px"></iframe>'
    )
