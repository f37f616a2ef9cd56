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


def test_project_queue_fills_a_started_volume_before_starting_the_next():
    def volume(vid, painted, *slices):
        return {
            "volume_id": vid,
            "painted": painted,
            "slices": [{"axis": 0, "index": i, "score": sc} for i, sc in slices],
        }

    per_volume = [
        volume(1, 3, (5, 0.9), (6, 0.8)),
        volume(2, 0, (7, 0.2), (3, 0.1)),
        volume(3, 0, (1, 0.5)),
        volume(4, sg.FILL_TO + 1, (9, 0.99)),  # already filled: after every unpainted volume
        volume(5, 1, (2, 0.3)),  # started, fewer painted than volume 1
    ]
    queue = sg.project_queue(per_volume, limit=7)
    # round 1: started volumes (most painted first), unpainted ones (best score first), the filled one;
    # round 2: the second suggestions in the same order
    assert [(q["volume_id"], q["index"]) for q in queue] == [(1, 5), (5, 2), (3, 1), (2, 7), (4, 9), (1, 6), (2, 3)]
    assert [q["painted_in_volume"] for q in queue[:3]] == [3, 1, 0]
    assert sg.project_queue(per_volume, limit=2) == queue[:2]
    # with nothing painted anywhere the best first slice leads
    fresh = [volume(1, 0, (4, 0.1)), volume(2, 0, (8, 0.7))]
    assert [q["volume_id"] for q in sg.project_queue(fresh)] == [2, 1]


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
        # the started volume comes first, then the two unpainted ones, then the started one again
        assert queue[0]["volume_id"] == v0["id"] and queue[0]["method"] == "content+distance"
        assert queue[0]["painted_in_volume"] == 1
        assert {q["volume_id"] for q in queue[1:3]} == {volumes[1][0]["id"], volumes[2][0]["id"]}
        assert queue[3]["volume_id"] == v0["id"]
        assert client.get("/api/projects/999/suggestions").status_code == 404
        assert client.get(f"/api/projects/{project['id']}/suggestions?limit=0").status_code == 422
