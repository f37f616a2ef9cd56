"""Time and peak memory of the local contrastive loss modes (stride / block / exact).

    python -m bench.loss_modes            # prints the table, writes docs/benchmarks/loss_modes.md
    python -m bench.loss_modes --quick    # 64x64 only, no file written

Every case runs in a fresh subprocess (``--case``) so that its peak memory is its
own: the reported figure is ``ru_maxrss`` after forward+backward minus the
resident set size just before the first forward (inputs already built).  It
therefore includes everything the loss allocates, the gradients of the two
embedding tensors included, and nothing else.

Inputs: batch 4, C = 128 embeddings for both views (requires_grad), two
foreground classes in an off-centre ellipse (~15 % of the pixels, like the
hippocampus' anterior/posterior), no IGNORE pixel (the largest pixel set).
``dense`` is a plain vectorised implementation that builds the anchors x N
similarity matrix, for comparison (64x64 only; at 160x160 it would need the
memory listed in the second table).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import ROOT, commit, cpu_model

B, C, TEMP = 4, 128, 0.1


def make_inputs(size: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    e1 = torch.randn(B, C, size, size, generator=g)
    e2 = e1 + 0.3 * torch.randn(B, C, size, size, generator=g)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = torch.zeros(B, size, size, dtype=torch.long)
    for b in range(B):
        cy, cx = (torch.rand(2, generator=g) * 0.2 + 0.4) * size
        ry, rx = size * 0.30, size * 0.16
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        labels[b][inside] = 1
        labels[b][inside & (yy > cy)] = 2
    return e1.requires_grad_(), e2.requires_grad_(), labels


def dense_local(emb1, emb2, labels, temperature=TEMP):
    """Vectorised reference: materialises the (anchors x N) similarity matrix."""
    import torch
    import torch.nn.functional as F

    c = emb1.shape[1]
    z = torch.cat([emb1.permute(0, 2, 3, 1), emb2.permute(0, 2, 3, 1)]).reshape(-1, c)
    z = F.normalize(z, dim=1)
    lab = torch.cat([labels, labels]).reshape(-1)
    keep = lab != 255
    z, lab = z[keep], lab[keep]
    anchors = (lab > 0).nonzero(as_tuple=True)[0]
    sim = z[anchors] @ z.t() / temperature
    self_mask = torch.zeros_like(sim, dtype=torch.bool)
    self_mask[torch.arange(len(anchors)), anchors] = True
    logp = sim.masked_fill(self_mask, float("-inf"))
    logp = (logp - torch.logsumexp(logp, dim=1, keepdim=True)).masked_fill(self_mask, 0.0)
    pos = (lab[anchors][:, None] == lab[None, :]) & ~self_mask
    npos = pos.sum(1)
    ok = npos > 0
    per = -(logp * pos).sum(1)[ok] / npos[ok]
    return per.mean()


def pair_counts(mode: str, labels, stride: int = 4, block: int = 16) -> tuple[int, int, int]:
    """(pixels in the set(s), anchors, anchor-key similarities scored) for a mode."""
    lab = labels.clone()
    if mode == "stride":
        lab = lab[:, ::stride, ::stride]
    if mode != "block":
        n, a = 2 * lab.numel(), 2 * int((lab > 0).sum())
        return n, a, a * n
    n = a = pairs = 0
    for y0 in range(0, lab.shape[1], block):
        for x0 in range(0, lab.shape[2], block):
            t = lab[:, y0 : y0 + block, x0 : x0 + block]
            at = 2 * int((t > 0).sum())
            if at:
                n, a, pairs = n + 2 * t.numel(), a + at, pairs + at * 2 * t.numel()
    return n, a, pairs


def run_case(mode: str, size: int, chunk: int, key_chunk: int, repeats: int) -> dict:
    import torch

    from model.losses import local_contrastive

    torch.set_num_threads(os.cpu_count() or 1)
    e1, e2, labels = make_inputs(size)
    fg = float((labels > 0).float().mean())
    n_set, n_anchor, n_pairs = pair_counts(mode, labels)

    def once(e1=e1, e2=e2, labels=labels):
        t0 = time.perf_counter()
        if mode == "dense":
            loss = dense_local(e1, e2, labels)
        else:
            loss = local_contrastive(e1, e2, labels, temperature=TEMP, mode=mode, chunk=chunk, key_chunk=key_chunk)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        e1.grad = e2.grad = None
        return loss.item(), t1 - t0, t2 - t1

    # warm the runtime (thread pools, BLAS buffers, autograd engine) on a tiny input so
    # one-time library start-up is not charged to the case
    w1, w2, wl = make_inputs(8)
    once(w1, w2, wl)
    del w1, w2, wl
    rss0 = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    runs = [once() for _ in range(repeats)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    fwd = statistics.median(r[1] for r in runs)
    bwd = statistics.median(r[2] for r in runs)
    return {
        "mode": mode,
        "size": size,
        "chunk": chunk,
        "key_chunk": key_chunk,
        "fg": fg,
        "n_set": n_set,
        "n_anchor": n_anchor,
        "n_pairs": n_pairs,
        "loss": runs[0][0],
        "fwd_s": fwd,
        "bwd_s": bwd,
        "repeats": repeats,
        "peak_mib": (peak - rss0) / 2**20,
        "input_mib": 2 * e1.numel() * e1.element_size() / 2**20,
    }


def cases(quick: bool):
    out = [
        ("stride", 64, 4096, 4096, 5),
        ("block", 64, 4096, 4096, 5),
        ("exact", 64, 4096, 4096, 3),
        ("exact", 64, 1024, 1024, 3),
        ("dense", 64, 0, 0, 2),
    ]
    if not quick:
        out += [
            ("stride", 160, 4096, 4096, 3),
            ("block", 160, 4096, 4096, 3),
            ("exact", 160, 4096, 4096, 1),
        ]
    return out


def machine() -> str:
    name = cpu_model()
    mem = ""
    try:
        kib = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")))
        mem = f", {kib / 2**20:.0f} GiB RAM"
    except Exception:  # noqa: BLE001
        pass
    return f"{name}, {os.cpu_count()} cores{mem}, no GPU"


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


def render(results: list[dict], cmd: str, load: tuple, wall: float) -> str:
    import torch

    lines = [
        "# Local contrastive loss: stride vs block vs exact",
        "",
        f"- machine: {machine()}",
        f"- torch {torch.__version__}, float32, {torch.get_num_threads()} threads",
        f"- commit: {commit()}",
        f"- date: {_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{cmd}` (wall time {wall:.0f} s)",
        f"- load average before / after: {load[0]:.2f} / {load[1]:.2f} "
        "(the machine is shared; times are indicative, memory is not affected)",
        f"- inputs: batch {B}, both views, C = {C}, t = {TEMP}, two foreground classes "
        "(~15 % of pixels), no IGNORE; stride s = 4, block 16x16",
        "- time: median over `rep` runs of forward and of backward; peak: `ru_maxrss` "
        "of a fresh process after the runs minus its resident size before the first "
        "forward (inputs built, runtime warmed on an 8x8 input). It includes the two embedding gradients (`emb MiB`).",
        "",
        "| mode | size | chunk x key_chunk | pixels in set(s) | anchors | similarities | fwd s | bwd s | fwd+bwd s "
        "| peak extra MiB | emb MiB | loss | rep |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ck = "-" if r["mode"] in ("dense",) else f"{r['chunk']} x {r['key_chunk']}"
        lines.append(
            f"| {r['mode']} | {r['size']}x{r['size']} | {ck} | {r['n_set']} | {r['n_anchor']} "
            f"| {r['n_pairs'] / 1e6:,.1f} M | {r['fwd_s']:.2f} "
            f"| {r['bwd_s']:.2f} | {r['fwd_s'] + r['bwd_s']:.2f} | {r['peak_mib']:.0f} "
            f"| {r['input_mib']:.0f} | {r['loss']:.4f} | {r['repeats']} |"
        )
    lines += [
        "",
        "`stride` and `block` compute a different (subsampled / tiled) loss, so their",
        "values differ from `exact`; `exact` and `dense` compute the same loss.",
        "`block` counts only tiles with foreground (the others are skipped);",
        "`similarities` is the number of anchor-key dot products per forward.",
        "",
        "## What a materialised similarity matrix would need (float32, one copy)",
        "",
        "Autograd keeps several such matrices alive (similarities, log-softmax, masks),",
        "so the real need of a naive implementation is a small multiple of these.",
        "",
        "| size | pixels N (both views, batch 4) | anchors A (~15 %) | N x N | A x N |",
        "|---|---|---|---|---|",
    ]
    sizes = sorted({r["size"] for r in results})
    for s in sizes:
        n = 2 * B * s * s
        a = next(r["n_anchor"] for r in results if r["size"] == s and r["mode"] == "exact")
        lines.append(f"| {s}x{s} | {n} | {a} | {gib(4 * n * n)} | {gib(4 * a * n)} |")
    dense = [r for r in results if r["mode"] == "dense"]
    big = [r for r in results if r["mode"] == "exact" and r["size"] == max(sizes)]
    if dense:
        r = dense[0]
        mult = r["peak_mib"] * 2**20 / (4 * r["n_pairs"])
        line = (
            f"Measured: `dense` at {r['size']}x{r['size']} peaked at {r['peak_mib']:.0f} MiB, "
            f"{mult:.1f}x its A x N matrix"
        )
        if big and big[0]["size"] != r["size"]:
            s_ = big[0]["size"]
            line += f"; at that ratio {s_}x{s_} would need about {mult * 4 * big[0]['n_pairs'] / 2**30:,.0f} GiB"
        lines += ["", line + "."]
    exact160 = [r for r in results if r["mode"] == "exact" and r["size"] == 160]
    if exact160:
        r = exact160[0]
        ok = "met" if r["peak_mib"] < 2048 else "MISSED"
        lines += [
            "",
            f"Target: `exact` at 160x160, batch 4, both views, peak under 2 GiB: "
            f"**{ok}** ({r['peak_mib']:.0f} MiB extra).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64x64 cases only; do not write the doc")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "loss_modes.md"))
    ap.add_argument("--case", nargs=5, metavar=("MODE", "SIZE", "CHUNK", "KEY_CHUNK", "REPEATS"))
    args = ap.parse_args()

    if args.case:
        mode, size, chunk, key_chunk, reps = args.case
        print(json.dumps(run_case(mode, int(size), int(chunk), int(key_chunk), int(reps))))
        return

    cmd = "python -m bench.loss_modes" + (" --quick" if args.quick else "")
    load0 = os.getloadavg()[0]
    start = time.perf_counter()
    results = []
    for mode, size, chunk, key_chunk, reps in cases(args.quick):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.loss_modes",
                "--case",
                mode,
                str(size),
                str(chunk),
                str(key_chunk),
                str(reps),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if proc.returncode != 0:
            raise SystemExit(f"case {mode} {size} failed:\n{proc.stderr}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        print(
            f"{mode:6s} {size:4d}  chunk {chunk}x{key_chunk}  fwd {r['fwd_s']:.2f}s  bwd {r['bwd_s']:.2f}s  "
            f"peak {r['peak_mib']:.0f} MiB  loss {r['loss']:.4f}",
            flush=True,
        )
    md = render(results, cmd, (load0, os.getloadavg()[0]), time.perf_counter() - start)
    print()
    print(md)
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(md)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
