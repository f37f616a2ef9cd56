"""bench/first_slices.py: the simulated clinician's first slice and the pre-model picks (no training here)."""

from __future__ import annotations

import numpy as np

from bench import first_slices as fs


def structure(n=30, start=10, stop=21):
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1, (n, 24, 24)).astype(np.float32)
    image[start:stop, 8:16, 8:16] += 6 + rng.normal(0, 1, (8, 8)).astype(np.float32) * 3
    truth = np.zeros(image.shape, np.uint8)
    truth[start:stop, 9:15, 9:15] = 1
    return image, truth


def test_clinician_paints_the_middle_of_the_structure_first():
    _, truth = structure(start=10, stop=21)  # slices 10..20
    assert fs.clinician_first_slice(truth) == 15
    assert fs.structure_extent(truth) == (10, 20)
    assert fs.clinician_first_slice(np.zeros((9, 4, 4), np.uint8)) == 4  # no structure: the middle
    assert fs.clinician_first_slice(np.moveaxis(truth, 0, 2), axis=2) == 15


def test_even_goes_to_the_volume_end_and_content_stays_inside_the_structure():
    image, truth = structure()
    rng = np.random.default_rng(0)
    even = fs.pick_more("even", image, truth, [15], 1, rng)
    content = fs.pick_more("content+distance", image, truth, [15], 2, rng)
    extent = fs.pick_more("even_extent", image, truth, [15], 2, rng)
    random = fs.pick_more("random", image, truth, [15], 3, rng)
    assert even[0] == 15 and even[1] in (0, 29)
    assert content[0] == 15 and all(10 <= i <= 20 for i in content[1:])
    assert sorted(extent[1:]) == [10, 20]
    assert len(set(random)) == 4


def test_paired_difference_is_per_seed():
    mean, std = fs.paired({0: 0.5, 1: 0.7, 2: 0.6}, {0: 0.4, 1: 0.6, 2: 0.5})
    assert np.isclose(mean, 0.1) and np.isclose(std, 0.0)
