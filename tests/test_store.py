"""The workspace store: SQLite rows + files, versioned annotations, nothing half-written."""

from __future__ import annotations

import math
import sqlite3
import threading
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data.errors import Conflict, InvalidInput, NotFound
from data.store import Workspace

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LABELS = [{"value": 1, "name": "anterior", "color": "#FF0000"}, {"value": 2, "name": "posterior", "color": "#00ff00"}]
SHAPE = (6, 7, 5)
MAX_BYTES = 50_000_000


def oblique_affine() -> np.ndarray:
    angle = math.radians(20)
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 1.2, 2.5])
    affine[:3, 3] = [-10.0, 25.5, 3.0]
    return affine


def write_nifti(path: Path, shape=SHAPE) -> Path:
    array = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    image = nib.Nifti1Image(array, oblique_affine())
    image.set_qform(oblique_affine(), code=1)
    image.set_sform(oblique_affine(), code=2)
    nib.save(image, path)
    return path


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path / "ws")


@pytest.fixture
def project(ws) -> dict:
    return ws.create_project("hippo", LABELS)


@pytest.fixture
def volume(ws, project, tmp_path) -> dict:
    upload = write_nifti(tmp_path / "upload.nii.gz")
    return ws.import_volume(project["id"], upload, "case 1.nii.gz", MAX_BYTES)


