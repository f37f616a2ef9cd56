"""bench.slice_interpolation: the shape interpolation between painted slices it measures, against references."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import slice_interpolation as si
from bench.common import SHARED_DATA
from data.volume import IGNORE
from helpers_kept_models import kept_untrained_run


def naive_signed_distance(mask: np.ndarray, spacing) -> np.ndarray:
    """Distance in mm from each pixel centre to the nearest pixel of the other kind, negative inside."""
    mask = np.asarray(mask, bool)
    centres = np.argwhere(np.ones_like(mask)) * np.asarray(spacing)
    out = np.empty(mask.shape)
    for (y, x), inside in np.ndenumerate(mask):
        others = centres[(mask != inside).ravel()]
        nearest = np.sqrt(((others - np.array([y, x]) * np.asarray(spacing)) ** 2).sum(axis=1)).min()
        out[y, x] = -nearest if inside else nearest
    return out


def disc(shape, centre, radius) -> np.ndarray:
    y, x = np.mgrid[: shape[0], : shape[1]]
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius**2


def test_signed_distance_matches_a_brute_force_reference_with_anisotropic_spacing():
    rng = np.random.default_rng(3)
    mask = disc((14, 17), (6, 8), 4) | (rng.random((14, 17)) < 0.05)
    got = si.signed_distance(mask, (0.7, 1.3))
    assert np.allclose(got, naive_signed_distance(mask, (0.7, 1.3)), atol=1e-4)
    assert (got[mask] <= 0).all() and (got[~mask] > 0).all()


def test_an_empty_slice_is_farther_than_any_pixel_and_a_full_one_inside_everywhere():
    assert np.allclose(si.signed_distance(np.zeros((3, 4), bool), (1.0, 2.0)), np.hypot(3.0, 8.0))
    assert np.allclose(si.signed_distance(np.ones((3, 4), bool), (1.0, 2.0)), -np.hypot(3.0, 8.0))


def test_between_two_equal_slices_the_fill_is_that_slice_and_nothing_else_is_filled():
    shape = (9, 20, 20)
    label = np.zeros(shape[1:], np.uint8)
    label[disc(shape[1:], (10, 10), 5)] = 1
    label[disc(shape[1:], (10, 10), 5) & (np.arange(20)[None, :] > 10)] = 2
    painted = np.full(shape, IGNORE, np.uint8)
    painted[2], painted[6] = label, label
    filled = si.fill_between(painted, 0, (1.0, 1.0, 1.0), 3)
    for z in (3, 4, 5):
        assert (filled[z] == label).all()
    for z in (0, 1, 2, 6, 7, 8):
        assert (filled[z] == IGNORE).all()


def test_a_growing_disc_grows_linearly_between_its_painted_slices_along_any_axis():
    painted = np.full((30, 9, 30), IGNORE, np.uint8)
    painted[:, 0] = disc((30, 30), (15, 15), 4).astype(np.uint8)
    painted[:, 8] = disc((30, 30), (15, 15), 12).astype(np.uint8)
    filled = si.fill_between(painted, 1, (1.0, 1.0, 1.0), 2)
    for z in range(1, 8):
        radius = 4 + (12 - 4) * z / 8
        area = (filled[:, z] == 1).sum()
        assert abs(area - np.pi * radius**2) < 2 * np.pi * radius  # within about a pixel of the radius


def test_a_class_that_stops_hands_over_midway_and_the_structure_stays():
    shape = (11, 16, 16)
    blob = disc(shape[1:], (8, 8), 4)
    painted = np.full(shape, IGNORE, np.uint8)
    painted[0] = np.where(blob, 2, 0)
    painted[10] = np.where(blob, 1, 0)
    filled = si.fill_between(painted, 0, (1.0, 1.0, 1.0), 3)
    for z in range(1, 10):
        assert ((filled[z] > 0) == blob).all()
        if z != 5:  # at the middle both classes are equally far
            assert set(np.unique(filled[z][blob])) == ({2} if z < 5 else {1})


def test_scores_inside_the_painted_stretch_leave_the_rest_out():
    truth = np.zeros((6, 4, 4), np.uint8)
    truth[1:5, 1:3, 1:3] = 1
    kept = truth.copy()
    kept[0, 0, 0] = 1  # wrong outside the stretch only
    filled = kept.copy()
    inside = si.stretch(truth.shape, 0, 1, 4)
    scores = si.scores_of(kept, filled, truth, inside, 2)
    assert scores["kept inside"] == pytest.approx(1.0)
    assert scores["kept"] < 1.0 and scores["filled"] == scores["kept"]


@pytest.mark.skipif(not (SHARED_DATA / "hippocampus").is_dir(), reason="needs ../shared/data/hippocampus")
def test_on_validation_volumes_painted_from_the_truth_the_fill_beats_an_untrained_model(tmp_path, capsys):
    data = SHARED_DATA / "hippocampus"
    names = sorted(p.name for p in (data / "labelsTr").glob("*.nii.gz"))[:2]
    folder = tmp_path / "bench"
    val_images = [str(data / "imagesTr" / n) for n in names]
    kept_untrained_run(data, names, folder, val_images=val_images)
    assert si.main([str(folder), "--json", str(tmp_path / "s.json")]) == 0
    scores = json.loads((tmp_path / "s.json").read_text())[str(folder)]["runs/seed0/sparse-2x1/full+pseudo"]
    # filled from the truth's own slices, the stretch between them is far better than an untrained network's
    assert scores["filled inside"] > scores["kept inside"] + 0.2
    assert scores["filled"] > scores["kept"]
    assert "| filled inside |" in capsys.readouterr().out
