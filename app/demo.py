"""The demo project: a newcomer with ../shared/data beside the checkout gets volumes to paint at once."""

from __future__ import annotations

import logging
from pathlib import Path

from app.settings import Settings
from data.errors import SlicewiseError
from data.store import Workspace

log = logging.getLogger("slicewise.demo")

DEMO_NAME = "Hippocampus demo"
DEMO_LABELS = [
    {"value": 1, "name": "anterior", "color": "#e6194b"},
    {"value": 2, "name": "posterior", "color": "#3cb44b"},
]
REPO_ROOT = Path(__file__).resolve().parents[1]


def candidate_data_dirs(settings: Settings) -> list[Path]:
    if settings.data_dir is not None:
        return [settings.data_dir]
    return [Path.cwd().parent / "shared" / "data", REPO_ROOT.parent / "shared" / "data"]


def find_demo_images(settings: Settings) -> list[Path]:
    for data_dir in candidate_data_dirs(settings):
        images = data_dir / "hippocampus" / "imagesTr"
        if images.is_dir():
            found = sorted(images.glob("*.nii.gz"))
            if found:
                return found[: settings.demo_volumes]
    return []


def seed_demo_project(ws: Workspace, settings: Settings) -> dict | None:
    """Create the demo project in an empty workspace when the shared data is there; else do nothing."""
    if ws.list_projects():
        return None
    images = find_demo_images(settings)
    if not images:
        return None
    project = ws.create_project(DEMO_NAME, DEMO_LABELS)
    for path in images:
        try:
            ws.import_volume(project["id"], path, path.name, settings.max_expanded_bytes)
        except SlicewiseError as exc:  # a bad demo file must not stop the server
            log.warning("demo: skipped %s: %s", path, exc)
    log.info(
        "demo project %r (id %d) created with %d volumes from %s (MSD Task04 Hippocampus, CC-BY-SA 4.0)",
        DEMO_NAME,
        project["id"],
        len(images),
        images[0].parent,
    )
    return project


def how_to_import(settings: Settings) -> str:
    url = settings.base_url
    return (
        "the workspace has no projects yet. Create one and upload a volume (NIfTI or a zip of one DICOM series), "
        f"in the UI at {url}/ui or with curl:\n"
        f'  curl -H \'Content-Type: application/json\' -d \'{{"name": "My project", "labels": '
        f'[{{"value": 1, "name": "lesion", "color": "#e6194b"}}]}}\' {url}/api/projects\n'
        f"  curl -F file=@scan.nii.gz {url}/api/projects/1/volumes\n"
        "or from the command line: slicewise import --workspace DIR --project NAME scan.nii.gz ..."
    )
