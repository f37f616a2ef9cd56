"""The evaluation of bench/label_efficiency.py: Dice of a trained model on the held-out test volumes and on
the labelled volumes it was trained on, for each inference variant."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.label_efficiency_protocol import NUM_CLASSES


def evaluate(
    model_dir: Path, device: str, labelled_paths: list[tuple[str, str, str]], test_volumes: list
) -> tuple[dict, dict]:
    """Per-volume Dice of the plain prediction on the test volumes, and every inference variant's
    Dice on the test volumes and on the labelled volumes themselves (against their full truth: the
    masks the clinician gets back).

    Variants: `flip` (test-time flips), `clean` (largest component + hole filling for every class),
    `auto` (the clean-up chosen per class on the painted voxels of the labelled volumes, which is all
    the app knows), and their combinations with `flip`.

    labelled_paths: (image, painted label, full truth) of each labelled volume; test_volumes: (name, image,
    truth, spacing) of the test volumes: two arrays and the image's mm per voxel axis."""
    from data.io import read_volume
    from data.mask_cleanup import Cleanup, choose_cleanup
    from model.inference import load_predictor
    from model.train import dice_per_class

    predictor = load_predictor(model_dir, device)

    def base(image, spacing):
        return {
            "plain": predictor.predict(image, spacing, flip=False, clean=False)[0],
            "flip": predictor.predict(image, spacing, flip=True, clean=False)[0],
        }

    labelled = []
    for image_path, label_path, truth_path in labelled_paths:
        name = Path(image_path).name
        image = read_volume(image_path)
        painted = np.asarray(read_volume(label_path).array)
        labelled.append(
            (name, base(np.asarray(image.array), image.spacing), painted, np.asarray(read_volume(truth_path).array))
        )
    every = Cleanup.everything(NUM_CLASSES)
    auto = {
        key: choose_cleanup([b[key] for _, b, _, _ in labelled], [p for _, _, p, _ in labelled], NUM_CLASSES)
        for key in ("plain", "flip")
    }

    def variants(b):
        return {
            "plain": b["plain"],
            "flip": b["flip"],
            "clean": every.apply(b["plain"]),
            "flip+clean": every.apply(b["flip"]),
            "auto": auto["plain"][0].apply(b["plain"]),
            "flip+auto": auto["flip"][0].apply(b["flip"]),
        }

    test: dict[str, dict[str, list[float]]] = {}
    for name, image, truth, spacing in test_volumes:
        for variant, pred in variants(base(image, spacing)).items():
            test.setdefault(variant, {})[name] = dice_per_class(pred, truth, NUM_CLASSES)
    own: dict[str, dict[str, list[float]]] = {}
    for name, b, _, truth in labelled:
        for variant, pred in variants(b).items():
            own.setdefault(variant, {})[name] = dice_per_class(pred, truth, NUM_CLASSES)

    def mean(per_volume):
        return float(np.mean(list(per_volume.values())))

    summary = {
        variant: {
            "test_dice_mean": mean(test[variant]),
            "labelled_dice_mean": mean(own[variant]),
            "test_dice_per_volume": test[variant],
        }
        for variant in test
    }
    summary["auto_choice"] = {key: report for key, (_, report) in auto.items()}
    return test["plain"], summary
