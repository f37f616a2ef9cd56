"""Paired augmentation keeps image and label aligned; intensity-only views keep pixels in place."""

import math

import torch

from model.augment import elastic_displacement, random_intensity, random_spatial, spatial_params, warp
from model.config import TrainConfig

IGNORE = 255


def blobs(n=6, size=48):
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        y, x = torch.randint(8, size - 16, (2,), generator=g).tolist()
        labels[i, y : y + 10, x : x + 6] = 1
        labels[i, y + 3 : y + 6, x + 1 : x + 4] = 2
    return labels


def test_label_derived_from_the_image_stays_consistent():
    labels = blobs()
    images = labels[:, None].float() * 10.0  # the image *is* its label, scaled
    out_img, out_lab = random_spatial(
        images, labels, g=torch.Generator().manual_seed(3), rotate_deg=20, scale_range=(0.8, 1.2), rot90=True
    )
    inside = out_lab != IGNORE
    derived = torch.round(out_img[:, 0] / 10.0).long()
    agree = (derived[inside] == out_lab[inside]).float().mean()
    assert agree > 0.97  # bilinear vs nearest differ only on a thin rim of boundary pixels
    # foreground actually moved with the image (not left in place)
    assert (out_lab == 1).sum() > 0 and not torch.equal(out_lab, labels)


def test_pure_flips_and_quarter_turns_are_exact_permutations():
    labels = blobs(8)
    images = labels[:, None].float() * 10.0
    theta = spatial_params(
        8, torch.Generator().manual_seed(5), flip=True, rot90=True, rotate_deg=0, scale_range=(1, 1), shift=0
    )
    out_img, out_lab = warp(theta, images, labels)
    torch.testing.assert_close(out_img[:, 0], out_lab.float() * 10.0, atol=1e-4, rtol=0)
    for i in range(8):
        candidates = [torch.rot90(labels[i], k, (0, 1)) for k in range(4)]
        candidates += [torch.flip(c, (0,)) for c in candidates]
        assert any(torch.equal(out_lab[i], c) for c in candidates)


def test_same_seed_same_draw():
    x = torch.randn(4, 1, 32, 32)
    a, _ = random_spatial(x, g=torch.Generator().manual_seed(9))
    b, _ = random_spatial(x, g=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, x)


def test_outside_the_slice_is_ignore():
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    theta = torch.tensor([[[math.cos(0.5), -math.sin(0.5), 0.0], [math.sin(0.5), math.cos(0.5), 0.0]]]) / 0.7
    _, out = warp(theta, labels=labels)
    assert (out == IGNORE).any() and (out == 0).any() and set(out.unique().tolist()) <= {0, IGNORE}


def test_intensity_views_keep_every_pixel_in_place():
    x = torch.randn(5, 1, 40, 40)
    g = torch.Generator().manual_seed(1)
    v1 = random_intensity(x, g=g, noise=0.0, blur_prob=0.0)
    v2 = random_intensity(x, g=g, noise=0.0, blur_prob=0.0)
    assert not torch.allclose(v1, v2)
    # monotone per-sample transforms: the ordering of pixels inside each slice is unchanged
    order = x.flatten(1).argsort(dim=1)
    for v in (v1, v2):
        along = v.flatten(1).gather(1, order)
        assert (along.diff(dim=1) >= -1e-5).all()
    full = random_intensity(x, g=g)
    assert full.shape == x.shape and torch.isfinite(full).all()


def test_without_elastic_the_draws_are_the_affine_ones():
    """elastic=0 draws nothing more, so runs from before the option repeat exactly."""
    x = torch.randn(4, 1, 32, 32)
    a, _ = random_spatial(x, g=torch.Generator().manual_seed(9), elastic=0.0)
    b, _ = warp(spatial_params(4, torch.Generator().manual_seed(9)), x)
    torch.testing.assert_close(a, b)


def test_a_constant_displacement_is_a_shift():
    """Naive reference: a field that moves every pixel by d samples like the affine with translation d."""
    x = torch.randn(3, 2, 32, 32)
    labels = blobs(3, 32)
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).repeat(3, 1, 1)
    d = torch.tensor([0.25, -0.125])  # exactly 4 and -2 pixels: (x, y) in half-image units
    shifted = identity.clone()
    shifted[:, :, 2] = d
    img_a, lab_a = warp(identity, x, labels, displacement=d.expand(3, 32, 32, 2))
    img_b, lab_b = warp(shifted, x, labels)
    torch.testing.assert_close(img_a, img_b)
    assert torch.equal(lab_a, lab_b)


def test_elastic_field_is_smooth_and_of_the_asked_size():
    g = torch.Generator().manual_seed(2)
    field = elastic_displacement(64, (48, 48), g, magnitude=0.1, control_points=5)
    assert field.shape == (64, 48, 48, 2)
    corners = field[:, [0, 0, -1, -1], [0, -1, 0, -1]]  # the corner knots are kept exactly
    assert 0.08 < corners.std().item() < 0.12
    # neighbouring pixels move almost alike: knots 12 pixels apart make a step about 1/8 of the mean
    step = (field[:, 1:] - field[:, :-1]).abs().mean()
    assert step < 0.25 * field.abs().mean()  # pixel noise would step about 1.1x its mean


def test_elastic_warp_keeps_image_and_label_together():
    labels = blobs()
    images = labels[:, None].float() * 10.0
    out_img, out_lab = random_spatial(images, labels, g=torch.Generator().manual_seed(4), elastic=0.05)
    plain_img, _ = random_spatial(images, labels, g=torch.Generator().manual_seed(4))
    inside = out_lab != IGNORE
    derived = torch.round(out_img[:, 0] / 10.0).long()
    assert (derived[inside] == out_lab[inside]).float().mean() > 0.97
    assert not torch.allclose(out_img, plain_img)  # the field moved the pixels beyond the affine


def test_the_config_hands_its_spatial_settings_to_the_augmentation():
    cfg = TrainConfig(elastic=0.05, rotate_deg=30.0, scale_range=(0.7, 1.4))
    later = dict(flip=True, rot90=False, rotate_deg=30.0, scale_range=(0.7, 1.4), elastic=0.05)
    for stage in ("local", "finetune", "pseudo"):
        assert cfg.spatial_augment(stage) == later
    assert cfg.spatial_augment("global") == {**later, "elastic": 0.0}  # the global stage's views never bend
    assert "elastic" not in TrainConfig.fields_shaping_global()
    random_spatial(torch.randn(2, 1, 16, 16), g=torch.Generator().manual_seed(0), **cfg.spatial_augment("pseudo"))
