"""bench.smoothing_cost times predictions with and without smoothing along the slicing axis side by side."""

import re

import pytest

from bench import smoothing_cost


def test_it_prints_both_times_and_their_ratio_per_shape(capsys):
    smoothing_cost.main(["--shapes", "9x20x24,5x40x40", "--repeats", "1"])
    lines = capsys.readouterr().out.strip().splitlines()[-2:]
    for shape, line in zip(("9x20x24", "5x40x40"), lines):
        assert line.startswith(shape)
        off, on, ratio = (
            float(x) for x in re.findall(r"off ([\d.]+) ms, predict_smooth_mm=1 ([\d.]+) ms, ratio ([\d.]+)", line)[0]
        )
        assert off > 0 and on > 0 and ratio == pytest.approx(on / off, abs=0.01)


def test_a_shape_that_is_not_three_sizes_is_refused():
    with pytest.raises(SystemExit, match="three sizes"):
        smoothing_cost.main(["--shapes", "9x20"])
