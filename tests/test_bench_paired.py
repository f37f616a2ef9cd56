"""bench.paired: rows of two label_efficiency folders paired by job, differences per job and over jobs."""

from __future__ import annotations

import json

import pytest

from bench import paired


def _runs(dice, budget="sparse-10x3", row="full+pseudo"):
    runs = []
    for seed, (plain, flipped, val) in dice.items():
        runs.append(
            {
                "job": f"seed{seed}/{budget}/{row}",
                "kind": "row",
                "train_wall_s": 100.0 + seed,
                "test_dice_mean": plain,
                "val_dice_mean": val,
                "variants": {"plain": {"test_dice_mean": plain}, "flip+auto": {"test_dice_mean": flipped}},
            }
        )
    return runs


def _folder(tmp_path, name, dice, split=("a", "b"), budget="sparse-10x3", extra_runs=()):
    runs = [{"job": "seed0/global", "kind": "global"}, *_runs(dice, budget), *extra_runs]
    folder = tmp_path / name
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"meta": {"split": {"test": list(split)}}, "runs": runs}))
    return folder


def test_only_jobs_both_ran_are_paired_and_differences_are_variant_minus_base(tmp_path):
    base = _folder(tmp_path, "base", {0: (0.6, 0.62, 0.5), 1: (0.7, 0.71, 0.6), 2: (0.8, 0.8, 0.7)})
    variant = _folder(tmp_path, "var", {0: (0.65, 0.6, 0.55), 1: (0.72, 0.75, 0.6)})
    table = paired.compare(paired.load_rows(base)[1], paired.load_rows(variant)[1])
    assert table["jobs"] == ["seed0/sparse-10x3/full+pseudo", "seed1/sparse-10x3/full+pseudo"]
    assert table["plain test"]["diff"] == pytest.approx([0.05, 0.02])
    assert table["flip+auto test"]["diff"] == pytest.approx([-0.02, 0.04])
    assert table["plain val"]["diff"] == pytest.approx([0.05, 0.0])
    text = paired.render(table, "default", "new")
    assert "| flip+auto test | 0.665 ± 0.064 | 0.675 ± 0.106 | +0.010 ± 0.042 | -0.020, +0.040 |" in text


def test_folders_of_another_split_are_refused(tmp_path, capsys):
    base = _folder(tmp_path, "base", {0: (0.6, 0.6, 0.5)})
    other = _folder(tmp_path, "other", {0: (0.6, 0.6, 0.5)}, split=("c",))
    assert paired.main([str(base), str(other)]) == 2
    assert "another split" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="does not exist"):
        paired.load_rows(tmp_path / "missing")


def test_budget_as_pairs_a_variant_budget_with_the_base_one(tmp_path, capsys):
    base = _folder(tmp_path, "base", {0: (0.6, 0.62, 0.5), 1: (0.7, 0.71, 0.6)})
    ends = _folder(tmp_path, "ends", {0: (0.7, 0.7, 0.6), 1: (0.7, 0.8, 0.6)}, budget="sparse-10x3-ends")
    assert paired.compare(paired.load_rows(base)[1], paired.load_rows(ends)[1])["jobs"] == []
    renamed = paired.load_rows(ends, {"sparse-10x3-ends": "sparse-10x3"})[1]
    assert paired.compare(paired.load_rows(base)[1], renamed)["flip+auto test"]["diff"] == pytest.approx([0.08, 0.09])
    assert paired.main([str(base), str(ends), "--budget-as", "sparse-10x3-ends=sparse-10x3"]) == 0
    assert "Paired jobs (2)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        paired.main([str(base), str(ends), "--budget-as", "sparse-10x3-ends"])


def test_rows_pairs_two_rows_of_one_folder_by_seed_and_budget_one_table_per_budget(tmp_path, capsys):
    supervised = _runs({0: (0.5, 0.6, 0.5), 1: (0.6, 0.7, 0.6)}, row="supervised")
    supervised += _runs({0: (0.7, 0.72, 0.7)}, budget="sparse-20x5", row="supervised")
    full_20x5 = _runs({0: (0.8, 0.8, 0.8)}, budget="sparse-20x5")
    folder = _folder(tmp_path, "one", {0: (0.6, 0.65, 0.5), 1: (0.62, 0.8, 0.7)}, extra_runs=supervised + full_20x5)
    base = paired.load_rows(folder, only_row="supervised")[1]
    variant = paired.load_rows(folder, only_row="full+pseudo")[1]
    assert sorted(base) == sorted(variant) == ["seed0/sparse-10x3", "seed0/sparse-20x5", "seed1/sparse-10x3"]
    table = paired.compare(paired.of_budget(base, "sparse-10x3"), paired.of_budget(variant, "sparse-10x3"))
    assert table["flip+auto test"]["diff"] == pytest.approx([0.05, 0.10])
    assert paired.main([str(folder), str(folder), "--rows", "supervised,full+pseudo"]) == 0
    out = capsys.readouterr().out
    assert (
        "## full+pseudo against supervised, sparse-10x3" in out
        and "## full+pseudo against supervised, sparse-20x5" in out
    )
    assert "| flip+auto test | 0.720 | 0.800 | +0.080 | +0.080 |" in out
    with pytest.raises(SystemExit):
        paired.main([str(folder), str(folder), "--rows", "supervised"])
