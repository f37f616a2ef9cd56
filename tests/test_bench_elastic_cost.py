"""bench.elastic_cost times fine-tune steps with and without elastic bending side by side."""

import re

import pytest
from test_model_train import HIPPO

from bench import elastic_cost


def test_it_prints_both_step_times_and_their_ratio(capsys):
    if not HIPPO.is_dir():
        pytest.skip(f"hippocampus data not found at {HIPPO}")
    elastic_cost.main(["--steps", "2", "--volumes", "2"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    off, on, ratio = (float(x) for x in re.findall(r"off ([\d.]+) ms, on ([\d.]+) ms, ratio ([\d.]+)", line)[0])
    assert off > 0 and on > 0 and ratio == pytest.approx(on / off, abs=2e-3)
