"""After a crash (SIGKILL, power cut): remove what a write that never committed left on disk.

A commit makes a file visible (a row points to it); a write killed before its commit leaves:
- a temp file `.tmp-*` next to its target (data.atomic), in annotations/<vol>/ or predictions/<m>/<v>/;
- an annotation version file that no history row names (killed after the rename, before COMMIT);
- a volume folder volumes/<id> that no volume row names (import killed after publishing, before COMMIT).
A deletion commits its rows first and removes files after; killed in between it leaves volume, annotation,
prediction and job folders that no row names: removed here too.
None of them is ever read, but they cost disk and confuse a person looking at the folder. The server
calls `sweep_uncommitted` at start-up, before its worker runs: annotation files and volume folders are
only created inside the database write lock, so holding that lock here means none is half-way.
"""

from __future__ import annotations

from pathlib import Path

from data.store_files import remove_tree

TEMP_PREFIX = ".tmp-"


def sweep_uncommitted(root: Path, db, include_predictions: bool = True) -> dict:
    """Remove uncommitted leftovers -> counts of what was removed, by kind."""
    removed = {"temp_files": 0, "annotation_files": 0, "volume_folders": 0, "prediction_folders": 0, "job_folders": 0}
    with db.write() as con:
        volume_ids = {str(r[0]) for r in con.execute("SELECT id FROM volumes")}
        model_ids = {str(r[0]) for r in con.execute("SELECT id FROM models")}
        job_ids = {str(r[0]) for r in con.execute("SELECT id FROM jobs")}
        for folder in sorted((root / "jobs").iterdir()) if (root / "jobs").is_dir() else []:
            if folder.is_dir() and folder.name.isdigit() and folder.name not in job_ids:
                remove_tree(folder)
                removed["job_folders"] += 1
        referenced = {r[0] for r in con.execute("SELECT path FROM annotation_history WHERE path IS NOT NULL")}
        for folder in sorted((root / "volumes").iterdir()) if (root / "volumes").is_dir() else []:
            if folder.name not in volume_ids:
                remove_tree(folder) if folder.is_dir() else folder.unlink(missing_ok=True)
                removed["volume_folders"] += 1
        for path in sorted((root / "annotations").glob("*/*")):
            if not path.is_file():
                continue
            if path.name.startswith(TEMP_PREFIX):
                path.unlink(missing_ok=True)
                removed["temp_files"] += 1
            elif path.relative_to(root).as_posix() not in referenced:
                path.unlink(missing_ok=True)
                removed["annotation_files"] += 1
        for folder in sorted((root / "predictions").glob("*/*")) if include_predictions else []:
            if folder.is_dir() and (folder.parent.name not in model_ids or folder.name not in volume_ids):
                remove_tree(folder)
                removed["prediction_folders"] += 1
        for path in sorted((root / "annotations").iterdir()) if (root / "annotations").is_dir() else []:
            if path.is_dir() and path.name not in volume_ids and not any(path.iterdir()):
                path.rmdir()
    if include_predictions:  # written by the server's own predictor only, which is not running yet
        for path in (root / "predictions").glob(f"*/*/{TEMP_PREFIX}*"):
            path.unlink(missing_ok=True)
            removed["temp_files"] += 1
    return removed
