"""Predicted masks, cached per (volume, model version), and everything read from them.

    <workspace>/predictions/<model_id>/<volume_id>/labels.npy          the model's mask, memory-mapped for slices
                                                  /prediction.nii.gz   the mask to download, in the upload's exact
                                                                       geometry, with the volume's painted slices
                                                  /painted.json        which saves of the paint it holds
                                                  /labels_with_paint.npy  a painted volume's mask with the paint of
                                                  /paint_used.json     these saves taken as certain (see below)
                                                  /uncertainty.npz     mean entropy per slice, per axis, and
                                                                       the fraction of each slice's voxels whose
                                                                       label changed since the model before
                                                  /prediction.dcm      DICOM-SEG, written on first request
                                                  /prediction.seg.nrrd Slicer's, written on first request

Files are written atomically before the prediction row says "ready", so a crash leaves either no
prediction or a complete one. Inference runs in the server process (model.inference only).

What the viewer overlays, the suggestions and the scores read is the model's own mask (labels.npy): on a
painted slice it shows where the model disagrees with the paint. Every file to download holds the volume's
painted slices as they are saved now, voxel for voxel, over the model's mask: a slice painted or corrected
after the model was trained is in the download at once, without a retrain. A download made after the paint
changed writes the files again (`export_folder`).

For a volume painted when it is predicted, the same pass through the network also gives its mask with that
paint taken as certain (model.inference `predict_with_paint`): the painted slices pull their neighbours
through the smoothing along the slicing axis, and the clean-up sees them. Its downloads start from that mask
while every save it was made with is still there unchanged; once one of them is repainted or erased they
start from the model's own mask again, until the next prediction (measured in
docs/benchmarks/painted_slices.md).
"""

from __future__ import annotations

import io
import json
import logging
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from app import suggest
from app.speed import speed_cache
from data import io as volume_io
from data.annotations import impose_paint, take_slice
from data.atomic import atomic_write
from data.errors import Conflict, NotFound
from data.store import Workspace
from data.volume import IGNORE

log = logging.getLogger("slicewise.predictions")

MASK_NAME = "prediction.nii.gz"
LABELS_NAME = "labels.npy"
UNCERTAINTY_NAME = "uncertainty.npz"
SEG_NAME = "prediction.dcm"
SEG_NRRD_NAME = "prediction.seg.nrrd"
PAINT_NAME = "painted.json"
WITH_PAINT_NAME = "labels_with_paint.npy"
PAINT_USED_NAME = "paint_used.json"
READY = "ready"
MAX_PROBS_BYTES = 1 << 30


