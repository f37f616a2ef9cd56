"""Losses against naive loop-over-pixels references on tiny float64 inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.losses import IGNORE, ce_dice, local_contrastive, nt_xent

DT = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


# --------------------------------------------------------------------------- #
# naive references (loops over pixels, scalar torch ops: differentiable)
# --------------------------------------------------------------------------- #
def naive_nt_xent(z1, z2, t):
    z = [F.normalize(v, dim=0) for v in list(z1) + list(z2)]
    n, b = len(z), z1.shape[0]
    total = 0.0
    for i in range(n):
        twin = (i + b) % n
        denom = sum(torch.exp(torch.dot(z[i], z[a]) / t) for a in range(n) if a != i)
        total = total - torch.log(torch.exp(torch.dot(z[i], z[twin]) / t) / denom)
    return total / n


def pixel_list(emb1, emb2, labels, ys=None, xs=None):
    """[(unit embedding, label)] of both views, whole batch, IGNORE dropped."""
    b, _, h, w = emb1.shape
    ys = range(h) if ys is None else ys
    xs = range(w) if xs is None else xs
    out = []
    for emb in (emb1, emb2):
        for bi in range(b):
            for y in ys:
                for x in xs:
                    lab = int(labels[bi, y, x])
                    if lab != IGNORE:
                        out.append((F.normalize(emb[bi, :, y, x], dim=0), lab))
    return out


def naive_supcon_terms(pix, t):
    """Per-anchor loss terms of the formula in docs/method.md over one pixel set."""
    terms = []
    for i, (zi, li) in enumerate(pix):
        if li == 0:
            continue
        positives = [p for p, (_, lp) in enumerate(pix) if p != i and lp == li]
        if not positives:
            continue
        denom = sum(torch.exp(torch.dot(zi, za) / t) for a, (za, _) in enumerate(pix) if a != i)
        s = 0.0
        for p in positives:
            s = s + torch.log(torch.exp(torch.dot(zi, pix[p][0]) / t) / denom)
        terms.append(-s / len(positives))
    return terms


def naive_local(emb1, emb2, labels, t, mode="exact", stride=4, block=16):
    b, _, h, w = emb1.shape
    if mode == "exact":
        terms = naive_supcon_terms(pixel_list(emb1, emb2, labels), t)
    elif mode == "stride":
        terms = naive_supcon_terms(pixel_list(emb1, emb2, labels, range(0, h, stride), range(0, w, stride)), t)
    elif mode == "block":
        terms = []
        for y0 in range(0, h, block):
            for x0 in range(0, w, block):
                pix = pixel_list(emb1, emb2, labels, range(y0, min(y0 + block, h)), range(x0, min(x0 + block, w)))
                terms += naive_supcon_terms(pix, t)
    if not terms:
        return None
    return sum(terms) / len(terms)


def naive_ce_dice(logits, labels, dice_weight=1.0, smooth=1e-5):
    b, k, h, w = logits.shape
    ce, n = 0.0, 0
    inter = [0.0] * k
    psum = [0.0] * k
    ysum = [0.0] * k
    for bi in range(b):
        for y in range(h):
            for x in range(w):
                lab = int(labels[bi, y, x])
                if lab == IGNORE:
                    continue
                v = logits[bi, :, y, x]
                m = max(float(u) for u in v)
                exps = [torch.exp(v[c] - m) for c in range(k)]
                z = sum(exps)
                ce = ce - torch.log(exps[lab] / z)
                n += 1
                for c in range(k):
                    p = exps[c] / z
                    psum[c] = psum[c] + p
                    if c == lab:
                        inter[c] = inter[c] + p
                        ysum[c] += 1
    if n == 0:
        return None
    dices = [(2 * inter[c] + smooth) / (psum[c] + ysum[c] + smooth) for c in range(1, k)]
    loss = ce / n
    if dices:
        loss = loss + dice_weight * (1 - sum(dices) / len(dices))
    return loss


# --------------------------------------------------------------------------- #
# fixtures
# --------------------------------------------------------------------------- #
def make_inputs(seed=0, b=2, c=4, h=6, w=6, n_classes=3, p_ignore=0.2, normalise=False):
    g = torch.Generator().manual_seed(seed)
    e1 = torch.randn(b, c, h, w, generator=g, dtype=DT)
    e2 = e1 + 0.5 * torch.randn(b, c, h, w, generator=g, dtype=DT)
    if normalise:
        e1, e2 = F.normalize(e1, dim=1), F.normalize(e2, dim=1)
    lab = torch.randint(0, n_classes, (b, h, w), generator=g)
    lab[torch.rand(b, h, w, generator=g) < p_ignore] = IGNORE
    return e1.requires_grad_(), e2.requires_grad_(), lab


def grads(loss, *xs):
    return torch.autograd.grad(loss, xs)


# --------------------------------------------------------------------------- #
# NT-Xent
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("b,d,t", [(1, 3, 0.5), (3, 5, 0.5), (4, 8, 0.2)])
def test_nt_xent_matches_naive(b, d, t):
    g = torch.Generator().manual_seed(b * 10 + d)
    z1 = torch.randn(b, d, generator=g, dtype=DT, requires_grad=True)
    z2 = torch.randn(b, d, generator=g, dtype=DT, requires_grad=True)
    ours, ref = nt_xent(z1, z2, t), naive_nt_xent(z1, z2, t)
    assert torch.allclose(ours, ref, atol=1e-10)
    for a, r in zip(grads(ours, z1, z2), grads(ref, z1, z2)):
        assert torch.allclose(a, r, atol=1e-10)


def test_nt_xent_pair_permutation_and_view_swap_invariant():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(5, 7, generator=g, dtype=DT), torch.randn(5, 7, generator=g, dtype=DT)
    perm = torch.randperm(5, generator=g)
    base = nt_xent(z1, z2)
    assert torch.allclose(base, nt_xent(z1[perm], z2[perm]))
    assert torch.allclose(base, nt_xent(z2, z1))
    # identical views of well-separated samples give a low loss; crossed pairs a high one
    e = torch.eye(5, dtype=DT) * 10
    assert nt_xent(e, e, 0.1) < 1e-3 < nt_xent(e, e[torch.tensor([1, 2, 3, 4, 0])], 0.1)


def test_nt_xent_rejects_bad_shapes():
    with pytest.raises(ValueError):
        nt_xent(torch.randn(3, 4), torch.randn(2, 4))


# --------------------------------------------------------------------------- #
# local contrastive: each mode against the naive reference
# --------------------------------------------------------------------------- #
MODES = [
    ("exact", {}),
    ("stride", {"stride": 2}),
    ("stride", {"stride": 4}),
    ("block", {"block": 3}),
    ("block", {"block": 4}),  # 6 is not a multiple of 4: smaller edge tiles
]


@pytest.mark.parametrize("mode,kw", MODES)
@pytest.mark.parametrize("seed,n_classes,p_ignore", [(0, 3, 0.2), (1, 2, 0.0), (2, 4, 0.5)])
def test_local_matches_naive_values_and_grads(mode, kw, seed, n_classes, p_ignore):
    e1, e2, lab = make_inputs(seed, n_classes=n_classes, p_ignore=p_ignore)
    ours = local_contrastive(e1, e2, lab, temperature=0.1, mode=mode, chunk=5, key_chunk=7, **kw)
    ref = naive_local(e1, e2, lab, 0.1, mode=mode, **kw)
    assert ref is not None
    assert torch.isfinite(ours)
    assert abs(float(ours) - float(ref)) < 1e-9
    for a, r in zip(grads(ours, e1, e2), grads(ref, e1, e2)):
        assert torch.allclose(a, r, atol=1e-9), (a - r).abs().max()


def test_exact_matches_naive_to_1e5_in_float32():
    e1, e2, lab = make_inputs(3, c=8, n_classes=3)
    e1 = e1.detach().float().requires_grad_()
    e2 = e2.detach().float().requires_grad_()
    ours = local_contrastive(e1, e2, lab, mode="exact", chunk=16, key_chunk=16)
    ref = naive_local(e1.double(), e2.double(), lab, 0.1)
    assert abs(float(ours) - float(ref)) < 1e-5


def test_exact_chunk_sizes_do_not_change_value_or_grad():
    e1, e2, lab = make_inputs(4, b=2, c=4, h=7, w=5, n_classes=4, p_ignore=0.1)
    ref = local_contrastive(e1, e2, lab, mode="exact", chunk=10**6, key_chunk=10**6)
    gref = grads(ref, e1, e2)
    for chunk, key_chunk in [(1, 1), (1, 1000), (3, 11), (64, 2), (4096, 8192)]:
        out = local_contrastive(e1, e2, lab, mode="exact", chunk=chunk, key_chunk=key_chunk)
        assert torch.allclose(out, ref, atol=1e-12)
        for a, r in zip(grads(out, e1, e2), gref):
            assert torch.allclose(a, r, atol=1e-12)


def test_exact_gradcheck():
    e1, e2, lab = make_inputs(5, b=1, c=3, h=3, w=4, n_classes=3, p_ignore=0.2)
    assert torch.autograd.gradcheck(
        lambda a, b: local_contrastive(a, b, lab, mode="exact", chunk=2, key_chunk=3), (e1, e2)
    )


def test_stride_and_block_one_equal_exact():
    e1, e2, lab = make_inputs(6)
    exact = local_contrastive(e1, e2, lab, mode="exact")
    assert torch.allclose(local_contrastive(e1, e2, lab, mode="stride", stride=1), exact, atol=1e-12)
    assert torch.allclose(local_contrastive(e1, e2, lab, mode="block", block=6), exact, atol=1e-12)
    assert torch.allclose(local_contrastive(e1, e2, lab, mode="block", block=100), exact, atol=1e-12)


def test_prenormalised_input_gives_same_value_and_grad():
    e1, e2, lab = make_inputs(7)
    n1 = F.normalize(e1, dim=1)
    n2 = F.normalize(e2, dim=1)
    a = local_contrastive(e1, e2, lab, mode="exact")
    b = local_contrastive(n1, n2, lab, mode="exact")
    assert torch.allclose(a, b, atol=1e-12)
    for x, y in zip(grads(a, e1, e2), grads(b, e1, e2)):
        assert torch.allclose(x, y, atol=1e-12)
    # scale invariance
    assert torch.allclose(local_contrastive(3 * e1, 0.5 * e2, lab, mode="exact"), a, atol=1e-12)


def test_local_permutation_invariances():
    e1, e2, lab = make_inputs(8, b=3, n_classes=4)
    base = local_contrastive(e1, e2, lab, mode="exact")
    # batch order
    perm = torch.tensor([2, 0, 1])
    assert torch.allclose(local_contrastive(e1[perm], e2[perm], lab[perm], mode="exact"), base, atol=1e-12)
    # swapping the views
    assert torch.allclose(local_contrastive(e2, e1, lab, mode="exact"), base, atol=1e-12)
    # renaming foreground classes
    ren = lab.clone()
    for old, new in [(1, 3), (2, 1), (3, 2)]:
        ren[lab == old] = new
    assert torch.allclose(local_contrastive(e1, e2, ren, mode="exact"), base, atol=1e-12)
    # the same spatial shuffle of pixels in every image and both views (exact mode ignores geometry)
    b, c, h, w = e1.shape
    sp = torch.randperm(h * w, generator=torch.Generator().manual_seed(0))
    sh = lambda x: x.reshape(*x.shape[:-2], h * w)[..., sp].reshape(x.shape)  # noqa: E731
    assert torch.allclose(local_contrastive(sh(e1), sh(e2), sh(lab), mode="exact"), base, atol=1e-12)
    # stride/block DO depend on geometry: different pixel sets
    assert not torch.allclose(
        local_contrastive(sh(e1), sh(e2), sh(lab), mode="block", block=3),
        local_contrastive(e1, e2, lab, mode="block", block=3),
    )


def test_ignore_pixels_take_no_part():
    """Changing the embedding of an IGNORE pixel changes neither the loss nor other gradients."""
    e1, e2, lab = make_inputs(9, p_ignore=0.3)
    ign = (lab == IGNORE).unsqueeze(1).expand_as(e1)
    for mode in ("exact", "stride", "block"):
        kw = {"stride": 2} if mode == "stride" else {"block": 3}
        a = local_contrastive(e1, e2, lab, mode=mode, **kw)
        noisy1 = torch.where(ign, torch.randn_like(e1) * 100, e1)
        b = local_contrastive(noisy1, e2, lab, mode=mode, **kw)
        assert torch.allclose(a, b, atol=1e-12)
        g1, g2 = grads(a, e1, e2)
        assert torch.all(g1[ign] == 0) and torch.all(g2[ign] == 0)


def test_background_is_negative_not_anchor():
    """Background pixels enter the denominator only: the loss depends on them, but an
    all-background batch has no anchor."""
    e1, e2, lab = make_inputs(10, n_classes=3, p_ignore=0.0)
    bg = (lab == 0).unsqueeze(1).expand_as(e1)
    a = local_contrastive(e1, e2, lab, mode="exact")
    b = local_contrastive(torch.where(bg, torch.randn_like(e1), e1), e2, lab, mode="exact")
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("mode", ["exact", "stride", "block"])
@pytest.mark.parametrize("case", ["all_ignore", "all_background", "bg_and_ignore", "single_fg_pixel_per_class"])
def test_no_anchor_gives_zero_with_grad(mode, case):
    e1, e2, _ = make_inputs(11)
    lab = torch.zeros(2, 6, 6, dtype=torch.long)
    if case == "all_ignore":
        lab[:] = IGNORE
    elif case == "bg_and_ignore":
        lab[:, :3] = IGNORE
    elif case == "single_fg_pixel_per_class":
        # one pixel of a class in one image: appears in both views -> it HAS a positive
        # (its twin).  Make it unique by ignoring everything else but a class-1 pixel...
        lab[:] = IGNORE
        lab[0, 1, 1] = 1  # its twin in the other view is its only positive
    out = local_contrastive(e1, e2, lab, mode=mode, stride=1, block=3)
    assert torch.isfinite(out)
    ref = naive_local(e1, e2, lab, 0.1, mode=mode, stride=1, block=3)
    if ref is None:
        assert float(out) == 0.0
    else:
        # a lone foreground pixel with nothing else: only its twin, both numerator and
        # denominator are that one pair, loss = 0
        assert abs(float(out) - float(ref)) < 1e-12
    g1, g2 = grads(out, e1, e2)
    assert torch.isfinite(g1).all() and torch.isfinite(g2).all()


def test_mixed_anchor_and_no_positive_classes():
    """A class with a single pixel in the set (stride picks it in one place) is skipped
    as anchor but still a negative for the others."""
    e1, e2, _ = make_inputs(12)
    lab = torch.full((2, 6, 6), IGNORE, dtype=torch.long)
    lab[0, 0, 0] = 1
    lab[0, 0, 1] = 2
    lab[1, 2, 2] = 2
    lab[1, 3, 3] = 0
    for mode in ("exact", "block"):
        out = local_contrastive(e1, e2, lab, mode=mode, block=2)
        ref = naive_local(e1, e2, lab, 0.1, mode=mode, block=2)
        assert abs(float(out) - float(ref)) < 1e-12


def test_block_averages_over_anchors_not_tiles():
    e1, e2, _ = make_inputs(13)
    lab = torch.zeros(2, 6, 6, dtype=torch.long)
    lab[:, :3, :3] = 1  # tile (0,0): 9 fg pixels per image
    lab[0, 3, 3] = 2  # tile (1,1): 1 fg pixel (x2 views -> 2 anchors)
    out = local_contrastive(e1, e2, lab, mode="block", block=3)
    terms = []
    for y0 in (0, 3):
        for x0 in (0, 3):
            terms.append(naive_supcon_terms(pixel_list(e1, e2, lab, range(y0, y0 + 3), range(x0, x0 + 3)), 0.1))
    per_anchor = sum(sum(t) for t in terms) / sum(len(t) for t in terms)
    per_tile = sum(sum(t) / len(t) for t in terms if t) / sum(1 for t in terms if t)
    assert abs(float(out) - float(per_anchor)) < 1e-12
    assert abs(float(out) - float(per_tile)) > 1e-6


def test_local_float32_large_temperature_range_is_finite():
    """Tiny temperatures overflow a naive exp; the streaming LSE must not."""
    e1, e2, lab = make_inputs(14, c=8, h=8, w=8)
    e1 = e1.detach().float().requires_grad_()
    e2 = e2.detach().float().requires_grad_()
    for t in (1.0, 0.1, 0.01, 0.001):
        out = local_contrastive(e1, e2, lab, temperature=t, mode="exact", chunk=7, key_chunk=5)
        assert torch.isfinite(out)
        g1, g2 = grads(out, e1, e2)
        assert torch.isfinite(g1).all() and torch.isfinite(g2).all()
    ref = local_contrastive(e1.double(), e2.double(), lab, temperature=0.01, mode="exact")
    out = local_contrastive(e1, e2, lab, temperature=0.01, mode="exact", chunk=7, key_chunk=5)
    assert abs(float(out) - float(ref)) < 1e-4 * max(1.0, abs(float(ref)))


def test_local_loss_decreases_when_classes_cluster():
    torch.manual_seed(0)
    lab = torch.randint(0, 3, (2, 6, 6))
    protos = F.normalize(torch.randn(3, 4, dtype=DT), dim=1)
    clustered = protos[lab].permute(0, 3, 1, 2)
    random = torch.randn(2, 4, 6, 6, dtype=DT)
    assert local_contrastive(clustered, clustered, lab, mode="exact") < local_contrastive(
        random, random, lab, mode="exact"
    )


def test_local_rejects_bad_input():
    e = torch.randn(2, 4, 6, 6)
    with pytest.raises(ValueError):
        local_contrastive(e, e, torch.zeros(2, 5, 6, dtype=torch.long))
    with pytest.raises(ValueError):
        local_contrastive(e, e[:1], torch.zeros(2, 6, 6, dtype=torch.long))
    with pytest.raises(ValueError):
        local_contrastive(e, e, torch.zeros(2, 6, 6), mode="exact")
    with pytest.raises(ValueError):
        local_contrastive(e, e, torch.zeros(2, 6, 6, dtype=torch.long), mode="dense")


# --------------------------------------------------------------------------- #
# CE + Dice
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("k,p_ignore,dice_weight", [(2, 0.0, 1.0), (3, 0.2, 1.0), (4, 0.5, 0.5), (3, 0.2, 0.0)])
def test_ce_dice_matches_naive(k, p_ignore, dice_weight):
    g = torch.Generator().manual_seed(k)
    logits = torch.randn(2, k, 5, 6, generator=g, dtype=DT, requires_grad=True)
    lab = torch.randint(0, k, (2, 5, 6), generator=g)
    lab[torch.rand(2, 5, 6, generator=g) < p_ignore] = IGNORE
    ours = ce_dice(logits, lab, dice_weight=dice_weight)
    ref = naive_ce_dice(logits, lab, dice_weight=dice_weight)
    assert abs(float(ours) - float(ref)) < 1e-10
    (ga,), (gr,) = grads(ours, logits), grads(ref, logits)
    assert torch.allclose(ga, gr, atol=1e-10)
    ign = (lab == IGNORE).unsqueeze(1).expand_as(logits)
    assert torch.all(ga[ign] == 0)


def test_ce_dice_absent_class_no_nan():
    logits = torch.zeros(1, 4, 4, 4, dtype=DT)
    logits[:, 3] = -30.0  # class 3 never predicted and never present
    logits.requires_grad_()
    lab = torch.randint(0, 3, (1, 4, 4))
    out = ce_dice(logits, lab)
    (g,) = grads(out, logits)
    assert torch.isfinite(out) and torch.isfinite(g).all()
    assert abs(float(out) - float(naive_ce_dice(logits, lab))) < 1e-10


def test_ce_dice_perfect_prediction_is_near_zero():
    lab = torch.randint(0, 3, (2, 6, 6))
    logits = (F.one_hot(lab, 3).permute(0, 3, 1, 2).to(DT) * 40).requires_grad_()
    assert float(ce_dice(logits, lab)) < 1e-6


def test_ce_dice_all_ignore_is_zero_with_grad():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = ce_dice(logits, torch.full((2, 4, 4), IGNORE))
    assert float(out) == 0.0
    out.backward()
    assert torch.all(logits.grad == 0)


def test_ce_dice_3d_and_single_class():
    logits = torch.randn(1, 3, 2, 3, 4, dtype=DT, requires_grad=True)
    lab = torch.randint(0, 3, (1, 2, 3, 4))
    flat = ce_dice(logits.reshape(1, 3, 6, 4), lab.reshape(1, 6, 4))
    assert torch.allclose(ce_dice(logits, lab), flat)
    one = torch.randn(1, 1, 3, 3, requires_grad=True)
    assert float(ce_dice(one, torch.zeros(1, 3, 3, dtype=torch.long))) == pytest.approx(0.0)


def test_ce_dice_rejects_bad_labels():
    logits = torch.randn(1, 3, 4, 4)
    lab = torch.zeros(1, 4, 4, dtype=torch.long)
    lab[0, 0, 0] = 5
    with pytest.raises(ValueError, match="outside"):
        ce_dice(logits, lab)
    with pytest.raises(ValueError):
        ce_dice(logits, lab[:, :3])
    with pytest.raises(ValueError):
        ce_dice(logits, torch.zeros(1, 4, 4, dtype=torch.long), num_classes=4)


def test_ignore_constant_matches_data_layer():
    from data.volume import IGNORE as DATA_IGNORE

    assert IGNORE == DATA_IGNORE == 255
