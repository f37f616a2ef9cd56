"""Losses of the slicewise method (docs/method.md), as pure functions of tensors.

* :func:`nt_xent` -- SimCLR NT-Xent, the global (stage 1) loss.
* :func:`local_contrastive` -- the supervised local contrastive loss of
  Hu et al. 2021 (stage 2), in three modes: ``stride``, ``block`` and ``exact``.
* :func:`ce_dice` -- cross-entropy + soft Dice for fine-tuning (stage 3).
* :func:`confident_ce` -- the FixMatch-style consistency term on unpainted
  slices: cross-entropy of a strongly augmented view against the confident
  predictions on its weakly augmented twin.

Every loss skips pixels labelled :data:`IGNORE` (255, "not annotated")
entirely, and every loss returns a scalar that carries a gradient even when
there is nothing to learn from (``0 * input.sum()``), so a training loop never
has to special-case an empty batch.

How the exact local loss stays in O(N x chunk) memory
-----------------------------------------------------
For an anchor i of class c, with n_c non-IGNORE pixels of class c in the
pixel set (both views, whole batch), the loss term of docs/method.md is

    l_i = -1/|P(i)| sum_{p in P(i)} s_ip/t  +  LSE_{a != i}(s_ia/t),
    |P(i)| = n_c - 1,   s_ij = z_i . z_j.

The positive term is linear in the z_p, so it equals
``z_i . (S_c - z_i) / (t (n_c - 1))`` with ``S_c`` the sum of the class-c
embeddings: O(N C) memory.  Only the log-sum-exp over the denominator needs
pairs; :class:`_ExclusiveLSE` computes it flash-attention style, one
``chunk x key_chunk`` tile of similarities at a time with an online
(running-max) log-sum-exp, and its backward recomputes the tiles from the
saved per-anchor LSE instead of storing any similarity matrix.  Peak extra
memory is therefore ``O(N C + chunk * key_chunk)`` in forward *and* backward,
never O(N^2).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from data.volume import IGNORE

__all__ = ["IGNORE", "nt_xent", "local_contrastive", "ce_dice"]


def _zero_with_grad(*tensors: torch.Tensor) -> torch.Tensor:
    """A scalar 0 connected to the graph of ``tensors`` (so ``.backward()`` works)."""
    out = tensors[0].sum() * 0.0
    for t in tensors[1:]:
        out = out + t.sum() * 0.0
    return out


# --------------------------------------------------------------------------- #
# NT-Xent (SimCLR)
# --------------------------------------------------------------------------- #
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR NT-Xent loss over the 2B projections of two views.

    ``z1[k]`` and ``z2[k]`` (shape ``(B, D)``) are the two views of sample k.
    Projections are L2-normalised here.  For each of the 2B projections the
    positive is its twin and the negatives are the other 2B - 2 projections::

        l_i = -log( exp(s_i,twin / t) / sum_{a != i} exp(s_ia / t) )

    and the loss is the mean over all 2B (the ``lightly`` ``NTXentLoss``
    without memory bank).
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (B, D); got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    b = z1.shape[0]
    if b < 1:
        raise ValueError("nt_xent needs at least one pair")
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    logits = z @ z.t() / temperature
    eye = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    idx = torch.arange(b, device=z.device)
    targets = torch.cat([idx + b, idx])
    return F.cross_entropy(logits, targets)


# --------------------------------------------------------------------------- #
# Streaming exclusive log-sum-exp:  lse_i = log sum_{a != self(i)} exp(q_i . k_a / t)
# --------------------------------------------------------------------------- #
def _mask_self(logits, self_idx, k0):
    """Set each anchor's own column (``self_idx``, global key index) of a tile to -inf."""
    rel = self_idx - k0
    rows = ((rel >= 0) & (rel < logits.shape[1])).nonzero(as_tuple=True)[0]
    if rows.numel():
        logits[rows, rel[rows]] = float("-inf")
    return logits


