"""bench.slice_smoothing: the Gaussian average along the slicing axis, against a loop written out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench import slice_smoothing
from bench.common import SHARED_DATA
from bench.label_efficiency_eval import evaluate
from bench.slice_smoothing import smooth_along
from data.io import read_volume
from helpers_kept_models import kept_untrained_run


def naive_smooth(probs: np.ndarray, axis: int, sigma: float) -> np.ndarray:
    radius = max(1, math.ceil(3 * sigma))
    weights = [math.exp(-0.5 * (d / sigma) ** 2) for d in range(-radius, radius + 1)]
    total = sum(weights)
    n = probs.shape[axis + 1]
    out = np.zeros(probs.shape, dtype=np.float64)
    for i in range(n):
        acc = 0.0
        for d, w in zip(range(-radius, radius + 1), weights):
            j = min(n - 1, max(0, i + d))  # the end slices repeat past the ends
            acc = acc + w / total * np.take(probs, j, axis=axis + 1)
        index = [slice(None)] * probs.ndim
        index[axis + 1] = i
        out[tuple(index)] = acc
    return out


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_it_matches_the_loop_along_each_axis(axis, sigma):
    rng = np.random.default_rng(axis)
    probs = rng.random((3, 5, 6, 7)).astype(np.float32)
    assert smooth_along(probs, axis, sigma) == pytest.approx(naive_smooth(probs, axis, sigma), abs=1e-5)


def test_sigma_0_changes_nothing_and_the_softmax_still_sums_to_one():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 4, 9))
    probs = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)
    assert smooth_along(probs, 2, 0.0) is probs
    assert smooth_along(probs, 2, 1.0).sum(axis=0) == pytest.approx(np.ones((4, 4, 9)), abs=1e-5)


def test_a_lone_slice_of_another_class_is_outvoted_by_its_neighbours():
    probs = np.zeros((3, 7, 1, 1), dtype=np.float32)
    probs[1] = 0.8
    probs[2] = 0.2
    probs[:, 3] = [[[0.0]], [[0.4]], [[0.6]]]  # slice 3 alone says class 2
    assert probs.argmax(axis=0)[3, 0, 0] == 2
    assert (smooth_along(probs, 0, 1.0).argmax(axis=0) == 1).all()


@pytest.mark.skipif(not (SHARED_DATA / "hippocampus").is_dir(), reason="needs ../shared/data/hippocampus")
def test_sigma_0_of_a_kept_model_is_the_benchmarks_flip_and_auto_score(tmp_path, capsys):
    data = SHARED_DATA / "hippocampus"
    names = sorted(p.name for p in (data / "labelsTr").glob("*.nii.gz"))[:4]
    folder = tmp_path / "bench"
    run_dir = kept_untrained_run(data, names[:2], folder, prefix="painted_")
    config = json.loads((run_dir / "config.json").read_text())
    images, labels = config["images"], config["labels"]
    split = {"train": names[:2], "val": names[2:3], "test": names[3:4]}
    (folder / "results.json").write_text(json.dumps({"meta": {"split": split}, "runs": []}))
    assert slice_smoothing.main([str(folder), "--sigmas", "1", "--json", str(tmp_path / "s.json")]) == 0
    scores = json.loads((tmp_path / "s.json").read_text())[str(folder)]["runs/seed0/sparse-2x1/full+pseudo"]
    assert set(scores["test"]) == {"0.0", "1.0"}
    labelled = [(image, label, str(data / "labelsTr" / Path(image).name)) for image, label in zip(images, labels)]
    test = []
    for n in names[3:4]:
        image = read_volume(str(data / "imagesTr" / n))
        test.append(
            (n, np.asarray(image.array), np.asarray(read_volume(str(data / "labelsTr" / n)).array), image.spacing)
        )
    _, summary = evaluate(run_dir, "cpu", labelled, test)
    assert scores["test"]["0.0"] == pytest.approx(summary["flip+auto"]["test_dice_mean"], abs=1e-9)
    assert "test sigma 1 - 0:" in capsys.readouterr().out
