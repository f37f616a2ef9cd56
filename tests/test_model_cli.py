"""`slicewise train` / `slicewise predict` through model.cli: name matching, subprocess training, mask geometry."""

import argparse
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_model_train import HIPPO, sparse_dataset

from data.io import read_volume
from model import cli

ROOT = Path(__file__).resolve().parents[1]
DICOM = ROOT.parent / "shared" / "data" / "dicom" / "study1_hippocampus_crop"
TINY = ["--set", "global_steps=2", "--set", "local_steps=2", "--set", "finetune_epochs=1", "--set", "finetune_steps=3"]


def test_labels_are_matched_to_images_by_name(tmp_path):
    (tmp_path / "img").mkdir(), (tmp_path / "lab").mkdir()
    for name in ("a.nii.gz", "b.nii", "c.nii.gz"):
        (tmp_path / "img" / name).touch()
    for name in ("a.nii.gz", "b.nii.gz"):
        (tmp_path / "lab" / name).touch()
    images, labels, unlabeled = cli.match_labels(tmp_path / "img", tmp_path / "lab")
    assert [Path(p).name for p in images] == ["a.nii.gz", "b.nii"]
    assert [Path(p).name for p in labels] == ["a.nii.gz", "b.nii.gz"]
    assert [Path(p).name for p in unlabeled] == ["c.nii.gz"]
    (tmp_path / "lab" / "zzz.nii.gz").touch()
    with pytest.raises(Exception, match="without a matching image.*zzz"):
        cli.match_labels(tmp_path / "img", tmp_path / "lab")


def test_unknown_override_is_refused_before_training(tmp_path, capsys):
    images, _ = sparse_dataset(tmp_path / "d", cases=["hippocampus_001.nii.gz"])
    rc = cli.main(
        [
            "train",
            "--images",
            str(tmp_path / "d" / "images"),
            "--labels",
            str(tmp_path / "d" / "labels"),
            "--out",
            str(tmp_path / "m"),
            "--preset",
            "quick",
            "--set",
            "finetune_epoch=3",
        ]
    )
    assert rc == 2 and "unknown config keys: finetune_epoch" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_train_then_predict_writes_masks_in_the_input_geometry(tmp_path, capfd):
    sparse_dataset(tmp_path / "d")
    extra = tmp_path / "d" / "images" / "hippocampus_006.nii.gz"
    shutil.copy(HIPPO / "imagesTr" / "hippocampus_006.nii.gz", extra)  # no label: used as unlabeled
    out = tmp_path / "model"
    parser = cli.add_train_args(argparse.ArgumentParser())
    args = parser.parse_args(
        [
            "--images",
            str(tmp_path / "d" / "images"),
            "--labels",
            str(tmp_path / "d" / "labels"),
            "--out",
            str(out),
            "--preset",
            "quick",
            "--device",
            "cpu",
            *TINY,
        ]
    )
    assert cli.run_train(args) == 0
    streamed = capfd.readouterr().out
    assert "[finetune] epoch" in streamed and "[train] done" in streamed
    config = json.loads((out / "train_config.json").read_text())
    assert config["unlabeled"] == [str(extra)] and len(config["images"]) == 3 and config["finetune_steps"] == 3
    assert (out / "model.pt").is_file()

    inputs = [extra] + ([DICOM] if DICOM.is_dir() else [])
    parser = cli.add_predict_args(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--model", str(out), *map(str, inputs), "--out", str(tmp_path / "pred"), "--probs", "--device", "cpu"]
    )
    assert cli.run_predict(args) == 0
    for source in inputs:
        volume = read_volume(source)
        mask = nib.load(tmp_path / "pred" / f"{cli.volume_name(source)}.nii.gz")
        assert mask.shape == volume.shape and mask.get_data_dtype() == np.uint8
        np.testing.assert_allclose(mask.affine, volume.affine, atol=1e-5)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
        probs = np.load(tmp_path / "pred" / f"{cli.volume_name(source)}_probs.npy")
        assert probs.shape == (3, *volume.shape) and probs.dtype == np.float16

    # given the painted label volumes, the masks keep every painted voxel; one that does not fit is refused
    labels_dir = tmp_path / "d" / "labels"
    painted_files = sorted(labels_dir.iterdir())
    images = [tmp_path / "d" / "images" / f.name for f in painted_files] + [extra]
    kept = tmp_path / "kept"
    args = parser.parse_args(["--model", str(out), *map(str, images), "--out", str(kept), "--labels", str(labels_dir)])
    assert cli.run_predict(args) == 0
    for label_file in painted_files:
        painted = np.asarray(read_volume(label_file).array)
        mask = np.asarray(nib.load(kept / label_file.name).dataobj)
        assert (painted != 255).any() and (painted == 255).any()
        np.testing.assert_array_equal(mask[painted != 255], painted[painted != 255])
    bad = tmp_path / "bad_labels"
    bad.mkdir()
    volume = read_volume(extra)
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.uint8), volume.affine), bad / extra.name)
    capfd.readouterr()
    args = parser.parse_args(["--model", str(out), str(extra), "--out", str(tmp_path / "x"), "--labels", str(bad)])
    assert cli.run_predict(args) == 1
    assert "has shape (3, 3, 3), but the image has" in capfd.readouterr().err


def test_predict_without_a_model_is_a_clear_error(tmp_path, capsys):
    rc = cli.main(["predict", "--model", str(tmp_path / "nothing"), str(tmp_path / "x.nii.gz"), "--out", str(tmp_path)])
    assert rc == 2 and "no model file" in capsys.readouterr().err
