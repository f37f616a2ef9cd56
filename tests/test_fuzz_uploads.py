"""Fuzzing uploads: hypothesis flips, overwrites and truncates bytes of a valid small NIfTI (.nii, .nii.gz,
and the .nii inside a .nii.gz) and of a DICOM series zip (the zip itself, and the DICOM files inside it).

Every answer is either 201 with a volume that reads back (metadata and a slice PNG), or a 4xx with a message
that leaves the workspace exactly as it was (files and database rows). Never a 500, never partial state.
Derandomized with a fixed example budget, so CI runs the same inputs every time in a few seconds each.
"""

from __future__ import annotations

import gzip
import io
import resource
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.main import create_app
from app.settings import Settings
from helpers_bad_input import size_and_mtime, workspace_snapshot

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SERIES = SHARED_DATA / "dicom" / "study1_hippocampus_crop"
LABELS = [{"value": 1, "name": "a", "color": "#ff0000"}]
FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

MAX_GROWTH_MB = 500


@pytest.fixture(autouse=True, scope="module")
def address_space_cap():
    """A safety net so a regression fails the test instead of making the OOM killer end the CI run.

    Only while this module runs: processes started later in the session (Chromium reserves far
    more address space than 16 GiB) would inherit the cap and crash.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_AS, (16 * 1024**3, hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


RNG = np.random.default_rng(7)
NIFTI = nib.Nifti1Image(
    RNG.integers(-1000, 3000, size=(9, 8, 6)).astype(np.int16), np.diag([0.8, 0.9, 2.5, 1.0])
).to_bytes()
NIFTI_GZ = gzip.compress(NIFTI, mtime=0)


class Target:
    def __init__(self, client: TestClient, root: Path, project_id: int):
        self.client, self.root, self.project_id = client, root, project_id
        self.accepted = self.refused = 0

    def check(self, name: str, data: bytes, *, must_accept: bool = False) -> None:
        before = workspace_snapshot(self.root, size_and_mtime)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        r = self.client.post(f"/api/projects/{self.project_id}/volumes", files={"file": (name, data)})
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
        # a 30 KB upload must not cost gigabytes (found: GDCM allocating from a corrupt header, OOM-killing the server)
        assert grown_mb < MAX_GROWTH_MB, f"reading a {len(data)}-byte upload took {grown_mb:.0f} MB more memory"
        assert r.status_code != 500 and r.status_code < 500, r.text
        if must_accept:
            assert r.status_code == 201, f"a valid {name} was refused: {r.text}"
        if r.status_code == 201:
            self.accepted += 1
            volume = r.json()
            shape = volume["shape"]
            assert len(shape) == 3 and min(shape) >= 2
            assert self.client.get(f"/api/volumes/{volume['id']}").status_code == 200
            s = self.client.get(f"/api/volumes/{volume['id']}/slices/2/{shape[2] // 2}.png")
            assert s.status_code == 200 and s.content.startswith(b"\x89PNG"), s.text
            return
        self.refused += 1
        assert 400 <= r.status_code < 500, r.text
        detail = r.json()["detail"]
        assert isinstance(detail, str) and detail
        assert workspace_snapshot(self.root, size_and_mtime) == before, (
            f"a refused upload ({r.status_code}: {detail}) changed the workspace"
        )


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz") / "ws"
    with TestClient(create_app(Settings(workspace=root, demo=False))) as client:
        project = client.post("/api/projects", json={"name": "fuzz", "labels": LABELS}).json()
        target = Target(client, root, project["id"])
        yield target
    print(f"\nfuzzed uploads: {target.accepted} accepted and read back, {target.refused} refused with a 4xx")


def mutations(size: int, header: int = 352):
    """Up to 12 byte overwrites (half of them aimed at the first `header` bytes) and maybe a truncation."""
    position = st.one_of(st.integers(0, min(header, size) - 1), st.integers(0, size - 1))
    return st.tuples(
        st.lists(st.tuples(position, st.integers(0, 255)), min_size=1, max_size=12),
        st.one_of(st.none(), st.integers(0, size)),
    )


def mutate(data: bytes, mutation) -> bytes:
    edits, cut = mutation
    out = bytearray(data)
    for position, value in edits:
        out[position] = value
    return bytes(out if cut is None else out[:cut])


def test_the_unmutated_inputs_are_accepted(target):
    target.check("plain.nii", NIFTI, must_accept=True)
    target.check("plain.nii.gz", NIFTI_GZ, must_accept=True)


@FUZZ
@given(mutation=mutations(len(NIFTI)))
def test_fuzz_nii(target, mutation):
    target.check("fuzz.nii", mutate(NIFTI, mutation))


@FUZZ
@given(mutation=mutations(len(NIFTI)))
def test_fuzz_nii_inside_gzip(target, mutation):
    target.check("fuzz.nii.gz", gzip.compress(mutate(NIFTI, mutation), mtime=0))


@FUZZ
@given(mutation=mutations(len(NIFTI_GZ), header=64))
def test_fuzz_gzip_stream(target, mutation):
    target.check("fuzz.nii.gz", mutate(NIFTI_GZ, mutation))


# ------------------------------------------------------------------ DICOM


def series_files() -> list[tuple[str, bytes]]:
    if not SERIES.is_dir():
        return []
    # six consecutive slices: still a 3D series, and each accepted import fsyncs 6 files, not 32
    files = sorted(SERIES.iterdir(), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)[:6]
    return [(f"series/{p.name}", p.read_bytes()) for p in files]


FILES = series_files()
needs_series = pytest.mark.skipif(
    not FILES, reason=f"shared DICOM series not found at {SERIES} (../shared/data absent)"
)


def zip_of(members: list[tuple[str, bytes]], compression=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data, compress_type=compression)
    return buffer.getvalue()


ZIP = zip_of(FILES, zipfile.ZIP_DEFLATED) if FILES else b""
FILE_SIZE = min((len(d) for _, d in FILES), default=1)


@needs_series
def test_the_unmutated_series_is_accepted(target):
    target.check("plain.zip", ZIP, must_accept=True)


@needs_series
@FUZZ
@given(
    which=st.lists(st.integers(0, max(len(FILES) - 1, 0)), min_size=1, max_size=3, unique=True),
    mutation=mutations(FILE_SIZE, header=1024),
)
def test_fuzz_dicom_files_inside_the_zip(target, which, mutation):
    members = [(name, mutate(data, mutation) if n in which else data) for n, (name, data) in enumerate(FILES)]
    target.check("fuzz.zip", zip_of(members))


@needs_series
@FUZZ
@given(mutation=mutations(max(len(ZIP), 1), header=256))
def test_fuzz_zip_bytes(target, mutation):
    target.check("fuzz.zip", mutate(ZIP, mutation))
