"""Suggestions before a model exists: image content near the painted structure, and one list across volumes."""

from __future__ import annotations

import numpy as np

from app import suggest as sg
from helpers_fake_trainer import fake_trainer_app, model_file, upload_synthetic  # noqa: F401 (model_file: a fixture)

RAW = {"Content-Type": "application/octet-stream"}


def blob_volume(n=30, start=10, stop=20, seed=0):
    """Noise with a bright textured block (the "structure") on slices start..stop-1 along axis 0."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 1, (n, 24, 24)).astype(np.float32)
    texture = rng.normal(0, 1, (8, 8)).astype(np.float32) * 3
    image[start:stop, 8:16, 8:16] += 6 + texture
    label = np.zeros(image.shape, np.uint8)
    label[start:stop, 9:15, 9:15] = 1
    return image, label


def test_content_scores_are_high_where_the_structure_continues():
    image, label = blob_volume()
    content = sg.content_scores(image, 0, {15: label[15]})
    inside, outside = content[10:20].mean(), np.r_[content[:8], content[22:]].mean()
    assert inside > 0.8 > 0.3 > outside


def test_content_needs_painted_foreground():
    image, label = blob_volume()
    assert sg.content_scores(image, 0, {2: label[2]}) is None  # painted, but background only
    assert sg.content_scores(image, 0, {}) is None


def test_first_suggestions_stay_inside_the_structure_once_a_slice_is_painted():
    image, label = blob_volume()
    content_of = lambda axis: sg.content_scores(image, axis, {15: label[15]})  # noqa: E731
    with_content = sg.suggest(image.shape, (1, 1, 1), [(0, 15)], None, axis=0, limit=3, content_of=content_of)
    by_distance = sg.suggest(image.shape, (1, 1, 1), [(0, 15)], None, axis=0, limit=3)
    assert with_content["method"] == "content+distance" and by_distance["method"] == "distance"
    assert by_distance["slices"][0]["index"] in (0, 29)  # the old behaviour: the end of the volume
    assert all(10 <= s["index"] < 20 for s in with_content["slices"][:2])
    assert with_content["slices"][0]["index"] in (10, 19)  # the far edge of the structure first


def test_content_is_not_asked_for_when_a_model_signal_exists():
    asked = []
    unc = {0: np.linspace(0, 1, 30)}
    out = sg.suggest((30, 24, 24), (1, 1, 1), [(0, 15)], unc, axis=0, content_of=lambda a: asked.append(a))
    assert asked == [] and out["method"] == "uncertainty+distance"


def test_project_queue_spreads_across_volumes_fewest_painted_first():
    per_volume = [
        {
            "volume_id": 1,
            "painted": 3,
            "slices": [{"axis": 0, "index": 5, "score": 0.9}, {"axis": 0, "index": 6, "score": 0.8}],
        },
        {
            "volume_id": 2,
            "painted": 0,
            "slices": [{"axis": 2, "index": 7, "score": 0.2}, {"axis": 2, "index": 3, "score": 0.1}],
        },
        {"volume_id": 3, "painted": 0, "slices": [{"axis": 0, "index": 1, "score": 0.5}]},
    ]
    queue = sg.project_queue(per_volume, limit=4)
    assert [(q["volume_id"], q["index"]) for q in queue] == [(3, 1), (2, 7), (1, 5), (2, 3)]
    assert queue[0]["painted_in_volume"] == 0
    assert sg.project_queue(per_volume, limit=2) == queue[:2]


def test_project_suggestions_over_http(tmp_path, model_file):
    with fake_trainer_app(tmp_path, model_file) as (client, app, project):
        volumes = [upload_synthetic(client, project, tmp_path / f"v{i}.nii.gz", seed=i) for i in range(3)]
        (v0, label0) = volumes[0]
        index = int(np.argmax((label0 > 0).sum(axis=(1, 2))))
        r = client.put(f"/api/volumes/{v0['id']}/annotations/0/{index}", content=label0[index].tobytes(), headers=RAW)
        assert r.status_code == 200, r.text
        one = client.get(f"/api/volumes/{v0['id']}/suggestions?axis=0&limit=3").json()
        assert one["method"] == "content+distance" and one["painted_slices"] == 1
        got = client.get(f"/api/projects/{project['id']}/suggestions?limit=4")
        assert got.status_code == 200, got.text
        queue = got.json()["slices"]
        assert len(queue) == 4
        # the two unpainted volumes come first, then the painted one, then the unpainted ones again
        assert {q["volume_id"] for q in queue[:2]} == {volumes[1][0]["id"], volumes[2][0]["id"]}
        assert queue[2]["volume_id"] == v0["id"] and queue[2]["method"] == "content+distance"
        assert client.get("/api/projects/999/suggestions").status_code == 404
        assert client.get(f"/api/projects/{project['id']}/suggestions?limit=0").status_code == 422
