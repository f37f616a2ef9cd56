"""Masks made elsewhere become painted slices (NIfTI, NRRD, Slicer .seg.nrrd, DICOM-SEG); painted slices leave as an
nnU-Net dataset; the label map leaves as an ITK-SNAP label file; DICOM-SEG segments carry SNOMED CT concepts."""

from __future__ import annotations

import gzip
import io
import json
import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import SHARED_DATA, SHARED_DATA_MISSING, oblique_affine

from data.dicom_seg import write_mask_dicom_seg
from data.itk_image import image_like
from data.slicer_seg import write_seg_nrrd
from data.volume import IGNORE
from helpers_bad_input import assert_refused, make_api, zip_bytes

OBLIQUE = SHARED_DATA / "dicom" / "study3_t1_post_contrast"
LABELS = [{"value": 1, "name": "liver", "color": "#e6194b"}, {"value": 3, "name": "tumor", "color": "#3cb44b"}]
SHAPE = (12, 14, 10)


def nifti_bytes(array, affine) -> bytes:
    image = nib.Nifti1Image(np.asarray(array), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return image.to_bytes()


@pytest.fixture
def api(tmp_path):
    api = make_api(tmp_path)
    client = api.client
    project = client.post("/api/projects", json={"name": "liver study", "labels": LABELS}).json()
    api.project_id = project["id"]
    volume = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    r = client.post(
        f"/api/projects/{project['id']}/volumes", files={"file": ("scan.nii", nifti_bytes(volume, oblique_affine()))}
    )
    assert r.status_code == 201, r.text
    api.volume_id = r.json()["id"]
    yield api
    client.__exit__(None, None, None)


def imported(api, name: str, data: bytes, axis: int = 2, volume_id=None):
    volume_id = api.volume_id if volume_id is None else volume_id
    return api.client.post(
        f"/api/volumes/{volume_id}/annotations/import?axis={axis}&author=ana", files={"file": (name, data)}
    )


def two_slice_mask() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[2:6, 3:9, 4] = 1
    mask[5:8, 5:7, 7] = 3
    mask[0, 0, 7] = 1
    return mask


def test_nifti_mask_becomes_painted_slices_with_versions_and_author(api):
    mask = two_slice_mask()
    r = imported(api, "mask.nii", nifti_bytes(mask, oblique_affine()))
    assert r.status_code == 200, r.text
    assert r.json()["slices"] == [4, 7]
    rows = api.client.get(f"/api/volumes/{api.volume_id}/annotations").json()
    assert [(row["axis"], row["index"], row["version"], row["author"]) for row in rows] == [
        (2, 4, 1, "ana"),
        (2, 7, 1, "ana"),
    ]
    labels = api.client.app.state.workspace.label_volume(api.volume_id)
    assert np.array_equal(labels[:, :, [4, 7]], mask[:, :, [4, 7]])
    assert (labels[:, :, [0, 1, 2, 3, 5, 6, 8, 9]] == IGNORE).all()

    again = imported(api, "mask.nii", nifti_bytes(mask, oblique_affine()))
    assert [row["version"] for row in again.json()["annotations"]] == [2, 2]

    along_axis_0 = imported(api, "mask.nii", nifti_bytes(mask, oblique_affine()), axis=0)
    assert along_axis_0.json()["slices"] == [0, 2, 3, 4, 5, 6, 7]


def test_nrrd_mask_and_cropped_slicer_segmentation_land_on_the_right_voxels(api, tmp_path):
    mask = two_slice_mask()
    path = tmp_path / "mask.nrrd"
    sitk.WriteImage(image_like(mask, oblique_affine()), str(path))
    r = imported(api, "mask.nrrd", path.read_bytes())
    assert r.status_code == 200, r.text
    assert np.array_equal(api.client.app.state.workspace.label_volume(api.volume_id)[:, :, [4, 7]], mask[:, :, [4, 7]])

    # a .seg.nrrd cropped to its segments' extent, with the segments' names in another order of values
    crop = mask[2:8, 3:9, 4:8]
    origin = oblique_affine() @ [2, 3, 4, 1]
    affine = oblique_affine().copy()
    affine[:3, 3] = origin[:3]
    swapped = [{"value": 1, "name": "Tumor", "color": "#00ff00"}, {"value": 3, "name": "liver", "color": "#ff0000"}]
    in_file = np.select([crop == 1, crop == 3], [3, 1], 0).astype(np.uint8)
    from data.volume import Volume

    write_seg_nrrd(in_file, Volume(np.zeros(crop.shape), affine, "nifti"), swapped, tmp_path / "crop.seg.nrrd")
    r = imported(api, "crop.seg.nrrd", (tmp_path / "crop.seg.nrrd").read_bytes())
    assert r.status_code == 200, r.text
    labels = api.client.app.state.workspace.label_volume(api.volume_id)
    expected = mask.copy()
    expected[0, 0, 7] = 0  # outside the crop: background in the imported slice
    assert np.array_equal(labels[:, :, [4, 7]], expected[:, :, [4, 7]])


def test_multi_layer_slicer_segmentation(api, tmp_path):
    layers = np.zeros(SHAPE + (2,), dtype=np.uint8)
    layers[1:4, 1:4, 3, 0] = 1  # liver on layer 0
    layers[2:5, 2:5, 3, 1] = 1  # tumor on layer 1 overlaps it
    image = sitk.GetImageFromArray(np.ascontiguousarray(layers.transpose(2, 1, 0, 3)), isVector=True)
    reference = image_like(np.zeros(SHAPE, np.uint8), oblique_affine())
    image.CopyInformation(reference)
    for number, (name, layer) in enumerate([("liver", 0), ("tumor", 1)]):
        image.SetMetaData(f"Segment{number}_Name", name)
        image.SetMetaData(f"Segment{number}_LabelValue", "1")
        image.SetMetaData(f"Segment{number}_Layer", str(layer))
    sitk.WriteImage(image, str(tmp_path / "layers.seg.nrrd"))
    r = imported(api, "layers.seg.nrrd", (tmp_path / "layers.seg.nrrd").read_bytes())
    assert r.status_code == 200, r.text
    slice_3 = api.client.app.state.workspace.label_volume(api.volume_id)[:, :, 3]
    assert slice_3[1, 1] == 1 and slice_3[3, 3] == 3 and slice_3[4, 4] == 3 and slice_3[0, 0] == 0


def dicom_zip() -> bytes:
    if not OBLIQUE.is_dir():
        pytest.skip(SHARED_DATA_MISSING)
    return zip_bytes({p.name: p.read_bytes() for p in sorted(OBLIQUE.iterdir())})


def test_dicom_seg_round_trip_onto_the_oblique_series_with_coded_concepts(api, tmp_path):
    r = api.client.post(f"/api/projects/{api.project_id}/volumes", files={"file": ("t1.zip", dicom_zip())})
    assert r.status_code == 201, r.text
    volume_id = r.json()["id"]
    volume = api.client.app.state.workspace.load_volume(volume_id)
    mask = np.zeros(volume.shape, dtype=np.uint8)
    mask[100:150, 120:160, 5] = 1
    mask[130:140, 140:150, 11] = 3
    labels = LABELS + [{"value": 2, "name": "anterior", "color": "#0000ff"}]
    mask[10:20, 10:20, 11] = 2
    seg_path = write_mask_dicom_seg(mask, volume, tmp_path / "seg.dcm", labels=labels)

    seg = pydicom.dcmread(seg_path)
    concepts = {
        s.SegmentLabel: (
            s.SegmentedPropertyCategoryCodeSequence[0].CodeValue,
            s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
        )
        for s in seg.SegmentSequence
    }
    assert concepts == {
        "liver": ("91723000", "10200004"),
        "anterior": ("85756007", "85756007"),
        "tumor": ("49755003", "108369006"),
    }
    assert all(s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT" for s in seg.SegmentSequence)

    # "anterior" is not a label of this project: refused, nothing saved
    assert_refused(
        api,
        lambda: imported(api, "seg.dcm", seg_path.read_bytes(), volume_id=volume_id),
        422,
        "anterior",
        "matches no label",
    )
    mask[mask == 2] = 0
    seg_path = write_mask_dicom_seg(mask, volume, tmp_path / "seg2.dcm", labels=LABELS)
    r = imported(api, "seg.dcm", seg_path.read_bytes(), volume_id=volume_id)
    assert r.status_code == 200, r.text
    assert r.json()["slices"] == [5, 11]
    assert np.array_equal(api.client.app.state.workspace.label_volume(volume_id)[:, :, [5, 11]], mask[:, :, [5, 11]])

    # the same series as NRRD on the DICOM grid
    path = tmp_path / "m.nrrd"
    sitk.WriteImage(image_like(mask, volume.affine), str(path))
    r = imported(api, "m.nrrd", path.read_bytes(), volume_id=volume_id)
    assert r.status_code == 200 and r.json()["slices"] == [5, 11], r.text


def test_hostile_mask_imports_are_refused_and_change_nothing(api, tmp_path):
    mask = two_slice_mask()
    shifted = oblique_affine() @ np.diag([1, 1, 1.5, 1])
    half_voxel = oblique_affine().copy()
    half_voxel[:3, 3] += oblique_affine()[:3, 0] * 0.5
    bad_value = mask.copy()
    bad_value[1, 1, 1] = 7
    too_big = np.zeros((13, 14, 10), np.uint8)
    too_big[0, 0, 0] = 1
    path = tmp_path / "x.nrrd"
    sitk.WriteImage(image_like(mask, oblique_affine()), str(path))
    nrrd = path.read_bytes()
    header = b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 12 14 10\nencoding: raw\ndata file: /etc/hostname\n\n"
    cases = [
        (lambda: imported(api, "m.nii", nifti_bytes(mask, shifted)), 422, ["geometry"]),
        (lambda: imported(api, "m.nii", nifti_bytes(mask, half_voxel)), 422, ["grid"]),
        (lambda: imported(api, "m.nii", nifti_bytes(bad_value, oblique_affine())), 422, ["[7]", "label map"]),
        (lambda: imported(api, "m.nii", nifti_bytes(too_big, oblique_affine())), 422, ["outside"]),
        (
            lambda: imported(api, "m.nii", nifti_bytes(np.zeros(SHAPE, np.uint8), oblique_affine())),
            422,
            ["no labelled voxel"],
        ),
        (
            lambda: imported(api, "m.nii", nifti_bytes(mask.astype(np.float32) + 0.5, oblique_affine())),
            422,
            ["whole-number"],
        ),
        (lambda: imported(api, "m.nii", nifti_bytes(mask, oblique_affine()), axis=5), 422, ["axis"]),
        (lambda: imported(api, "m.png", b"\x89PNG\r\n\x1a\n"), 422, ["must be nifti"]),
        (lambda: imported(api, "m.nhdr", header), 422, ["must be nifti"]),
        (lambda: imported(api, "m.nrrd", header), 422, ["separate data file"]),
        (lambda: imported(api, "m.nrrd", nrrd[:-40]), 422, ["m.nrrd"]),
        (lambda: imported(api, "seg.dcm", b"DICM" * 40), 422, ["dicom-seg"]),
        (lambda: imported(api, "m.nii", nifti_bytes(mask, oblique_affine()), volume_id=999), 404, ["999"]),
        (
            lambda: api.client.post(
                f"/api/volumes/{api.volume_id}/annotations/import",
                content=b"x",
                headers={"content-type": "application/json"},
            ),
            422,
            ["multipart"],
        ),
        (lambda: api.client.get(f"/api/volumes/{api.volume_id}/prediction.seg.nrrd"), 404, ["no trained model"]),
        (lambda: api.client.get("/api/volumes/999/prediction.seg.nrrd"), 404, ["999"]),
    ]
    for request, status, words in cases:
        assert_refused(api, request, status, *words)


def test_itksnap_label_description(api):
    r = api.client.get(f"/api/projects/{api.project_id}/exports/itksnap_labels.txt")
    assert r.status_code == 200
    rows = [line.split() for line in r.text.splitlines() if not line.startswith("#")]
    assert rows[0][:7] == ["0", "0", "0", "0", "0.00", "0", "0"]
    assert rows[1] == ["1", "230", "25", "75", "1.00", "1", "1", '"liver"']
    assert rows[2] == ["3", "60", "180", "75", "1.00", "1", "1", '"tumor"']
    assert api.client.get("/api/projects/999/exports/itksnap_labels.txt").status_code == 404


def test_nnunet_dataset_of_the_painted_slices(api):
    mask = two_slice_mask()
    assert imported(api, "mask.nii", nifti_bytes(mask, oblique_affine())).status_code == 200
    r = api.client.get(f"/api/projects/{api.project_id}/exports/nnunet.zip")
    assert r.status_code == 200, r.text
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    case = f"case_{api.volume_id:04d}"
    assert sorted(archive.namelist()) == ["dataset.json", f"imagesTr/{case}_0000.nii.gz", f"labelsTr/{case}.nii.gz"]
    dataset = json.loads(archive.read("dataset.json"))
    assert dataset["labels"] == {"background": 0, "liver": 1, "tumor": 2, "ignore": 3}
    assert dataset["numTraining"] == 1 and dataset["file_ending"] == ".nii.gz"
    image = nib.Nifti1Image.from_bytes(gzip.decompress(archive.read(f"imagesTr/{case}_0000.nii.gz")))
    label = nib.Nifti1Image.from_bytes(gzip.decompress(archive.read(f"labelsTr/{case}.nii.gz")))
    assert np.allclose(image.affine, oblique_affine(), atol=1e-5) and np.allclose(label.affine, image.affine)
    values = np.asanyarray(label.dataobj)
    assert values.shape == SHAPE
    expected = np.full(SHAPE, 3, np.uint8)
    expected[:, :, [4, 7]] = np.select([mask == 1, mask == 3], [1, 2], 0)[:, :, [4, 7]]
    assert np.array_equal(values, expected)
    stored = api.client.app.state.workspace.volume_array(api.volume_id)
    assert np.array_equal(np.asanyarray(image.dataobj), stored)
    # nothing left behind in the workspace's tmp folder once the download is done
    assert not [p for p in (api.root / "tmp").iterdir() if p.name.startswith(".export-")]
    # the other project has its own volume but no painted slice
    assert_refused(api, lambda: api.client.get("/api/projects/1/exports/nnunet.zip"), 404, "no painted slice")


def test_ui_handler_imports_a_mask_and_reports_refusals(api, tmp_path):
    import httpx

    from frontend import handlers
    from frontend.client import ApiClient

    class ThroughTestClient(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            answer = api.client.request(
                request.method, str(request.url), headers=dict(request.headers), content=request.read()
            )
            return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    client = ApiClient("http://testserver", transport=ThroughTestClient())
    state = {"project_id": api.project_id, "volume_id": api.volume_id}
    good = tmp_path / "liver.nii"
    good.write_bytes(nifti_bytes(two_slice_mask(), oblique_affine()))
    message = handlers.import_mask(client, state, str(good)).extra["mask_message"]
    assert "slices 4, 7 on axis 2" in message and "sw-ok" in message
    assert [(a["index"], a["version"]) for a in api.client.get(f"/api/volumes/{api.volume_id}/annotations").json()] == [
        (4, 1),
        (7, 1),
    ]

    wrong_grid = tmp_path / "other.nii"
    wrong_grid.write_bytes(nifti_bytes(two_slice_mask(), np.eye(4)))
    refused = handlers.import_mask(client, state, str(wrong_grid)).extra["mask_message"]
    assert "Import refused" in refused and "grid" in refused and "sw-error" in refused
    assert (
        "Pick a volume"
        in handlers.import_mask(client, {"project_id": 1, "volume_id": None}, str(good)).extra["mask_message"]
    )
    assert "not a .nii" in handlers.import_mask(client, state, str(tmp_path / "x.png")).extra["mask_message"]
    assert [a["version"] for a in api.client.get(f"/api/volumes/{api.volume_id}/annotations").json()] == [1, 1]
