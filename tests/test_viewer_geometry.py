"""The viewer's plane layout (viewer-geometry.js, run in node) against radiological convention, for permuted,
flipped and oblique affines: screen right/down point where they must, and every screen pixel maps to the
voxel and the flat np.take slice offset that the API stores."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess

import numpy as np
import pytest

from frontend.mount import STATIC_DIR

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None, reason="node is not installed: the layout is checked in the browser tests instead"
)
# world (RAS) direction of screen right and screen down per plane
SCREEN = {"axial": ([-1, 0, 0], [0, -1, 0]), "coronal": ([-1, 0, 0], [0, 0, -1]), "sagittal": ([0, -1, 0], [0, 0, -1])}
NORMAL = {"axial": 2, "coronal": 1, "sagittal": 0}


def affines() -> list[np.ndarray]:
    out = []
    angle = np.deg2rad(25)
    tilt = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    for perm in itertools.permutations(range(3)):
        for signs in ([1, 1, 1], [-1, 1, -1], [1, -1, 1]):
            a = np.eye(4)
            a[:3, :3] = np.eye(3)[:, perm] * signs * [0.7, 1.1, 4.0]
            out.append(a)
            b = a.copy()
            b[:3, :3] = tilt @ a[:3, :3]
            out.append(b)
    return out


def layouts(shape, affine) -> dict:
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).tolist()
    volume = {"shape": list(shape), "spacing": spacing, "affine": affine.tolist()}
    script = f"""
import * as g from {json.dumps((STATIC_DIR / "viewer-geometry.js").as_uri())};
const volume = {json.dumps(volume)};
const out = {{}};
for (const p of g.PLANES) {{
  const l = g.planeLayout(volume, p);
  const pixels = [];
  for (let sy = 0; sy < l.height; sy++) for (let sx = 0; sx < l.width; sx++)
    pixels.push([sx, sy, g.voxelAt(l, 1, sx, sy), g.sliceOffset(l, volume.shape, sx, sy)]);
  out[p] = {{ layout: l, pixels }};
}}
process.stdout.write(JSON.stringify(out));
"""
    result = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_planes_follow_radiological_convention_for_any_voxel_order():
    shape = (5, 6, 7)
    for affine in affines():
        got = layouts(shape, affine)
        dirs = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
        assert sorted(got[p]["layout"]["axis"] for p in got) == [0, 1, 2]
        for plane, (right, down) in SCREEN.items():
            lay = got[plane]["layout"]
            x_dir = dirs[:, lay["xAxis"]] * (-1 if lay["flipX"] else 1)
            y_dir = dirs[:, lay["yAxis"]] * (-1 if lay["flipY"] else 1)
            assert x_dir @ right > 0.5 and y_dir @ down > 0.5, (plane, affine)
            assert abs(dirs[:, lay["axis"]][NORMAL[plane]]) > 0.5
            assert (lay["width"], lay["height"]) == (shape[lay["xAxis"]], shape[lay["yAxis"]])
            assert lay["pixelWidth"] == pytest.approx(np.linalg.norm(affine[:3, lay["xAxis"]]))
            for sx, sy, ijk, offset in got[plane]["pixels"]:  # noqa: B007
                assert ijk[lay["axis"]] == 1
                rows_axis, cols_axis = [a for a in range(3) if a != lay["axis"]]
                assert offset == ijk[rows_axis] * shape[cols_axis] + ijk[cols_axis]
            # every slice pixel is shown exactly once
            assert len({o for *_, o in got[plane]["pixels"]}) == lay["width"] * lay["height"]


def test_orientation_letters_name_the_patient_sides():
    affine = np.diag([-1.0, 1.0, 4.0, 1.0])  # voxel i runs to the patient's Left
    got = layouts((4, 5, 3), affine)
    letters = {p: got[p]["layout"]["letters"] for p in got}
    assert letters["axial"] == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert letters["coronal"] == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
    assert letters["sagittal"] == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    assert got["axial"]["layout"]["flipX"] is False  # already runs to the Left: no flip needed
