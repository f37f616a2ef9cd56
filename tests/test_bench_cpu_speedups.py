"""bench.cpu_speedups: a chosen subset of variants is timed against the float32 baseline."""

import sys

import pytest

from bench import cpu_speedups


def test_variants_subset_always_includes_the_baseline(tmp_path, monkeypatch):
    out = tmp_path / "speed.md"
    argv = ["cpu_speedups", "--steps", "1", "--rounds", "1", "--size", "16", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", [*argv, "--variants", "channels_last,bf16 autocast"])
    cpu_speedups.main()
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "ms" not in line]
    assert [r.split(" | ")[0] for r in rows] == [
        "| float32 (baseline)",
        "| channels_last",
        "| bf16 autocast",
    ]
    assert rows[0].split(" | ")[2] == "1.00x"


def test_unknown_variant_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["cpu_speedups", "--variants", "bf17", "--out", str(tmp_path / "x.md")])
    with pytest.raises(SystemExit):
        cpu_speedups.main()
    assert "unknown variant(s) ['bf17']" in capsys.readouterr().err
    assert not (tmp_path / "x.md").exists()