class Predictions:
    def __init__(self, workspace: Workspace, device: str = "auto", keep_models: int = 2):
        self.workspace = workspace
        self.device = device
        self.keep_models = keep_models
        self._predictors: OrderedDict[int, object] = OrderedDict()
        # one inference at a time: on a 2-core machine two would only slow each other (and the API) down
        self._compute_lock = threading.Lock()
        self._export_lock = threading.Lock()  # the files to download of any prediction

    # ---------------------------------------------------------------- computing

    def folder(self, model_id: int, volume_id: int) -> Path:
        return self.workspace.root / "predictions" / str(int(model_id)) / str(int(volume_id))

    def _predictor(self, model: dict):
        from model.inference import load_predictor  # torch loads only when a prediction is first needed

        predictor = self._predictors.get(model["id"])
        if predictor is None:
            predictor = load_predictor(model["path"], device=self.device, speed_cache=speed_cache(self.workspace.root))
            self._predictors[model["id"]] = predictor
            while len(self._predictors) > self.keep_models:
                self._predictors.popitem(last=False)
        self._predictors.move_to_end(model["id"])
        return predictor

    def is_ready(self, volume_id: int, model_id: int) -> bool:
        row = self.workspace.get_prediction(volume_id, model_id)
        return bool(row and row["status"] == READY and (Path(row["path"]) / LABELS_NAME).exists())

    def wants_probs(self, volume: dict, num_classes: int) -> bool:
        """Probabilities (float16, K per voxel) feed the slice suggestions; skipped where they'd be huge."""
        return int(np.prod(volume["shape"])) * num_classes * 2 <= MAX_PROBS_BYTES

    def predict_volume(self, volume_id: int, model: dict, force: bool = False, computed=None) -> dict:
        """Predict one volume with one model version and cache the result -> the prediction row.
        computed: a callable giving (labels, probs) inferred elsewhere (a Ray worker), instead of here."""
        with self._compute_lock:
            if not force and self.is_ready(volume_id, model["id"]):
                return self.workspace.get_prediction(volume_id, model["id"])
            folder = self.folder(model["id"], volume_id)
            try:
                volume = self.workspace.get_volume(volume_id)
                if computed is not None:
                    labels, probs, with_paint, used = computed()
                else:
                    labels, probs, with_paint, used = self._infer(volume, model)
                signals = {}
                if probs is not None:
                    entropy = suggest.entropy_map(probs, class_axis=class_axis(probs, labels.shape))
                    signals.update({f"axis{a}": suggest.slice_scores(entropy, a) for a in range(3)})
                if with_paint is not None:
                    with_paint = (self._clean(model, np.asarray(with_paint, dtype=np.uint8)), used)
                self._write(
                    folder, volume, model, self._clean(model, np.asarray(labels, dtype=np.uint8)), signals, with_paint
                )
            except Exception as exc:
                log.exception("prediction of volume %s with model %s failed", volume_id, model["id"])
                self.workspace.set_prediction(volume_id, model["id"], None, f"failed: {exc}"[:500])
                raise
            return self.workspace.set_prediction(volume_id, model["id"], str(folder), READY)

    def _infer(self, volume: dict, model: dict) -> tuple:
        """(labels, probs, labels with the paint, which saves of the paint) of one volume, here; the last two
        None for a volume with no paint. Nothing is cleaned yet."""
        predictor = self._predictor(model)
        array = np.asarray(self.workspace.volume_array(volume["id"]))
        want_probs = self.wants_probs(volume, predictor.num_classes)
        snapshot = self.paint_snapshot(volume["id"])
        if snapshot is None:
            labels, probs = predictor.predict(array, tuple(volume["spacing"]), return_probs=want_probs, clean=False)
            return labels, probs, None, None
        used, painted = snapshot
        labels, with_paint, probs = predictor.predict_with_paint(
            array, painted, tuple(volume["spacing"]), return_probs=want_probs, clean=False
        )
        return labels, probs, with_paint, used

    def paint_snapshot(self, volume_id: int) -> tuple[str, np.ndarray] | None:
        """(which saves, the sparse label volume) of the volume's paint now; None when nothing is painted, or
        when a save came in while it was read (its mask is then made without the paint)."""
        before = self._paint_stamp(volume_id)
        painted = self.workspace.label_volume(volume_id)
        if not (painted != IGNORE).any() or self._paint_stamp(volume_id) != before:
            return None
        return before, painted

    def _clean(self, model: dict, labels: np.ndarray) -> np.ndarray:
        """The model's 3D clean-up applied to raw predicted labels (none while it is still undecided)."""
        predictor = self._predictor(model)
        if predictor.cleanup is None or predictor.cleanup_pending:
            return labels
        return predictor.cleanup.apply(labels)

    def _write(
        self, folder: Path, volume: dict, model: dict, labels: np.ndarray, signals: dict, with_paint=None
    ) -> None:
        """The mask files of one prediction; `signals` are the entropy scores per slice, if computed;
        `with_paint`: (the labels with the paint taken as certain, which saves of it), for a painted volume."""
        folder.mkdir(parents=True, exist_ok=True)
        save_npy(folder / LABELS_NAME, labels)
        (folder / PAINT_USED_NAME).unlink(missing_ok=True)  # first: without it the other file is never read
        if with_paint is None:
            (folder / WITH_PAINT_NAME).unlink(missing_ok=True)
        else:
            save_npy(folder / WITH_PAINT_NAME, with_paint[0])
            with atomic_write(folder / PAINT_USED_NAME) as tmp:
                Path(tmp).write_text(with_paint[1])
        with self._export_lock:
            self._write_exports(folder, volume["id"])
        signals = {k: v for k, v in signals.items() if not k.startswith("disagree")}
        previous = self._previous_labels(volume, model)
        if previous is not None:  # "mix" weighs in where the new model changed its mind
            signals.update({f"disagree{a}": suggest.disagreement(labels, previous, a) for a in range(3)})
        if signals:
            with atomic_write(folder / UNCERTAINTY_NAME) as tmp, open(tmp, "wb") as f:
                np.savez(f, **signals)

    def _write_exports(self, folder: Path, volume_id: int) -> None:
        """The NIfTI to download (`download_labels`); the other formats are made from it again on request.
        Called with the export lock held."""
        stamp = self._paint_stamp(volume_id)  # read before the paint itself: a save in between is seen next time
        exported = self.download_labels(folder, volume_id, stamp)
        volume_io.write_mask(exported, like=self.workspace.load_volume(volume_id), path=folder / MASK_NAME)
        for stale in (SEG_NAME, SEG_NRRD_NAME):
            (folder / stale).unlink(missing_ok=True)
        with atomic_write(folder / PAINT_NAME) as tmp:
            Path(tmp).write_text(stamp)

    def download_labels(self, folder: Path, volume_id: int, stamp: str | None = None) -> np.ndarray:
        """The mask to download from one prediction folder: its labels with the paint taken as certain while
        every save they were made with is among the paint's saves `stamp` (default: now), else the model's
        own labels; then the volume's paint now over them, voxel for voxel."""
        stamp = self._paint_stamp(volume_id) if stamp is None else stamp
        labels = folder / LABELS_NAME
        used = folder / PAINT_USED_NAME
        if used.exists() and (folder / WITH_PAINT_NAME).exists():
            now = {tuple(row) for row in json.loads(stamp)}
            if all(tuple(row) in now for row in json.loads(used.read_text())):
                labels = folder / WITH_PAINT_NAME
        return impose_paint(np.load(labels), self.workspace.label_volume(volume_id))

    def _paint_stamp(self, volume_id: int) -> str:
        """Which saves of which slices the volume's paint is made of now."""
        rows = self.workspace.list_annotations(volume_id)
        return json.dumps([[a["axis"], a["index"], a["version"], a["updated"]] for a in rows])

    def export_folder(self, volume_id: int) -> tuple[Path, dict]:
        """ready_folder, with its NIfTI to download written again first when the volume's paint changed since."""
        folder, model = self.ready_folder(volume_id)
        with self._export_lock:
            marker = folder / PAINT_NAME
            current = marker.read_text() if marker.exists() else None
            if current != self._paint_stamp(volume_id) or not (folder / MASK_NAME).exists():
                self._write_exports(folder, volume_id)
        return folder, model

    def export_file(self, volume_id: int, name: str, write) -> Path:
        """A file to download in another format, `write(labels, path)` on first request after the paint last
        changed; its labels are those of the NIfTI to download."""
        folder, _ = self.export_folder(volume_id)
        path = folder / name
        with self._export_lock:
            if not path.exists():
                write(self.download_labels(folder, volume_id), path)
        return path

    def settle_cleanup(self, model: dict, volumes: list[dict], computed: dict, keep_going=lambda: True) -> dict | None:
        """Decide a model's deferred "auto" clean-up (model/postprocess.py) from its own predictions of
        painted volumes: they are predicted here as that model's masks, decided on, then cleaned, so
        nothing is inferred twice. -> the decision's report, or None when none was pending or
        `keep_going()` turned False first (it stays pending; the next call picks it up)."""
        from model.cleanup_decision import decide_from, save_decision

        predictor = self._predictor(model)
        if not predictor.cleanup_pending:
            return None
        used, raws, painted = [], [], []
        for volume in volumes:
            if len(used) >= predictor.config.cleanup_volumes:
                break
            if not keep_going():
                return None
            sparse = self.workspace.label_volume(volume["id"])
            if not (sparse != IGNORE).any():
                continue
            try:
                row = self.predict_volume(volume["id"], model, computed=computed.get(volume["id"]))
            except Exception:  # logged there; the loop over all volumes reports it
                continue
            used.append(volume)
            raws.append(np.load(Path(row["path"]) / LABELS_NAME))  # raw: nothing is cleaned while pending
            painted.append(sparse)
        cleanup, report = decide_from(raws, painted, predictor.num_classes)
        with self._compute_lock:
            if cleanup is not None:  # before the decision is saved: a crash in between redoes this, never skips it
                for volume, raw in zip(used, raws):
                    folder = self.folder(model["id"], volume["id"])
                    with_paint = read_with_paint(folder)
                    if with_paint is not None:
                        with_paint = (cleanup.apply(with_paint[0]), with_paint[1])
                    signals = read_signals(folder / UNCERTAINTY_NAME)
                    self._write(folder, volume, model, cleanup.apply(raw), signals, with_paint)
            save_decision(model["path"], cleanup, report)
            predictor.cleanup, predictor.cleanup_pending = cleanup, False
        return report

    def _previous_labels(self, volume: dict, model: dict) -> np.ndarray | None:
        """The labels of this volume by the project's active model, when that is another model (a new
        model is predicted before it becomes active) and its prediction is ready; else None."""
        active = self.workspace.active_model(volume["project_id"])
        if active is None or active["id"] == model["id"] or not self.is_ready(volume["id"], active["id"]):
            return None
        labels = np.load(Path(self.workspace.get_prediction(volume["id"], active["id"])["path"]) / LABELS_NAME)
        return labels if labels.shape == tuple(volume["shape"]) else None

    def missing(self, project_id: int, model_id: int) -> list[int]:
        return [v["id"] for v in self.workspace.list_volumes(project_id) if not self.is_ready(v["id"], model_id)]

    # ---------------------------------------------------------------- reading

    def status(self, volume_id: int) -> dict:
        """What the client shows: the active model's prediction of this volume, if any."""
        volume = self.workspace.get_volume(volume_id)
        model = self.workspace.active_model(volume["project_id"])
        out = {"volume_id": volume["id"], "model_id": None, "status": "none", "updated": None}
        if model is None:
            out["message"] = "no model yet: paint a few slices and press Retrain"
            return out
        out["model_id"] = model["id"]
        row = self.workspace.get_prediction(volume["id"], model["id"])
        if row is None:
            out["status"] = "pending"
            return out
        ready = self.is_ready(volume["id"], model["id"])
        out.update(status=READY if ready else row["status"], updated=row["updated"])
        return out

    def ready_folder(self, volume_id: int) -> tuple[Path, dict]:
        """(folder, model) of the active model's ready prediction of this volume, or NotFound saying why."""
        volume = self.workspace.get_volume(volume_id)
        model = self.workspace.active_model(volume["project_id"])
        if model is None:
            raise NotFound(f"volume {volume['id']} has no prediction yet: its project has no trained model")
        if not self.is_ready(volume["id"], model["id"]):
            raise NotFound(
                f"the prediction of volume {volume['id']} by model {model['id']} is not ready yet; "
                "see GET /api/volumes/{id}/prediction for its status"
            )
        return Path(self.workspace.get_prediction(volume["id"], model["id"])["path"]), model

    def labels(self, volume_id: int) -> tuple[np.ndarray, dict]:
        folder, model = self.ready_folder(volume_id)
        return np.load(folder / LABELS_NAME, mmap_mode="r"), model

    def slice(self, volume_id: int, axis: int, index: int) -> tuple[np.ndarray, dict]:
        labels, model = self.labels(volume_id)
        return np.ascontiguousarray(take_slice(labels, axis, index)), model

    def uncertainty(self, volume_id: int) -> dict[int, np.ndarray] | None:
        """Mean predictive entropy per slice, per axis, of the active model's prediction (None if unknown)."""
        return self._slice_signal(volume_id, "axis")

    def disagreement(self, volume_id: int) -> dict[int, np.ndarray] | None:
        """Per slice, per axis: the fraction of voxels the active model labels differently from the model
        that was active when it was trained (None for a project's first model)."""
        return self._slice_signal(volume_id, "disagree")

    def _slice_signal(self, volume_id: int, prefix: str) -> dict[int, np.ndarray] | None:
        try:
            folder, _ = self.ready_folder(volume_id)
        except NotFound:
            return None
        path = folder / UNCERTAINTY_NAME
        if not path.exists():
            return None
        with np.load(path) as data:
            if f"{prefix}0" not in data.files:
                return None
            return {a: data[f"{prefix}{a}"] for a in range(3)}

    def nifti_path(self, volume_id: int) -> Path:
        folder, _ = self.export_folder(volume_id)
        return folder / MASK_NAME

    def dicom_seg_path(self, volume_id: int) -> Path:
        volume = self.workspace.get_volume(volume_id)
        if volume["source"] != "dicom":
            raise Conflict(
                f"volume {volume['id']} was uploaded as NIfTI, so there is no DICOM series to attach a "
                "DICOM-SEG to; download prediction.nii.gz instead"
            )
        project = self.workspace.get_project(volume["project_id"])

        def write(labels, path):
            volume_io.write_mask_dicom_seg(
                labels, self.workspace.load_volume(volume["id"]), path, labels=project["labels"]
            )

        return self.export_file(volume["id"], SEG_NAME, write)

    def project_zip(self, project_id: int) -> tuple[bytes, str]:
        """All ready masks of the project's active model as one zip (NIfTI, one per volume)."""
        project = self.workspace.get_project(project_id)
        model = self.workspace.active_model(project["id"])
        if model is None:
            raise NotFound(f"project {project['id']} has no trained model yet, so no predictions")
        buffer = io.BytesIO()
        written = 0
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:  # .nii.gz is compressed already
            for volume in self.workspace.list_volumes(project["id"]):
                if self.is_ready(volume["id"], model["id"]):
                    folder, _ = self.export_folder(volume["id"])
                    archive.write(folder / MASK_NAME, f"{volume['id']:04d}_{safe_name(volume['name'])}.nii.gz")
                    written += 1
        if written == 0:
            raise NotFound(f"no prediction of project {project['id']} by model {model['id']} is ready yet")
        return buffer.getvalue(), f"project{project['id']}_model{model['id']}_predictions.zip"


def class_axis(probs: np.ndarray, shape: tuple[int, ...]) -> int:
    """Probabilities come as (C, i, j, k) or (i, j, k, C)."""
    if probs.ndim == 4 and tuple(probs.shape[1:]) == tuple(shape):
        return 0
    if probs.ndim == 4 and tuple(probs.shape[:3]) == tuple(shape):
        return 3
    raise ValueError(f"probabilities of shape {probs.shape} do not match a volume of shape {shape}")


def read_with_paint(folder: Path) -> tuple[np.ndarray, str] | None:
    """(labels with the paint taken as certain, which saves of it) of a prediction folder, or None."""
    if not (folder / PAINT_USED_NAME).exists() or not (folder / WITH_PAINT_NAME).exists():
        return None
    return np.load(folder / WITH_PAINT_NAME), (folder / PAINT_USED_NAME).read_text()


def read_signals(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def safe_name(name: str) -> str:
    return "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in name)[:100] or "volume"
