"""Slice suggestion strategies (app/suggest.py): each ranks the obvious slice first on constructed inputs."""

import numpy as np
import pytest

from app import suggest as sg


def probs_volume(n=9, h=6, w=5, unsure=None, k=3):
    """(K, n, h, w) probabilities: confident everywhere, 50/50 between two classes on slice `unsure`."""
    p = np.zeros((k, n, h, w), dtype=np.float32)
    p[0] = 0.98
    p[1:] = 0.02 / (k - 1)
    if unsure is not None:
        p[:, unsure] = 0.0
        p[0, unsure], p[1, unsure] = 0.5, 0.5
    return p


def test_even_fills_the_largest_gap_and_starts_in_the_middle():
    assert sg.rank(sg.even_scores(11, []), [])[0] == 5
    assert sg.rank(sg.even_scores(21, [2, 5]), [2, 5])[0] == 20  # the far end is the largest gap
    assert sg.rank(sg.even_scores(21, [0, 20]), [0, 20])[0] == 10


def test_even_with_extent_stays_inside_the_structure():
    scores = sg.even_scores(40, [], extent=(10, 20))
    assert sg.rank(scores, [])[0] == 15
    assert sg.rank(sg.even_scores(40, [15], extent=(10, 20)), [15])[0] in (10, 20)
    inside = set(range(10, 21))
    order = sg.rank(scores, [])
    assert set(order[:11]) == inside  # every slice inside ranks above every slice outside


def test_entropy_and_margin_pick_the_uncertain_slice():
    p = probs_volume(unsure=6)
    for volume_map in (sg.entropy_map(p), sg.margin_map(p)):
        per_slice = sg.slice_scores(volume_map, axis=0)
        assert sg.rank(per_slice, [])[0] == 6
        assert sg.rank(per_slice, [6])[0] != 6  # painted slices are never suggested


def test_margin_map_values():
    p = np.array([[0.7, 0.5, 1.0], [0.2, 0.5, 0.0], [0.1, 0.0, 0.0]], dtype=np.float32)  # (K=3, 3 voxels)
    np.testing.assert_allclose(sg.margin_map(p, class_axis=0), [0.5, 1.0, 0.0], atol=1e-6)


def test_disagreement_picks_the_slice_that_changed():
    prev = np.zeros((8, 5, 5), dtype=np.uint8)
    cur = prev.copy()
    cur[3, 1:4, 1:4] = 1  # a lot changed on slice 3
    cur[5, 0, 0] = 2  # a little on slice 5
    d = sg.disagreement(cur, prev, axis=0)
    assert sg.rank(d, [])[:2] == [3, 5]
    np.testing.assert_allclose(d[3], 9 / 25)
    assert sg.disagreement(cur, prev, axis=1).shape == (5,)
    with pytest.raises(ValueError):
        sg.disagreement(cur, prev[:4], axis=0)


def test_coverage_picks_the_slice_far_from_every_painted_one():
    e = np.zeros((6, 3))
    e[4] = [5.0, 5.0, 0.0]  # an outlier in embedding space
    e[1] = [0.5, 0.0, 0.0]
    assert sg.rank(sg.coverage_scores(e, [0]), [0])[0] == 4
    assert sg.rank(sg.coverage_scores(e, []), [])[0] == 4
    assert sg.rank(sg.coverage_scores(e, [0, 4]), [0, 4])[0] == 1


def test_mix_combines_uncertainty_and_distance():
    n = 21
    unc = np.zeros(n)
    unc[12] = 1.0
    # uncertainty alone would say 12, distance alone 20 (far from the painted 0..10): the mix weighs both
    painted = list(range(0, 11))
    mix = sg.mix_scores(n, painted, unc)
    assert sg.rank(mix, painted)[0] == 12  # 0.6 * 1 + 0.4 * 2/10 beats 0.4 * 10/10
    assert sg.rank(sg.mix_scores(n, painted, None), painted)[0] == 20
    dis = np.zeros(n)
    dis[18] = 1.0
    assert sg.rank(sg.mix_scores(n, painted, None, dis), painted)[0] == 18


def test_strategy_scores_falls_back_to_even_without_its_signal():
    for strategy in ("entropy", "margin", "disagreement", "coverage", "mix", "even"):
        scores = sg.strategy_scores(strategy, 11, [])
        assert sg.rank(scores, [])[0] == 5, strategy
    with pytest.raises(ValueError):
        sg.strategy_scores("magic", 11, [])


def test_suggest_api_keeps_its_shape_and_defaults():
    unc = {0: np.zeros(9), 1: np.zeros(6), 2: np.zeros(5)}
    unc[0][7] = 1.0
    out = sg.suggest((9, 6, 5), (3.0, 1.0, 1.0), [(0, 4)], unc, limit=3)
    assert out["axis"] == 0 and out["painted"] == [4] and len(out["slices"]) == 3
    assert out["method"] == "uncertainty+distance" and out["strategy"] == sg.DEFAULT_STRATEGY
    assert out["slices"][0]["index"] == 7 and out["slices"][0]["axis"] == 0
    plain = sg.suggest((9, 6, 5), (3.0, 1.0, 1.0), [], None, limit=2)
    assert plain["method"] == "distance" and plain["slices"][0]["index"] == 4
    ent = sg.suggest((9, 6, 5), (3.0, 1.0, 1.0), [(0, 4)], unc, strategy="entropy", limit=1)
    assert ent["method"] == "entropy" and ent["slices"][0]["index"] == 7