class _ExclusiveLSE(torch.autograd.Function):
    """Chunked, memory-bounded ``logsumexp_{a != self_idx[i]} (q_i . k_a) * inv_t``.

    q: (A, C) anchors, k: (N, C) keys, self_idx: (A,) long, the column of k that
    is anchor i itself (excluded), or -1 for none.  Returns (A,).

    Forward: online log-sum-exp over ``chunk x key_chunk`` tiles (running max,
    rescaled running sum).  Backward: with the saved lse the softmax of a tile
    is ``exp(logits - lse)``, recomputed tile by tile; ``d lse_i/d q_i =
    inv_t sum_a P_ia k_a`` and ``d lse_i/d k_a = inv_t P_ia q_i``.  Nothing of
    size A x N is ever stored.
    """

    @staticmethod
    def forward(ctx, q, k, self_idx, inv_t, chunk, key_chunk):
        a_n, n = q.shape[0], k.shape[0]
        out = q.new_empty(a_n)
        with torch.no_grad():
            for a0 in range(0, a_n, chunk):
                qc, sc = q[a0 : a0 + chunk] * inv_t, self_idx[a0 : a0 + chunk]
                m = q.new_full((qc.shape[0],), float("-inf"))
                s = q.new_zeros(qc.shape[0])
                for k0 in range(0, n, key_chunk):
                    logits = _mask_self(qc @ k[k0 : k0 + key_chunk].t(), sc, k0)
                    m_new = torch.maximum(m, logits.amax(dim=1))
                    # a row whose entries so far are all -inf keeps m = -inf: shift by 0 there
                    shift = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
                    s = s * torch.exp(m - shift) + logits.sub_(shift[:, None]).exp_().sum(dim=1)
                    m = m_new
                    del logits
                shift = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
                out[a0 : a0 + chunk] = torch.log(s) + shift
        ctx.save_for_backward(q, k, self_idx, out)
        ctx.inv_t, ctx.chunk, ctx.key_chunk = inv_t, chunk, key_chunk
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, self_idx, lse = ctx.saved_tensors
        inv_t, chunk, key_chunk = ctx.inv_t, ctx.chunk, ctx.key_chunk
        need_q, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_q = torch.zeros_like(q) if need_q else None
        grad_k = torch.zeros_like(k) if need_k else None
        a_n, n = q.shape[0], k.shape[0]
        for a0 in range(0, a_n, chunk):
            sl = slice(a0, a0 + chunk)
            qs, sc = q[sl] * inv_t, self_idx[sl]
            # an anchor with no key at all has lse = -inf and gets no gradient
            g = torch.where(torch.isfinite(lse[sl]), grad_out[sl] * inv_t, torch.zeros_like(lse[sl]))
            neg_lse = torch.where(torch.isfinite(lse[sl]), -lse[sl], torch.zeros_like(lse[sl]))[:, None]
            gq = q[sl] * g[:, None] if need_k else None
            for k0 in range(0, n, key_chunk):
                kc = k[k0 : k0 + key_chunk]
                p = _mask_self(torch.addmm(neg_lse, qs, kc.t()), sc, k0).exp_()  # softmax tile
                if need_q:
                    grad_q[sl] += (p @ kc).mul_(g[:, None])
                if need_k:
                    grad_k[k0 : k0 + key_chunk] += p.t() @ gq
                del p
        return grad_q, grad_k, None, None, None, None


def exclusive_lse(q, k, self_idx, temperature, chunk=4096, key_chunk=4096):
    """``lse_i = log sum_{a != self_idx[i]} exp(q_i . k_a / temperature)``, chunked."""
    return _ExclusiveLSE.apply(q, k, self_idx, 1.0 / temperature, int(chunk), int(key_chunk))


# --------------------------------------------------------------------------- #
# Supervised local contrastive loss
# --------------------------------------------------------------------------- #
def _supcon_sum(z, lab, temperature, chunk, key_chunk):
    """Sum of the per-anchor losses and the anchor count over one pixel set.

    z: (n, C) unit embeddings of the non-IGNORE pixels, lab: (n,) their labels
    (0 = background, >0 foreground).  Anchors: foreground pixels whose class has
    at least one other pixel in the set.
    """
    n = z.shape[0]
    if n < 2:
        return None, 0
    classes, inv = torch.unique(lab, return_inverse=True)
    counts = torch.bincount(inv, minlength=classes.numel())
    is_anchor = (lab > 0) & (counts[inv] >= 2)
    anchor_idx = is_anchor.nonzero(as_tuple=True)[0]
    n_anchor = int(anchor_idx.numel())
    if n_anchor == 0:
        return None, 0
    za = z[anchor_idx]
    ia = inv[anchor_idx]
    # positive term: sum_{p in P(i)} z_i . z_p = z_i . (S_c - z_i)
    class_sum = z.new_zeros(classes.numel(), z.shape[1]).index_add(0, inv, z)
    pos = ((za * class_sum[ia]).sum(1) - (za * za).sum(1)) / (counts[ia] - 1).to(z.dtype)
    lse = exclusive_lse(za, z, anchor_idx, temperature, chunk, key_chunk)
    loss_sum = (lse - pos / temperature).sum()
    return loss_sum, n_anchor


