"""The clean-up a model gets at the end of training: decided on painted voxels, stored, applied by the predictor."""

import nibabel as nib
import numpy as np
import torch

from model import checkpoint
from model.config import preset
from model.device import runtime_for
from model.inference import load_predictor
from model.postprocess import decide_cleanup
from model.train import train
from tests.test_model_train import CASES, HIPPO, sparse_dataset


class Bright(torch.nn.Module):
    """Class 1 wherever the (normalised) input is bright: a network whose mistakes we choose."""

    def forward(self, x):
        return torch.cat([-(x - 1.0), x - 1.0], dim=1) * 10


def write(path, array):
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return str(path)


def scene(tmp_path, speck_is_real):
    image = np.zeros((12, 24, 24), np.float32)
    image[3:9, 6:16, 6:16] = 100.0  # the structure
    image[6, 20:22, 20:22] = 100.0  # a small bright part on painted slice 6
    truth = (image > 50).astype(np.uint8)
    if not speck_is_real:
        truth[6, 20:22, 20:22] = 0  # the bright bit is not the structure: a false positive to remove
    painted = np.full(truth.shape, 255, np.uint8)
    painted[6] = truth[6]
    cfg = preset(
        "quick",
        images=[write(tmp_path / "img.nii.gz", image)],
        labels=[write(tmp_path / "lab.nii.gz", painted)],
        num_classes=2,
        cleanup="auto",
        out_dir=str(tmp_path),
    )
    info = {"axis": 0, "size": 24, "max_size": 128, "multiple": 8}
    return cfg, info, truth


def test_auto_keeps_largest_component_when_the_painted_slice_shows_a_false_part(tmp_path):
    cfg, info, _ = scene(tmp_path, speck_is_real=False)
    cleanup, report = decide_cleanup(Bright(), cfg, info, runtime_for("cpu", "off", "off", "off"), 2)
    assert "largest" in cleanup.steps[1]
    assert report["mode"] == "auto" and report["volumes"] == 1
    assert report["classes"]["1"]["dice_after"] > report["classes"]["1"]["dice_before"]


def test_auto_leaves_a_second_part_that_the_painted_slice_shows_is_real(tmp_path):
    cfg, info, _ = scene(tmp_path, speck_is_real=True)
    cleanup, _ = decide_cleanup(Bright(), cfg, info, runtime_for("cpu", "off", "off", "off"), 2)
    assert "largest" not in cleanup.steps[1]


def test_off_and_all_need_no_prediction(tmp_path):
    cfg, info, _ = scene(tmp_path, speck_is_real=False)
    rt = runtime_for("cpu", "off", "off", "off")
    assert decide_cleanup(Bright(), cfg.replace(cleanup="off"), info, rt, 2) == (None, {"mode": "off"})
    everything, report = decide_cleanup(Bright(), cfg.replace(cleanup="all"), info, rt, 2)
    assert everything.steps == {1: ("largest", "fill")} and report == {"mode": "all"}


def test_the_decision_travels_in_model_pt_and_the_predictor_applies_it(tmp_path):
    images, labels = sparse_dataset(tmp_path / "data", cases=CASES[:2])
    cfg = preset(
        "quick",
        images=images,
        labels=labels,
        out_dir=str(tmp_path / "run"),
        device="cpu",
        global_stage=False,
        local_stage=False,
        pseudo_stage=False,
        finetune_epochs=1,
        finetune_steps=3,
        budget_s=None,
        cleanup="all",
    )
    metrics = train(cfg)
    assert metrics["cleanup"] == {"mode": "all"}
    assert checkpoint.load(tmp_path / "run" / "model.pt")["cleanup"] == {
        "1": ["largest", "fill"],
        "2": ["largest", "fill"],
    }
    predictor = load_predictor(tmp_path / "run", device="cpu")
    image = np.asarray(nib.load(HIPPO / "imagesTr" / CASES[2]).dataobj, dtype=np.float32)
    raw, _ = predictor.predict(image, clean=False)
    cleaned, _ = predictor.predict(image)
    np.testing.assert_array_equal(cleaned, predictor.cleanup.apply(raw))
    train(cfg.replace(out_dir=str(tmp_path / "off"), cleanup="off"))
    assert load_predictor(tmp_path / "off", device="cpu").cleanup is None
