"""Training as ranks of a torch.distributed group: two gloo processes on 127.0.0.1 (model/distributed.py).

A DDP step leaves on each rank the mean of the gradients the two ranks' batches give single-process,
and one optimizer step later both ranks hold the same weights; the whole training loop run as two
ranks trains one model, written by rank 0 alone, with losses and step counts the same on both ranks.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers_retrain import synthetic_nifti
from helpers_server import free_port
from model import distributed
from model.config import preset
from model.losses import ce_dice
from model.unet import UNet

WORLD = 2


def join_group(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)


def batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(2, 1, 16, 16, generator=g), torch.randint(0, 3, (2, 16, 16), generator=g)


def grads_of(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    net.zero_grad(set_to_none=True)
    ce_dice(net(x), y, num_classes=3).backward()
    return [p.grad.clone() for p in net.parameters()]


def ddp_step(rank: int, port: int, folder: str) -> None:
    join_group(rank, port)
    try:
        torch.manual_seed(0)
        net = UNet(1, 3, (4, 8))
        # the reference, single-process: each rank's batch on its own copy of the same start weights
        single = [grads_of(copy.deepcopy(net), *batch(r)) for r in range(WORLD)]
        step = distributed.wrap([net], torch.device("cpu"))
        assert isinstance(step, torch.nn.parallel.DistributedDataParallel)
        x, y = batch(rank)
        loss = step(lambda: ce_dice(net(x), y, num_classes=3))
        loss.backward()
        torch.optim.Adam(net.parameters(), lr=1e-2).step()
        torch.save(
            {
                "grads": [p.grad.clone() for p in net.parameters()],
                "single": single,
                "weights": [p.detach().clone() for p in net.parameters()],
                "seed": distributed.sampling_seed(7),
                "loss_mean": distributed.mean(float(rank)),
                "agreed": distributed.agree(10 + rank),
            },
            Path(folder) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_ddp_step_averages_the_gradients_of_the_ranks(tmp_path):
    mp.spawn(ddp_step, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    single = ranks[0]["single"]
    expected = [(a + b) / 2 for a, b in zip(*single)]
    for r, got in enumerate(ranks):
        assert len(got["grads"]) == len(expected)
        for g, e in zip(got["grads"], expected):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
        # the ranks' batches really differ: the mean is not either rank's own gradient
        assert any(not torch.allclose(g, own, atol=1e-6) for g, own in zip(got["grads"], single[r]))
    for a, b in zip(ranks[0]["weights"], ranks[1]["weights"]):
        assert torch.equal(a, b)
    assert ranks[0]["seed"] == 7 and ranks[1]["seed"] != 7
    assert [r["loss_mean"] for r in ranks] == [0.5, 0.5]
    assert [r["agreed"] for r in ranks] == [10, 10]


def test_without_a_group_everything_is_single_process():
    net = UNet(1, 3, (4, 8))
    step = distributed.wrap([net, None], torch.device("cpu"))
    assert not isinstance(step, torch.nn.parallel.DistributedDataParallel)
    assert step(lambda: torch.tensor(3.0)).item() == 3.0
    assert distributed.describe() is None and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.sampling_seed(5) == 5 and distributed.agree(None) is None and distributed.mean(2.5) == 2.5


def train_rank(rank: int, port: int, folder: str, config: dict) -> None:
    from model.train import train

    join_group(rank, port)
    try:
        metrics = train(preset("quick", **config, out_dir=str(Path(folder) / f"out{rank}")))
        (Path(folder) / f"metrics{rank}.json").write_text(json.dumps(metrics))
        # as model/ray_ddp.py does: a rank that tears the group down while the other still talks to it can
        # abort that one ("terminate called without an active exception", seen once under heavy load)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_the_training_loop_as_two_ranks_trains_one_model(tmp_path):
    image, label = synthetic_nifti(tmp_path / "image.nii.gz")
    sparse = np.full_like(label, 255)
    sparse[[4, 7]] = label[[4, 7]]
    nib.save(nib.Nifti1Image(sparse, nib.load(image).affine), tmp_path / "label.nii.gz")
    config = dict(
        images=[str(image)],
        labels=[str(tmp_path / "label.nii.gz")],
        widths=[4, 8],
        max_size=16,
        patch_size=None,
        device="cpu",
        threads=1,
        global_steps=2,
        local_steps=2,
        finetune_epochs=2,
        finetune_steps=3,
        pseudo_stage=True,
        pseudo_steps=2,
        budget_s=60.0,  # the budget's plan is rank 0's on both ranks
        cleanup="off",
    )
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(train_rank, args=(free_port(), str(tmp_path), config), nprocs=WORLD, join=True)

    main, other = (json.loads((tmp_path / f"metrics{r}.json").read_text()) for r in range(WORLD))
    assert main["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert set(main["stages"]) == {"global", "local", "finetune", "pseudo"}
    for stage, m in main["stages"].items():
        assert m["steps_run"] == other["stages"][stage]["steps_run"] > 0, stage
        assert m["final_loss"] == other["stages"][stage]["final_loss"], stage
    for name in ("model.pt", "checkpoint.pt", "global.pt", "metrics.json", "progress.jsonl"):
        assert (tmp_path / "out0" / name).is_file(), name
    assert not any((tmp_path / "out1").iterdir())  # rank 1 wrote nothing
    events = [json.loads(line) for line in (tmp_path / "out0" / "progress.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "done"