def _pixels(emb1, emb2, labels):
    """(2*B*H*W, C) unit embeddings of both views and their (2*B*H*W,) labels."""
    c = emb1.shape[1]
    # channels-last copy in one go, then per-pixel L2 normalisation
    z = torch.cat([emb1.permute(0, 2, 3, 1), emb2.permute(0, 2, 3, 1)], dim=0).reshape(-1, c)
    z = F.normalize(z, dim=1)
    lab = torch.cat([labels, labels], dim=0).reshape(-1)
    return z, lab


def local_contrastive(
    emb1: torch.Tensor,
    emb2: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    mode: Literal["stride", "block", "exact"] = "stride",
    stride: int = 4,
    block: int = 16,
    chunk: int = 4096,
    key_chunk: int = 4096,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """Supervised local (pixel-wise) contrastive loss of docs/method.md, stage 2.

    emb1, emb2: (B, C, H, W) per-pixel embeddings of two intensity-only views
    of the same slices (pixel aligned); they are L2-normalised per pixel here
    (idempotent when they already are).  labels: (B, H, W) integer, shared by
    both views; ``ignore_index`` pixels take no part at all.

    Over the pixel set (both views, whole batch, IGNORE removed) every
    foreground pixel i (label > 0) is an anchor, its positives P(i) are all
    *other* pixels with the same label, and the denominator runs over all
    other pixels, background included::

        L = mean_i  -1/|P(i)| sum_{p in P(i)} log( exp(s_ip/t) / sum_{a != i} exp(s_ia/t) )

    Anchors without positives are skipped.  With no anchor at all the result is
    a zero that still has a gradient.

    Modes (how the pixel pairs are bounded):

    * ``"stride"``: keep pixels ``[::stride, ::stride]`` and apply the formula
      to that set.
    * ``"block"``: cut H x W into ``block x block`` tiles (the last row/column
      of tiles is smaller when ``block`` does not divide the size); pairs are
      formed only among the pixels of one tile position across the batch and
      both views.  Tiles without an anchor are skipped.  The result is the
      mean over *all anchors of all tiles* (not a mean of per-tile means), so
      every anchor weighs the same whatever its tile holds.
    * ``"exact"``: all pixels.  Computed without any N x N matrix: positives in
      closed form, denominators by a streaming log-sum-exp over
      ``chunk x key_chunk`` tiles with a recomputing backward, so peak memory
      is O(N C + chunk * key_chunk).

    ``chunk`` (anchors per tile) and ``key_chunk`` (keys per tile) bound the
    similarity tiles in every mode; they change memory and speed, not the value.
    """
    if emb1.shape != emb2.shape or emb1.dim() != 4:
        raise ValueError(f"emb1 and emb2 must both be (B, C, H, W); got {tuple(emb1.shape)} and {tuple(emb2.shape)}")
    b, _, h, w = emb1.shape
    if tuple(labels.shape) != (b, h, w):
        raise ValueError(f"labels must be (B, H, W) = {(b, h, w)}; got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor; got {labels.dtype}")
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    if chunk < 1 or key_chunk < 1:
        raise ValueError("chunk and key_chunk must be >= 1")
    labels = labels.to(device=emb1.device, dtype=torch.long)

    if mode == "stride":
        if stride < 1:
            raise ValueError("stride must be >= 1")
        emb1, emb2 = emb1[:, :, ::stride, ::stride], emb2[:, :, ::stride, ::stride]
        sub = labels[:, ::stride, ::stride]
        z, lab = _pixels(emb1, emb2, sub)
        keep = lab != ignore_index
        total, count = _supcon_sum(z[keep], lab[keep], temperature, chunk, key_chunk)
    elif mode == "exact":
        z, lab = _pixels(emb1, emb2, labels)
        keep = lab != ignore_index
        total, count = _supcon_sum(z[keep], lab[keep], temperature, chunk, key_chunk)
    elif mode == "block":
        if block < 1:
            raise ValueError("block must be >= 1")
        z, lab = _pixels(emb1, emb2, labels)  # pixel order: (view*batch, y, x)
        ys = torch.arange(h, device=lab.device) // block
        xs = torch.arange(w, device=lab.device) // block
        n_tx = (w + block - 1) // block
        tile_of = (ys[:, None] * n_tx + xs[None, :]).reshape(-1).repeat(2 * b)
        keep = lab != ignore_index
        # one gather into tile order, then contiguous per-tile views (torch.split's
        # backward is a single concatenation, not one full-size gradient per tile)
        kept = keep.nonzero(as_tuple=True)[0]
        order = kept[torch.argsort(tile_of[kept], stable=True)]
        sizes = torch.bincount(tile_of[order], minlength=int(tile_of.max()) + 1)
        has_fg = torch.zeros_like(sizes).index_add_(0, tile_of[order], (lab[order] > 0).long()) > 0
        z_tiles = torch.split(z[order], sizes.tolist())
        lab_tiles = torch.split(lab[order], sizes.tolist())
        total, count = None, 0
        for t in has_fg.nonzero(as_tuple=True)[0].tolist():  # tiles without foreground skipped
            s, c = _supcon_sum(z_tiles[t], lab_tiles[t], temperature, chunk, key_chunk)
            if c:
                total = s if total is None else total + s
                count += c
    else:
        raise ValueError(f"mode must be 'stride', 'block' or 'exact'; got {mode!r}")

    if count == 0:
        return _zero_with_grad(emb1, emb2)
    return total / count


# --------------------------------------------------------------------------- #
# Cross-entropy + soft Dice
# --------------------------------------------------------------------------- #
def ce_dice(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE,
    num_classes: int | None = None,
    dice_weight: float = 1.0,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """Cross-entropy + soft Dice over the annotated (non-IGNORE) pixels.

    logits: (B, K, *spatial) raw scores (2D or 3D); labels: (B, *spatial)
    integers in 0..K-1 or ``ignore_index``.

    * CE: mean over non-IGNORE pixels.
    * Dice: batch soft Dice (sums over batch and space, non-IGNORE pixels
      only) of the softmax probabilities for each *foreground* class 1..K-1,
      ``(2 sum p y + smooth) / (sum p + sum y + smooth)``; the Dice term is
      ``1 - mean over foreground classes``.  A class absent from both the
      target and the prediction scores ~1 (no NaN); absent from the target
      but predicted, it scores ~0 and its probability mass is pushed down.
    * loss = CE + ``dice_weight`` * Dice term.  With K = 1 there is no
      foreground and the Dice term is 0.

    No annotated pixel at all -> a zero that still has a gradient.
    """
    if logits.dim() < 3:
        raise ValueError(f"logits must be (B, K, *spatial); got {tuple(logits.shape)}")
    k = logits.shape[1]
    if num_classes is not None and num_classes != k:
        raise ValueError(f"logits have {k} channels but num_classes={num_classes}")
    if labels.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"labels must be {tuple(logits.shape[:1] + logits.shape[2:])}; got {tuple(labels.shape)}")
    labels = labels.to(device=logits.device, dtype=torch.long)
    valid = labels != ignore_index
    if not bool(valid.any()):
        return _zero_with_grad(logits)
    bad = valid & ((labels < 0) | (labels >= k))
    if bool(bad.any()):
        found = torch.unique(labels[bad]).tolist()
        raise ValueError(f"labels {found} outside 0..{k - 1} (and not ignore_index={ignore_index})")

    ce = F.cross_entropy(logits, labels, ignore_index=ignore_index)
    if k < 2 or dice_weight == 0:
        return ce
    probs = torch.softmax(logits, dim=1).movedim(1, -1)[valid]  # (n, K)
    onehot = F.one_hot(labels[valid], k).to(probs.dtype)  # (n, K)
    p, y = probs[:, 1:], onehot[:, 1:]
    inter = (p * y).sum(0)
    denom = p.sum(0) + y.sum(0)
    dice = (2 * inter + smooth) / (denom + smooth)
    return ce + dice_weight * (1 - dice.mean())


def confident_ce(student_logits: torch.Tensor, teacher_probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """FixMatch's unlabelled loss, per pixel: where the teacher's largest probability is at least
    ``threshold``, cross-entropy of the student against the teacher's argmax; elsewhere 0.

    student_logits: (B, K, *spatial) raw scores; teacher_probs: the same shape, softmax probabilities
    (no gradient flows into them). The mean runs over **all** pixels, confident or not, as in FixMatch,
    so the term weighs itself by how much of the batch the teacher is sure of.
    """
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_probs.shape)} differ")
    conf, target = teacher_probs.detach().max(dim=1)
    keep = conf >= threshold
    if not bool(keep.any()):
        return _zero_with_grad(student_logits)
    ce = F.cross_entropy(student_logits, target, reduction="none")
    return (ce * keep).sum() / keep.numel()
