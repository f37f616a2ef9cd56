"""The training pipeline on real hippocampus volumes with 2 painted slices each, and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from data.errors import InvalidInput
from model.config import preset
from model.inference import load_predictor
from model.train import train

ROOT = Path(__file__).resolve().parents[1]
HIPPO = ROOT.parent / "shared" / "data" / "hippocampus"
CASES = ["hippocampus_001.nii.gz", "hippocampus_003.nii.gz", "hippocampus_004.nii.gz"]


def sparse_dataset(folder: Path, cases=CASES, painted=2):
    """Images + label volumes that keep `painted` evenly spaced slices (axis 0) of labelsTr; 255 elsewhere."""
    if not HIPPO.is_dir():
        pytest.skip(f"hippocampus data not found at {HIPPO} (expected ../shared/data next to the repo)")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    images, labels = [], []
    for name in cases:
        img, lab = nib.load(HIPPO / "imagesTr" / name), nib.load(HIPPO / "labelsTr" / name)
        full = np.asarray(lab.dataobj).astype(np.uint8)
        fg = np.nonzero(full.any(axis=(1, 2)))[0]
        idx = np.linspace(fg.min(), fg.max(), painted + 2)[1:-1].round().astype(int)
        sparse = np.full_like(full, 255)
        sparse[idx] = full[idx]
        nib.save(img, folder / "images" / name)
        nib.save(nib.Nifti1Image(sparse, lab.affine), folder / "labels" / name)
        images.append(str(folder / "images" / name))
        labels.append(str(folder / "labels" / name))
    return images, labels


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return sparse_dataset(tmp_path_factory.mktemp("hippo"))


def read_progress(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]


def test_quick_preset_runs_every_stage_and_writes_the_model(data, tmp_path):
    images, labels = data
    out = tmp_path / "model"
    cfg = preset(
        "quick",
        images=images,
        labels=labels,
        out_dir=str(out),
        val_images=images[:1],
        val_labels=[str(HIPPO / "labelsTr" / CASES[0])],
        device="cpu",
    )
    metrics = train(cfg)

    for name in ("model.pt", "config.json", "metrics.json", "checkpoint.pt", "global.pt", "progress.jsonl"):
        assert (out / name).is_file(), name
    events = read_progress(out)
    assert events[0]["event"] == "start" and events[-1]["event"] == "done"
    steps = [e for e in events if e["event"] == "step"]
    assert {e["stage"] for e in steps} == {"global", "local", "finetune"}
    for e in steps:
        assert {"stage", "epoch", "step", "loss", "eta_s", "progress", "time"} <= set(e)
        assert 0 <= e["progress"] <= 1 and np.isfinite(e["loss"])
    assert [e["progress"] for e in events] == sorted(e["progress"] for e in events)
    assert events[-1]["progress"] == 1.0

    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert set(saved["stages"]) == {"global", "local", "finetune"}
    assert all(s["wall_s"] > 0 and np.isfinite(s["final_loss"]) for s in saved["stages"].values())
    assert saved["data"]["painted_slices"] == 6 and saved["data"]["num_classes"] == 3
    assert len(saved["validation"]["dice_per_class"]) == 2
    assert json.loads((out / "config.json").read_text()) == cfg.to_dict()

    predictor = load_predictor(out, device="cpu")
    # "auto" flips are decided per call against a time budget: under load two calls could differ
    predictor.config = predictor.config.replace(predict_flip="on")
    volume = np.asarray(nib.load(images[1]).dataobj)
    mask, probs = predictor.predict(volume, (1.0, 1.0, 1.0), return_probs=True, clean=False)
    assert mask.shape == volume.shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1, 2}
    assert probs.shape == (3, *volume.shape) and probs.dtype == np.float16
    assert (probs.argmax(0) == mask).mean() > 0.99  # float16 rounding can only break near-ties
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=1e-2)
    predictor.config = predictor.config.replace(predict_chunk_pixels=3000)  # one slice at a time
    small_chunks, none = predictor.predict(volume, clean=False)
    assert none is None
    np.testing.assert_array_equal(small_chunks, mask)
    # the masks a user gets are the network's, cleaned up in 3D as decided at the end of training
    assert saved["cleanup"]["mode"] == "auto"
    np.testing.assert_array_equal(predictor.predict(volume)[0], predictor.cleanup.apply(mask))

    # a later retrain can start from this run's global stage (shared across retrains)
    out2 = tmp_path / "refresh"
    refresh = cfg.replace(
        out_dir=str(out2),
        init_from=str(out / "global.pt"),
        global_stage=False,
        local_stage=False,
        finetune_epochs=1,
        finetune_steps=2,
        val_images=[],
        val_labels=[],
    )
    metrics2 = train(refresh)
    assert set(metrics2["stages"]) == {"finetune"} and metrics2["init_from"]["tensors"] > 0


def base(data, tmp_path, **changes):
    images, labels = data
    return preset("quick", images=images, labels=labels, out_dir=str(tmp_path / "m"), device="cpu", **changes)


def write_label(tmp_path, like_path, array):
    img = nib.load(like_path)
    path = tmp_path / f"bad_{len(list(tmp_path.iterdir()))}.nii.gz"
    nib.save(nib.Nifti1Image(array.astype(np.uint8), img.affine), path)
    return str(path)


def all_ignore_labels(data, tmp_path) -> list[str]:
    """One label volume per image, every voxel 255 (not annotated)."""
    images, _ = data
    return [write_label(tmp_path, image, np.full(nib.load(image).shape, 255)) for image in images]


def assert_nothing_trained(out: Path) -> None:
    """The run stopped before any training: no checkpoint, no model, no progress line."""
    for name in ("checkpoint.pt", "global.pt", "model.pt", "progress.jsonl"):
        assert not (out / name).exists(), name


def test_label_value_outside_the_label_map(data, tmp_path):
    with pytest.raises(InvalidInput, match=r"values \[2\] outside the label map \(0\.\.1"):
        train(base(data, tmp_path, num_classes=2))
    assert_nothing_trained(tmp_path / "m")


def test_nothing_painted(data, tmp_path):
    with pytest.raises(InvalidInput, match="nothing is painted"):
        train(base(data, tmp_path).replace(labels=all_ignore_labels(data, tmp_path)))
    assert_nothing_trained(tmp_path / "m")


GLOBAL_ONLY = dict(global_stage=True, local_stage=False, finetune_stage=False)


@pytest.mark.parametrize("labels", ["none", "empty strings", "all 255"])
def test_global_stage_alone_needs_no_labels(data, tmp_path, labels):
    """The global (SimCLR) stage reads no label: it runs with no label volumes, or with nothing painted."""
    images, _ = data
    given = {"none": (), "empty strings": [""] * len(images), "all 255": all_ignore_labels(data, tmp_path)}[labels]
    out = tmp_path / "m"
    metrics = train(base(data, tmp_path, **GLOBAL_ONLY).replace(labels=given))

    for name in ("global.pt", "model.pt", "config.json", "metrics.json"):
        assert (out / name).is_file(), name
    assert set(metrics["stages"]) == {"global"} and np.isfinite(metrics["stages"]["global"]["final_loss"])
    assert metrics["data"]["painted_slices"] == 0 and metrics["data"]["num_classes"] == 2
    assert read_progress(out)[-1]["event"] == "done"
    volume = np.asarray(nib.load(images[0]).dataobj)
    assert load_predictor(out, device="cpu").predict(volume)[0].shape == volume.shape


@pytest.mark.parametrize(
    "stages",
    [
        dict(global_stage=False, local_stage=False, finetune_stage=True),
        dict(global_stage=True, local_stage=False, finetune_stage=True),
        dict(global_stage=False, local_stage=True, finetune_stage=False),
    ],
    ids=["finetune", "global+finetune", "local"],
)
@pytest.mark.parametrize("labels", ["none", "all 255"])
def test_a_stage_that_needs_labels_with_nothing_painted_fails_before_training(data, tmp_path, stages, labels):
    given = () if labels == "none" else all_ignore_labels(data, tmp_path)
    with pytest.raises(InvalidInput, match="nothing is painted"):
        train(base(data, tmp_path, **stages).replace(labels=given))
    assert_nothing_trained(tmp_path / "m")


def test_painted_only_along_another_axis_fails_before_training(data, tmp_path):
    """sparse_dataset paints slices along axis 0; asked to cut along axis 1 there is nothing to learn from."""
    with pytest.raises(InvalidInput, match="no fully painted slice along axis 1"):
        train(base(data, tmp_path, axis=1))
    assert_nothing_trained(tmp_path / "m")


def test_global_stage_alone_still_checks_the_labels_it_is_given(data, tmp_path):
    with pytest.raises(InvalidInput, match=r"values \[2\] outside the label map"):
        train(base(data, tmp_path, num_classes=2, **GLOBAL_ONLY))
    assert_nothing_trained(tmp_path / "m")


def test_label_shape_differs_from_image(data, tmp_path):
    images, labels = data
    lab = np.asarray(nib.load(labels[0]).dataobj)[:, :-1]
    bad = [write_label(tmp_path, labels[0], lab)] + list(labels[1:])
    with pytest.raises(InvalidInput, match="has shape .* but the image has"):
        train(base(data, tmp_path).replace(labels=bad))
    assert_nothing_trained(tmp_path / "m")


def test_unknown_config_key_fails_before_training(data, tmp_path):
    config = base(data, tmp_path).to_dict() | {"finetune_epoch": 3}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    run = subprocess.run([sys.executable, "-m", "model.train", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2
    assert "unknown config keys: finetune_epoch" in run.stderr
    events = read_progress(tmp_path / "m")
    assert events == [e for e in events if e["event"] == "error"] and "finetune_epoch" in events[0]["message"]
    assert not (tmp_path / "m" / "checkpoint.pt").exists()


def test_refuses_to_resume_a_different_config(data, tmp_path):
    cfg = base(data, tmp_path, global_stage=False, local_stage=False, finetune_epochs=1, finetune_steps=1)
    train(cfg)
    with pytest.raises(ValueError, match="differs in: seed"):
        train(cfg.replace(seed=5))
    torch.manual_seed(0)