def mask_for(axis: int, fill: int = 1) -> np.ndarray:
    shape = tuple(n for a, n in enumerate(SHAPE) if a != axis)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[: shape[0] // 2] = fill
    return mask


def annotation_files(ws: Workspace, volume_id: int) -> list[str]:
    folder = ws.root / "annotations" / str(volume_id)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def stored_tree(ws: Workspace) -> list[str]:
    return sorted(str(p.relative_to(ws.root)) for p in (ws.root / "volumes").rglob("*")) + sorted(
        str(p.relative_to(ws.root)) for p in (ws.root / "tmp").rglob("*")
    )


# ------------------------------------------------------------------------------------------------ schema


def test_database_is_wal_with_foreign_keys_and_reopens_idempotently(tmp_path):
    first = Workspace(tmp_path / "ws")
    first.create_project("p", LABELS)
    again = Workspace(tmp_path / "ws")
    con = again.db.connection()
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert [tuple(r) for r in con.execute("SELECT version FROM schema_version")] == [(1,)]
    assert [p["name"] for p in again.list_projects()] == ["p"]
    with pytest.raises(sqlite3.IntegrityError):
        con.execute(
            'INSERT INTO annotations (volume_id, axis, "index", version, path, author, updated)'
            " VALUES (99, 0, 0, 1, 'x', 'a', 'now')"
        )


def test_connections_are_per_thread(ws, project):
    seen = {}

    def read():
        seen["names"] = [p["name"] for p in ws.list_projects()]
        seen["con"] = ws.db.connection()

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    assert seen["names"] == ["hippo"]
    assert seen["con"] is not ws.db.connection()


# ------------------------------------------------------------------------------------------------ projects


def test_create_get_list_projects(ws):
    project = ws.create_project("  hippo  ", LABELS)
    assert project["name"] == "hippo"
    assert project["labels"] == [
        {"value": 1, "name": "anterior", "color": "#ff0000"},
        {"value": 2, "name": "posterior", "color": "#00ff00"},
    ]
    assert project["active_model_id"] is None and project["created"]
    assert ws.get_project(project["id"]) == project
    assert ws.list_projects() == [project]
    assert ws.label_values(project["id"]) == {0, 1, 2, 255}


def test_duplicate_project_name_is_a_conflict(ws, project):
    with pytest.raises(Conflict, match="already exists"):
        ws.create_project("hippo", LABELS)
    assert len(ws.list_projects()) == 1


@pytest.mark.parametrize(
    "labels, message",
    [
        ([], "at least one label"),
        ([{"value": 0, "name": "bg", "color": "#000000"}], "1 to 254"),
        ([{"value": 255, "name": "x", "color": "#000000"}], "1 to 254"),
        ([{"value": 1.0, "name": "x", "color": "#000000"}], "whole number"),
        ([{"value": True, "name": "x", "color": "#000000"}], "whole number"),
        ([{"value": 1, "name": "a", "color": "#000000"}, {"value": 1, "name": "b", "color": "#111111"}], "twice"),
        ([{"value": 1, "name": " ", "color": "#000000"}], "needs a name"),
        ([{"value": 1, "name": "a", "color": "red"}], "#rrggbb"),
        ([{"value": 1, "name": "a", "color": "#12345"}], "#rrggbb"),
        ([{"value": 1, "name": "a"}], "missing color"),
        ([{"value": 1, "name": "a", "color": "#000000", "opacity": 1}], "unknown opacity"),
        ("1,2", "at least one label"),
    ],
)
def test_bad_label_maps_are_refused(ws, labels, message):
    with pytest.raises(InvalidInput, match=message):
        ws.create_project("p", labels)
    assert ws.list_projects() == []


def test_unknown_ids_say_which(ws):
    with pytest.raises(NotFound, match="no project with id 7"):
        ws.get_project(7)
    with pytest.raises(NotFound, match="no volume with id 7"):
        ws.get_volume(7)
    with pytest.raises(NotFound, match="no volume with id 7"):
        ws.load_volume(7)
    with pytest.raises(NotFound, match="no volume with id 7"):
        ws.volume_array(7)
    with pytest.raises(NotFound, match="no volume with id 7"):
        ws.save_annotation(7, 0, 0, np.zeros((2, 2), np.uint8))
    with pytest.raises(NotFound, match="no volume with id 7"):
        ws.list_annotations(7)
    with pytest.raises(NotFound, match="no model with id 7"):
        ws.get_model(7)
    with pytest.raises(NotFound, match="no job with id 7"):
        ws.get_job(7)
    with pytest.raises(NotFound, match="no job with id 7"):
        ws.update_job(7, progress=0.5)
    with pytest.raises(NotFound, match="no volume with id 'abc'"):
        ws.get_volume("abc")


# ------------------------------------------------------------------------------------------------ volumes


def test_import_nifti_keeps_bytes_geometry_and_cache(ws, project, tmp_path):
    upload = write_nifti(tmp_path / "upload.nii.gz")
    volume = ws.import_volume(project["id"], upload, "case 1.nii.gz", MAX_BYTES)

    assert set(volume) >= {"id", "project_id", "name", "shape", "spacing", "orientation", "source", "created"}
    assert volume["name"] == "case 1" and volume["source"] == "nifti" and volume["project_id"] == project["id"]
    assert volume["shape"] == list(SHAPE)
    np.testing.assert_allclose(volume["spacing"], [0.8, 1.2, 2.5])
    np.testing.assert_allclose(volume["affine"], oblique_affine(), atol=1e-5)
    assert volume["orientation"] == "".join(nib.aff2axcodes(oblique_affine()))
    assert volume["meta"]["dtype"] == "int16"
    assert ws.get_volume(volume["id"]) == volume
    assert ws.list_volumes(project["id"]) == [volume]

    stored = ws.root / "volumes" / str(volume["id"]) / "image.nii.gz"
    assert ws.volume_source_path(volume["id"]) == stored.resolve()
    assert stored.read_bytes() == upload.read_bytes()
    loaded = ws.load_volume(volume["id"])
    expected = np.asanyarray(nib.load(upload).dataobj)
    np.testing.assert_array_equal(loaded.array, expected)
    np.testing.assert_allclose(loaded.affine, nib.load(upload).affine)
    cached = ws.volume_array(volume["id"])
    np.testing.assert_array_equal(cached, expected)
    assert not cached.flags.writeable
    assert list((ws.root / "tmp").iterdir()) == []


def test_import_real_hippocampus_volume(ws, project):
    images = SHARED / "hippocampus" / "imagesTr"
    if not images.is_dir():
        pytest.skip(f"{images} is absent; the real-data import check needs ../shared/data")
    source = sorted(images.glob("*.nii.gz"))[0]
    volume = ws.import_volume(project["id"], source, source.name, MAX_BYTES)
    reference = nib.load(source)
    assert volume["shape"] == list(reference.shape)
    np.testing.assert_array_equal(ws.volume_array(volume["id"]), np.asanyarray(reference.dataobj))
    np.testing.assert_allclose(ws.load_volume(volume["id"]).affine, reference.affine)


def test_import_dicom_zip_keeps_the_series(ws, project, tmp_path):
    series = SHARED / "dicom" / "study1_hippocampus_crop"
    if not series.is_dir():
        pytest.skip(f"{series} is absent; the DICOM import check needs ../shared/data")
    upload = tmp_path / "study1.zip"
    with zipfile.ZipFile(upload, "w") as archive:
        for file in sorted(series.iterdir()):
            archive.write(file, f"series/{file.name}")
    volume = ws.import_volume(project["id"], upload, "study1.zip", MAX_BYTES)
    assert volume["source"] == "dicom" and volume["name"] == "study1"
    assert volume["meta"]["series_uid"] and "source_zip" not in volume["meta"]
    stored = ws.root / "volumes" / str(volume["id"]) / "dicom" / "series"
    assert ws.volume_source_path(volume["id"]) == (ws.root / "volumes" / str(volume["id"]) / "dicom").resolve()
    assert len(list(stored.iterdir())) == len(list(series.iterdir()))
    loaded = ws.load_volume(volume["id"])
    assert list(loaded.shape) == volume["shape"]
    np.testing.assert_array_equal(loaded.array, ws.volume_array(volume["id"]))
    assert loaded.meta["series_uid"] == volume["meta"]["series_uid"]


def truncated_gzip(tmp_path: Path) -> Path:
    good = write_nifti(tmp_path / "good.nii.gz").read_bytes()
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(good[: len(good) // 2])
    return bad


@pytest.mark.parametrize("corrupt", ["truncated", "garbage", "not gzip"])
def test_import_of_a_corrupt_file_leaves_nothing(ws, project, tmp_path, corrupt):
    if corrupt == "truncated":
        upload = truncated_gzip(tmp_path)
    else:
        upload = tmp_path / "bad.nii.gz"
        upload.write_bytes(b"\x1f\x8b" + b"\x00" * 400 if corrupt == "garbage" else b"hello" * 100)
    with pytest.raises(InvalidInput):
        ws.import_volume(project["id"], upload, "bad.nii.gz", MAX_BYTES)
    assert ws.list_volumes(project["id"]) == []
    assert stored_tree(ws) == []


def test_import_failing_while_staging_leaves_nothing(ws, project, tmp_path, monkeypatch):
    import data.store_files as store_files

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_files.np, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        ws.import_volume(project["id"], write_nifti(tmp_path / "v.nii.gz"), "v.nii.gz", MAX_BYTES)
    assert ws.db.all("SELECT id FROM volumes") == []
    assert stored_tree(ws) == []


def test_import_failing_after_files_are_published_rolls_back(ws, project, tmp_path, monkeypatch):
    real_audit = Workspace._audit

    def failing_audit(con, who, what, details):
        if what == "import_volume":
            raise sqlite3.OperationalError("disk I/O error")
        return real_audit(con, who, what, details)

    monkeypatch.setattr(Workspace, "_audit", staticmethod(failing_audit))
    with pytest.raises(sqlite3.OperationalError):
        ws.import_volume(project["id"], write_nifti(tmp_path / "v.nii.gz"), "v.nii.gz", MAX_BYTES)
    assert ws.db.all("SELECT id FROM volumes") == []
    assert stored_tree(ws) == []
    monkeypatch.undo()
    volume = ws.import_volume(project["id"], write_nifti(tmp_path / "v.nii.gz"), "v.nii.gz", MAX_BYTES)
    assert ws.volume_array(volume["id"]).shape == SHAPE


def test_import_into_unknown_project_or_with_a_path_in_the_name_leaves_nothing(ws, project, tmp_path):
    upload = write_nifti(tmp_path / "v.nii.gz")
    with pytest.raises(NotFound, match="no project with id 42"):
        ws.import_volume(42, upload, "v.nii.gz", MAX_BYTES)
    with pytest.raises(InvalidInput, match="plain name"):
        ws.import_volume(project["id"], upload, "../v.nii.gz", MAX_BYTES)
    assert ws.db.all("SELECT id FROM volumes") == []
    assert stored_tree(ws) == []


# ------------------------------------------------------------------------------------------------ annotations


def test_annotation_versions_and_reads(ws, volume):
    vid = volume["id"]
    first = ws.save_annotation(vid, 0, 2, mask_for(0, 1), author="ana")
    assert first["version"] == 1 and first["author"] == "ana" and first["reviewed"] is False
    assert set(first) == {"volume_id", "axis", "index", "version", "author", "reviewed", "updated"}
    second = ws.save_annotation(vid, 0, 2, mask_for(0, 2), author="bob", expected_version=1, reviewed=True)
    assert second["version"] == 2 and second["reviewed"] is True

    mask, info = ws.get_annotation(vid, 0, 2)
    np.testing.assert_array_equal(mask, mask_for(0, 2))
    assert info == second
    old, old_info = ws.get_annotation(vid, 0, 2, version=1)
    np.testing.assert_array_equal(old, mask_for(0, 1))
    assert old_info["author"] == "ana"
    assert annotation_files(ws, vid) == ["0_2_v1.png", "0_2_v2.png"]
    assert [(a["axis"], a["index"], a["version"]) for a in ws.list_annotations(vid)] == [(0, 2, 2)]


def test_stale_expected_version_is_a_conflict_and_changes_nothing(ws, volume):
    vid = volume["id"]
    ws.save_annotation(vid, 1, 3, mask_for(1, 1))
    ws.save_annotation(vid, 1, 3, mask_for(1, 2), expected_version=1)
    before = (ws.list_annotations(vid), ws.annotation_history(vid), annotation_files(ws, vid))

    with pytest.raises(Conflict, match="version 2"):
        ws.save_annotation(vid, 1, 3, mask_for(1, 0), expected_version=1)
    with pytest.raises(Conflict, match="version 2"):
        ws.save_annotation(vid, 1, 3, mask_for(1, 0), expected_version=0)
    with pytest.raises(Conflict, match="version 2"):
        ws.delete_annotation(vid, 1, 3, expected_version=1)

    assert (ws.list_annotations(vid), ws.annotation_history(vid), annotation_files(ws, vid)) == before
    np.testing.assert_array_equal(ws.get_annotation(vid, 1, 3)[0], mask_for(1, 2))


def test_expected_version_zero_means_create_only(ws, volume):
    vid = volume["id"]
    assert ws.save_annotation(vid, 2, 0, mask_for(2), expected_version=0)["version"] == 1
    with pytest.raises(Conflict, match="has no annotation now"):
        ws.save_annotation(vid, 2, 1, mask_for(2), expected_version=3)


def test_delete_keeps_history_and_versions_keep_counting(ws, volume):
    vid = volume["id"]
    ws.save_annotation(vid, 0, 1, mask_for(0, 1))
    removed = ws.delete_annotation(vid, 0, 1, expected_version=1)
    assert removed["version"] == 1
    assert ws.list_annotations(vid) == []
    with pytest.raises(NotFound, match="no annotation for slice 1 on axis 0"):
        ws.get_annotation(vid, 0, 1)
    with pytest.raises(NotFound):
        ws.delete_annotation(vid, 0, 1)
    again = ws.save_annotation(vid, 0, 1, mask_for(0, 2), expected_version=0)
    assert again["version"] == 3
    assert [(h["version"], h["action"]) for h in ws.annotation_history(vid, 0, 1)] == [
        (1, "save"),
        (2, "delete"),
        (3, "save"),
    ]
    np.testing.assert_array_equal(ws.get_annotation(vid, 0, 1, version=1)[0], mask_for(0, 1))


@pytest.mark.parametrize(
    "axis, index, mask, message",
    [
        (0, 0, np.zeros((7, 4), np.uint8), "shape"),
        (0, 0, np.full((7, 5), 7, np.uint8), "7"),
        (0, 6, np.zeros((7, 5), np.uint8), "between 0 and 5"),
        (3, 0, np.zeros((7, 5), np.uint8), "axis must be 0, 1 or 2"),
        (0, -1, np.zeros((7, 5), np.uint8), "between 0 and 5"),
    ],
)
def test_bad_masks_are_refused_and_nothing_is_stored(ws, volume, axis, index, mask, message):
    with pytest.raises(InvalidInput, match=message):
        ws.save_annotation(volume["id"], axis, index, mask)
    assert ws.list_annotations(volume["id"]) == []
    assert annotation_files(ws, volume["id"]) == []


def test_ignore_and_background_are_valid_mask_values(ws, volume):
    mask = np.zeros((6, 5), np.uint8)
    mask[0] = 255
    mask[1] = 2
    ws.save_annotation(volume["id"], 1, 0, mask)
    np.testing.assert_array_equal(ws.get_annotation(volume["id"], 1, 0)[0], mask)


def test_label_volume_is_ignore_except_painted_slices(ws, volume):
    vid = volume["id"]
    ws.save_annotation(vid, 0, 2, mask_for(0, 1))
    ws.save_annotation(vid, 2, 4, mask_for(2, 2))
    labels = ws.label_volume(vid)
    assert labels.shape == SHAPE and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels[:, :, 4], mask_for(2, 2))
    expected_axis0 = mask_for(0, 1)
    expected_axis0[:, 4] = mask_for(2, 2)[2]  # the newer axis-2 slice wins where they cross
    np.testing.assert_array_equal(labels[2], expected_axis0)
    untouched = np.ones(SHAPE, bool)
    untouched[2] = False
    untouched[:, :, 4] = False
    assert (labels[untouched] == 255).all()


def test_two_threads_saving_the_same_version_one_wins(tmp_path):
    root = tmp_path / "ws"
    setup = Workspace(root)
    project = setup.create_project("p", LABELS)
    vid = setup.import_volume(project["id"], write_nifti(tmp_path / "v.nii.gz"), "v.nii.gz", MAX_BYTES)["id"]
    for round_ in range(5):
        index = round_
        base = setup.save_annotation(vid, 0, index, mask_for(0, 0))["version"]
        barrier = threading.Barrier(2)
        outcomes = {}

        def save(who: str, fill: int):
            workspace = Workspace(root)  # as a second server process would
            barrier.wait()
            try:
                outcomes[who] = workspace.save_annotation(
                    vid, 0, index, mask_for(0, fill), author=who, expected_version=base
                )
            except Conflict as exc:
                outcomes[who] = exc

        threads = [threading.Thread(target=save, args=(who, fill)) for who, fill in (("ana", 1), ("bob", 2))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = {who: r for who, r in outcomes.items() if isinstance(r, dict)}
        losers = [r for r in outcomes.values() if isinstance(r, Conflict)]
        assert len(winners) == 1 and len(losers) == 1, outcomes
        ((who, saved),) = winners.items()
        assert saved["version"] == base + 1
        mask, info = setup.get_annotation(vid, 0, index)
        assert info["author"] == who
        np.testing.assert_array_equal(mask, mask_for(0, 1 if who == "ana" else 2))
        assert len(setup.annotation_history(vid, 0, index)) == 2


def test_concurrent_unchecked_saves_all_land_as_distinct_versions(ws, volume):
    vid = volume["id"]
    barrier = threading.Barrier(4)
    results = []

    def save(fill: int):
        barrier.wait()
        results.append((fill, ws.save_annotation(vid, 2, 1, mask_for(2, fill % 3), author=f"user{fill}")))

    threads = [threading.Thread(target=save, args=(fill,)) for fill in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r["version"] for _, r in results) == [1, 2, 3, 4]
    for fill, saved in results:
        mask, info = ws.get_annotation(vid, 2, 1, version=saved["version"])
        assert info["author"] == f"user{fill}"
        np.testing.assert_array_equal(mask, mask_for(2, fill % 3))


# ------------------------------------------------------------------------------------------------ models


def test_models_activate_and_roll_back(ws, project):
    job = ws.create_job(project["id"], "train", {"preset": "quick"})
    first = ws.add_model(project["id"], job["id"], "/m/1", {"lr": 0.001}, {"dice": 0.5}, [[1, 0, 2, 1]])
    second = ws.add_model(project["id"], None, Path("/m/2"), {}, {"dice": float("nan"), "n": np.int64(3)}, [])
    assert first["config"] == {"lr": 0.001} and first["annotations_seen"] == [[1, 0, 2, 1]]
    assert first["job_id"] == job["id"] and first["active"] is False
    assert second["metrics"] == {"dice": None, "n": 3} and second["path"] == "/m/2"
    assert ws.active_model(project["id"]) is None

    assert ws.activate_model(project["id"], second["id"])["active"] is True
    assert ws.active_model(project["id"])["id"] == second["id"]
    ws.activate_model(project["id"], first["id"])
    assert ws.get_project(project["id"])["active_model_id"] == first["id"]
    assert [(m["id"], m["active"]) for m in ws.list_models(project["id"])] == [
        (first["id"], True),
        (second["id"], False),
    ]

    other = ws.create_project("other", LABELS)
    with pytest.raises(NotFound, match=f"no model with id {first['id']} in project {other['id']}"):
        ws.activate_model(other["id"], first["id"])
    with pytest.raises(NotFound, match="no job with id 99"):
        ws.add_model(project["id"], 99, "/m/3", {}, {}, [])
    assert len(ws.list_models(project["id"])) == 2


# ------------------------------------------------------------------------------------------------ jobs


def test_job_lifecycle(ws, project):
    job = ws.create_job(project["id"], "train", {"preset": "quick"})
    assert job["state"] == "queued" and job["params"] == {"preset": "quick"} and job["progress"] == 0
    assert job["out_dir"] == str((ws.root / "jobs" / str(job["id"])).resolve())
    assert job["started"] is None and job["finished"] is None

    running = ws.update_job(job["id"], state="running", pid=1234, stage="pretrain")
    assert running["started"] and running["pid"] == 1234 and running["stage"] == "pretrain"
    progressed = ws.update_job(job["id"], epoch=3, progress=0.25, eta_s=12.5, message="epoch 3")
    assert (progressed["epoch"], progressed["progress"], progressed["eta_s"]) == (3, 0.25, 12.5)
    assert progressed["started"] == running["started"]
    assert [j["id"] for j in ws.list_jobs(state="running")] == [job["id"]]
    assert ws.list_jobs(state="queued") == []

    done = ws.update_job(job["id"], state="failed", error="out of memory")
    assert done["finished"] and done["error"] == "out of memory"
    with pytest.raises(Conflict, match="already finished"):
        ws.update_job(job["id"], state="running")
    assert ws.get_job(job["id"])["state"] == "failed"

    with pytest.raises(ValueError, match="colour"):
        ws.update_job(job["id"], colour="red")
    with pytest.raises(ValueError, match="state must be one of"):
        ws.update_job(job["id"], state="paused")
    second = ws.create_job(project["id"], "train", {})
    assert [j["id"] for j in ws.list_jobs()] == [job["id"], second["id"]]
    assert [j["id"] for j in ws.list_jobs(state=["queued", "failed"], project_id=project["id"])] == [
        job["id"],
        second["id"],
    ]


# ------------------------------------------------------------------------------------------------ predictions


def test_predictions_per_volume_and_model(ws, project, volume):
    vid = volume["id"]
    old = ws.add_model(project["id"], None, "/m/1", {}, {}, [])
    new = ws.add_model(project["id"], None, "/m/2", {}, {}, [])
    assert ws.get_prediction(vid) is None

    ws.set_prediction(vid, old["id"], "/p/old.nii.gz", "ready")
    assert ws.get_prediction(vid)["model_id"] == old["id"]  # nothing active: the newest one
    pending = ws.set_prediction(vid, new["id"], None, "running")
    assert pending["status"] == "running" and pending["path"] is None
    ready = ws.set_prediction(vid, new["id"], "/p/new.nii.gz", "ready")
    assert ready["created"] == pending["created"] and ready["path"] == "/p/new.nii.gz"

    ws.activate_model(project["id"], old["id"])
    assert ws.get_prediction(vid)["path"] == "/p/old.nii.gz"
    assert ws.get_prediction(vid, new["id"])["status"] == "ready"
    assert [p["model_id"] for p in ws.list_predictions(volume_id=vid)] == [old["id"], new["id"]]

    other = ws.create_project("other", LABELS)
    foreign = ws.add_model(other["id"], None, "/m/x", {}, {}, [])
    with pytest.raises(InvalidInput, match="another project"):
        ws.set_prediction(vid, foreign["id"], "/p/x", "ready")
    with pytest.raises(NotFound, match="no volume with id 77"):
        ws.set_prediction(77, old["id"], "/p/x", "ready")


# ------------------------------------------------------------------------------------------------ audit


def test_audit_records_explicit_and_automatic_events(ws, volume):
    ws.save_annotation(volume["id"], 0, 0, mask_for(0), author="ana")
    entry = ws.record_audit("admin", "login", {"ip": "127.0.0.1"})
    assert entry["who"] == "admin" and entry["what"] == "login" and entry["details"] == {"ip": "127.0.0.1"}
    assert entry["when"]
    recent = ws.list_audit()
    assert recent[0] == entry
    assert [(e["who"], e["what"]) for e in recent[1:]] == [
        ("ana", "save_annotation"),
        ("local", "import_volume"),
        ("local", "create_project"),
    ]
