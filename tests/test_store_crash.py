"""A save or an import killed with SIGKILL at its worst moment leaves the workspace consistent.

The child process hooks the file system call at the chosen point, tells the parent it got there
(by writing a file), and sleeps until the parent kills it.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data.store import Workspace

REPO = Path(__file__).resolve().parents[1]
LABELS = [{"value": 1, "name": "anterior", "color": "#ff0000"}]
SHAPE = (6, 7, 5)

CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import numpy as np
    from data.store import Workspace

    root, volume_id, point, signal_file, first, second = sys.argv[1:7]
    ws = Workspace(root)
    if first != "-":
        ws.save_annotation(int(volume_id), 0, 2, np.load(first), author="child")

    real_replace, real_rename = os.replace, os.rename

    def hang(*args, **kwargs):
        Path(signal_file).write_text("ready")
        time.sleep(120)

    def after(real):
        def call(*args, **kwargs):
            real(*args, **kwargs)
            hang()
        return call

    if point == "writing":          # temp file written, not yet fsynced nor renamed
        os.fsync = hang
    elif point == "before-rename":  # temp file complete, target untouched
        os.replace = hang
    elif point == "after-rename":   # new version's file in place, row not committed
        os.replace = after(real_replace)
    elif point == "import-published":  # volume folder renamed into volumes/, row not committed
        os.rename = after(real_rename)

    if point == "import-published":
        ws.import_volume(int(volume_id), Path(second), "again.nii.gz", 10**8)
    else:
        ws.save_annotation(int(volume_id), 0, 2, np.load(second), author="child", expected_version=1)
    Path(signal_file).write_text("finished without being killed")
    """
)


def write_nifti(path: Path) -> Path:
    affine = np.diag([0.9, 1.1, 2.0, 1.0])
    affine[:3, 3] = [4.0, -3.0, 7.0]
    nib.save(nib.Nifti1Image(np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE), affine), path)
    return path


def mask(fill: int) -> np.ndarray:
    m = np.zeros((7, 5), np.uint8)
    m[:3] = fill
    return m


def run_child_until(point: str, args: list[str], signal_file: Path, script: str = CHILD) -> None:
    child = subprocess.Popen([sys.executable, "-c", script, *args], cwd=REPO, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not signal_file.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert signal_file.exists(), f"child never reached {point}: {child.stderr.read().decode()[-2000:]}"
        assert signal_file.read_text() == "ready"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()


def assert_database_intact(root: Path) -> None:
    con = sqlite3.connect(root / "slicewise.db")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        con.close()


@pytest.mark.parametrize("point", ["writing", "before-rename", "after-rename"])
def test_save_killed_mid_write_leaves_the_previous_version(tmp_path, point):
    root = tmp_path / "ws"
    setup = Workspace(root)
    project = setup.create_project("p", LABELS)
    volume = setup.import_volume(project["id"], write_nifti(tmp_path / "v.nii.gz"), "v.nii.gz", 10**8)
    np.save(tmp_path / "first.npy", mask(1))
    np.save(tmp_path / "second.npy", mask(0))
    setup.close()

    signal_file = tmp_path / "signal"
    run_child_until(
        point,
        [
            str(root),
            str(volume["id"]),
            point,
            str(signal_file),
            str(tmp_path / "first.npy"),
            str(tmp_path / "second.npy"),
        ],
        signal_file,
    )

    folder = root / "annotations" / str(volume["id"])
    temp_files = [p for p in folder.iterdir() if p.name.startswith(".tmp")]
    assert (folder / "0_2_v2.png").exists() == (point == "after-rename")  # killed where we meant to
    assert bool(temp_files) == (point != "after-rename")

    assert_database_intact(root)
    ws = Workspace(root)
    current, info = ws.get_annotation(volume["id"], 0, 2)
    assert info["version"] == 1 and info["author"] == "child"
    np.testing.assert_array_equal(current, mask(1))
    assert [(h["version"], h["action"]) for h in ws.annotation_history(volume["id"])] == [(1, "save")]
    np.testing.assert_array_equal(ws.label_volume(volume["id"])[2], mask(1))

    # The killed writer released its lock: the next save goes through, on top of version 1.
    saved = ws.save_annotation(volume["id"], 0, 2, mask(0), expected_version=1)
    assert saved["version"] == 2
    np.testing.assert_array_equal(ws.get_annotation(volume["id"], 0, 2)[0], mask(0))
    np.testing.assert_array_equal(ws.get_annotation(volume["id"], 0, 2, version=1)[0], mask(1))


def test_import_killed_after_publishing_files_leaves_no_volume(tmp_path):
    root = tmp_path / "ws"
    setup = Workspace(root)
    project = setup.create_project("p", LABELS)
    setup.close()
    upload = write_nifti(tmp_path / "v.nii.gz")

    signal_file = tmp_path / "signal"
    run_child_until(
        "import-published",
        [str(root), str(project["id"]), "import-published", str(signal_file), "-", str(upload)],
        signal_file,
    )

    assert [p.name for p in (root / "volumes").iterdir()] == ["1"]  # published, never committed
    assert_database_intact(root)
    ws = Workspace(root)
    assert ws.list_volumes(project["id"]) == []
    # The orphan folder of the uncommitted row does not block the next import that gets the same id.
    volume = ws.import_volume(project["id"], upload, "v.nii.gz", 10**8)
    assert [p.name for p in (root / "volumes").iterdir()] == [str(volume["id"])]
    np.testing.assert_array_equal(ws.volume_array(volume["id"]), np.asanyarray(nib.load(upload).dataobj))
