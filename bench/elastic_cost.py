"""What elastic bending adds to a fine-tune step of the `cpu` preset, on this machine.

    python -m bench.elastic_cost [--steps 30] [--threads 1]

Builds one Trainer with `elastic` on and one with it off over the same painted hippocampus volumes, then
times their fine-tune steps (forward, backward, Adam) interleaved, so both see the same machine load.
Prints the median step time of each and their ratio. Run it again under
`ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2` to see a CPU without AVX-512.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time

import torch

from bench.common import SHARED_DATA, machine
from model.config import preset
from model.device import runtime_for
from model.train import Trainer, load_data

HIPPO = SHARED_DATA / "hippocampus"


def _trainer(images, labels, elastic: float, out: str) -> Trainer:
    cfg = preset("cpu", images=images, labels=labels, device="cpu", elastic=elastic, out_dir=out)
    return Trainer(cfg, load_data(cfg), runtime_for("cpu", "auto", "off", "off"))


def _step(trainer: Trainer, opt: torch.optim.Optimizer) -> float:
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = trainer.step(functools.partial(trainer.loss, "finetune"))
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--volumes", type=int, default=10, help="labelled hippocampus volumes (fully painted)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = sorted((HIPPO / "labelsTr").glob("hippocampus_*.nii.gz"))[: args.volumes]
    if not names:
        raise SystemExit(f"no hippocampus data at {HIPPO}")
    images = [str(HIPPO / "imagesTr" / n.name) for n in names]
    labels = [str(n) for n in names]
    out = tempfile.mkdtemp(prefix="elastic_cost_")  # load_data asks for one; nothing is written there
    trainers = {e: _trainer(images, labels, e, out) for e in (0.0, 0.05)}
    opts = {e: t.optimizer("finetune") for e, t in trainers.items()}
    times: dict[float, list[float]] = {e: [] for e in trainers}
    for i in range(args.steps + 3):
        for e in trainers:
            dt = _step(trainers[e], opts[e])
            if i >= 3:  # warm-up steps left out
                times[e].append(dt)
    off, on = (statistics.median(times[e]) for e in (0.0, 0.05))
    print(f"machine: {machine()}, torch {torch.__version__}, {args.threads} thread(s)")
    print(
        f"fine-tune step, median of {args.steps}: elastic off {off * 1000:.1f} ms, on {on * 1000:.1f} ms, ratio {on / off:.3f}"
    )


if __name__ == "__main__":
    main()
