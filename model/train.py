"""The training loop: `python -m model.train CONFIG.json`.

Stages run in order, each skippable by config: global (SimCLR on every slice) -> local (supervised
pixel contrast on the painted slices) -> finetune (CE + Dice on the painted pixels; with config `branch`
"cpc"/"recon" also the regularization branch of model/regularizer.py on painted and unpainted slices). One epoch is
`<stage>_steps` steps (or one pass over the stage's samples); with a `budget_s` each stage measures its
first steps and takes only as many as fit in its share of the budget (model/schedule.py), and steps see
`patch_size` crops (model/slices.sample_patches). After every epoch the whole state goes
to <out_dir>/checkpoint.pt atomically; started again with the same config, a killed run resumes
from there. Progress is one JSON object per line in <out_dir>/progress.jsonl, appended and flushed.
Final artefacts: model.pt (weights + config + slice geometry), config.json, metrics.json,
and global.pt (encoder after the label-free global stage, reusable via `init_from`).
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.atomic import atomic_write_bytes
from data.errors import InvalidInput, SlicewiseError
from data.io import read_volume
from model import checkpoint, distributed, slices
from model.augment import random_cutout, random_intensity, random_spatial
from model.config import GROWING_STAGES, RUNTIME_FIELDS, SEGMENTING_STAGES, STAGES, TrainConfig
from model.device import Runtime, autocast, prepare_input, prepare_model, runtime_for
from model.heads import GlobalHead, LocalHead
from model.inference import MIRROR_VIEWS, predict_array, softmax_sum
from model.losses import ce_dice, confident_ce, local_contrastive, nt_xent
from model.postprocess import decide_cleanup
from model.progress import FILE_NAME as PROGRESS_FILE
from model.progress import ProgressWriter, write_error
from model.pseudo_labels import paint_orders_classes, volume_pseudo_labels
from model.regularizer import make_branch
from model.schedule import Budget, lr_factor
from model.unet import UNet
from model.weight_average import WeightAverage

IGNORE = slices.IGNORE


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
@dataclass
class TrainData:
    slices: slices.SliceSet
    num_classes: int
    info: dict[str, Any]  # what inference needs to cut a new volume the same way
    val: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)


def _read(path: str, what: str) -> np.ndarray:
    if not Path(path).exists():
        raise InvalidInput(f"{what} {path} does not exist")
    return np.asarray(read_volume(path).array)


def load_data(cfg: TrainConfig) -> TrainData:
    """Read and validate every input; all bad-input errors are raised here, before any training.

    A run of the global stage alone may come with no labels at all (labels () or every one ""), or with
    nothing painted; label volumes that are given are still checked (shape, values in the label map)."""
    if not cfg.images and not cfg.unlabeled:
        raise InvalidInput("no training images given")
    if not cfg.out_dir:
        raise ValueError("out_dir is not set")
    # the global stage reads no label; every other stage (local, finetune, pseudo) learns from painted slices
    painted_needed = any(cfg.runs(s) for s in STAGES if s != "global")
    label_paths = list(cfg.labels) or [""] * len(cfg.images)
    images = [_read(p, "image") for p in cfg.images]
    labels = [(_read(p, "label volume") if p else None) for p in label_paths]
    names = [Path(p).name for p in cfg.images]
    num_classes = slices.check_labels(images, labels, names, cfg.num_classes, require_painted=painted_needed)
    labels = [None if lab is None else lab.astype(np.uint8) for lab in labels]
    images += [_read(p, "unlabeled image") for p in cfg.unlabeled]
    labels += [None] * len(cfg.unlabeled)
    axis = slices.choose_axis([lab for lab in labels if lab is not None], cfg.axis)
    multiple = 2**cfg.depth
    data = slices.build_slices(
        images,
        labels,
        axis,
        cfg.max_size,
        multiple,
        partial=cfg.partial_slices,
        context=cfg.context_slices,
        position=cfg.position_channel,
        far=cfg.context_far,
    )
    if painted_needed and len(data.labeled) == 0:
        what = "annotated pixel" if cfg.partial_slices else "fully painted slice"
        raise InvalidInput(f"no {what} along axis {axis}: paint whole slices along one axis")
    val = []
    for image_path, label_path in zip(cfg.val_images, cfg.val_labels):
        image, label = _read(image_path, "validation image"), _read(label_path, "validation label volume")
        slices.check_labels([image], [label], [Path(image_path).name], num_classes)
        val.append((Path(image_path).name, image, label))
    info = {
        "axis": axis,
        "size": data.size,
        "max_size": cfg.max_size,
        "multiple": multiple,
        "context": cfg.context_slices,
        "context_far": cfg.context_far,
        "position": cfg.position_channel,
        "normalisation": "per volume: clip to percentiles 0.5-99.5, then z-score",
    }
    return TrainData(data, num_classes, info, val)


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
def stage_plan(cfg: TrainConfig, data: slices.SliceSet, ranks: int = 1) -> list[tuple[str, int, int]]:
    """(stage, epochs, steps per epoch) of every enabled stage. A one-pass epoch is shared out among
    the `ranks` of a DDP run, each drawing its own batches. Fine-tune and self-training epochs grow with
    the painted slices (`paint_growth`)."""
    pools = {
        "global": len(data),
        "local": len(data.labeled),
        "finetune": len(data.labeled),
        "pseudo": len(data.labeled),
    }
    growth = cfg.paint_growth(len(data.labeled))
    plan = []
    for stage in STAGES:
        if cfg.runs(stage):
            schedule = cfg.schedule(stage)
            epochs = round(schedule.epochs * growth) if stage in GROWING_STAGES else schedule.epochs
            plan.append((stage, epochs, schedule.steps or math.ceil(pools[stage] / (schedule.batch * ranks))))
    return plan


def _batch(pool: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    return pool[torch.randint(0, len(pool), (n,), generator=g)]


def holds_paint(labels: torch.Tensor, idx: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Bool per slice of `idx`: it holds a painted pixel (where a slice painted along another axis crosses it);
    in chunks, so that no copy of every slice's labels is made."""
    return torch.cat(
        [(labels[c] != IGNORE).flatten(1).any(dim=1) for c in idx.split(chunk)] or [torch.zeros(0, dtype=torch.bool)]
    )


def scale_lr(opt: torch.optim.Optimizer, factor: float) -> float:
    """Set every group's learning rate to its stage's starting rate x factor -> the first group's new rate.

    The starting rate is kept in the group ("base_lr"), so it survives a checkpoint and a resume."""
    for group in opt.param_groups:
        group["lr"] = group.setdefault("base_lr", group["lr"]) * factor
    return opt.param_groups[0]["lr"]


ENCODER_PREFIXES = ("encoder.", "bottleneck.")  # the UNet's parameters the global stage pretrains


class Trainer:
    def __init__(self, cfg: TrainConfig, data: TrainData, runtime: Runtime):
        self.cfg, self.data, self.runtime = cfg, data, runtime
        torch.manual_seed(cfg.seed)
        self.g = torch.Generator().manual_seed(distributed.sampling_seed(cfg.seed))
        self.unet = UNet(cfg.in_channels, data.num_classes, cfg.widths, cfg.bottleneck, position=cfg.position_channel)
        self.global_head = GlobalHead(self.unet.bottleneck_channels, cfg.global_proj_dim)
        self.local_head = LocalHead(self.unet.feature_channels, cfg.local_proj_dim)
        # optional regularization branch of the fine-tune stage (config `branch`; None when "none")
        self.branch = make_branch(
            cfg.branch,
            self.unet.bottleneck_channels,
            cfg.depth,
            cfg.branch_dim,
            cfg.branch_steps_ahead,
            cfg.branch_temperature,
            image_channels=cfg.in_channels,
        )
        for m in (self.global_head, self.local_head, self.branch):
            if m is not None:
                m.to(runtime.device)
        self.net = prepare_model(self.unet, runtime)
        # `step(fn)` runs fn (a loss); under torch.distributed its backward averages the ranks' gradients
        self.step = distributed.wrap([self.unet, self.global_head, self.local_head, self.branch], runtime.device)
        unet = self.unet

        def encode(x):
            return unet.encode(unet.pad_input(x)[0])[1]

        self.encode = torch.compile(encode) if runtime.compile else encode
        self.pseudo: tuple[torch.Tensor, torch.Tensor] | None = None  # (slice indices, labels) of the pseudo stage
        self.consistency_seen: list[float] = []  # confident share of each consistency batch, per epoch
        self.spatial = cfg.spatial_augment("finetune")
        self.average = WeightAverage(self.unet, cfg.weight_average) if cfg.weight_average > 0 else None
        self.global_spatial = cfg.spatial_augment("global")

    def optimizer(self, stage: str) -> torch.optim.Optimizer:
        cfg = self.cfg
        if stage == "global":
            params = [p for n, p in self.unet.named_parameters() if n.startswith(ENCODER_PREFIXES)]
            params += list(self.global_head.parameters())
            return torch.optim.Adam(params, lr=cfg.global_lr, weight_decay=cfg.global_weight_decay)
        if stage == "local":
            params = [p for n, p in self.unet.named_parameters() if not n.startswith("seg_head.")]
            return torch.optim.Adam(
                params + list(self.local_head.parameters()), lr=cfg.local_lr, weight_decay=cfg.weight_decay
            )
        encoder = [p for n, p in self.unet.named_parameters() if n.startswith(ENCODER_PREFIXES)]
        params = [p for n, p in self.unet.named_parameters() if not n.startswith(ENCODER_PREFIXES)]
        params += list(self.branch.parameters()) if self.branch is not None else []
        if stage == "pseudo" and cfg.pseudo_contrastive_weight > 0:
            params += list(self.local_head.parameters())
        lr = cfg.pseudo_lr if stage == "pseudo" else cfg.finetune_lr
        if cfg.finetune_encoder_lr_scale == 1:
            return torch.optim.Adam(encoder + params, lr=lr, weight_decay=cfg.weight_decay)
        groups = [{"params": params, "lr": lr}, {"params": encoder, "lr": lr * cfg.finetune_encoder_lr_scale}]
        return torch.optim.Adam(groups, lr=lr, weight_decay=cfg.weight_decay)

    def _images(self, idx: torch.Tensor) -> torch.Tensor:
        # Augment where the network runs: on a GPU, warping and blurring a batch on one CPU thread
        # starved the H100 (docs/benchmarks/label_efficiency_full.md). Random draws stay on self.g (CPU).
        return self.data.slices.stack(idx).to(self.runtime.device, non_blocking=True).float()

    def _intensity(self, x: torch.Tensor) -> torch.Tensor:
        return self._on_image_channels(random_intensity, x) if self.cfg.intensity else x

    def _on_image_channels(self, augment, x: torch.Tensor) -> torch.Tensor:
        """augment(x, g=...) applied to the image channels only: the position channel is not an intensity."""
        if not self.cfg.position_channel:
            return augment(x, g=self.g)
        return torch.cat([augment(x[:, :-1], g=self.g), x[:, -1:]], dim=1)

    def _crop(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, y, _ = slices.sample_patches(x, y, self.cfg.patch_size, self.cfg.patch_foreground, self.g)
        return x, y

    def _labeled_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.data.slices
        idx = _batch(s.labeled, n, self.g)
        x, y = self._crop(s.stack(idx), s.labels[idx])
        return x.to(self.runtime.device, non_blocking=True).float(), y.to(self.runtime.device).long()

    def _unlabeled_images(self, idx: torch.Tensor) -> torch.Tensor:
        x, _ = self._crop(self.data.slices.stack(idx))
        return x.to(self.runtime.device, non_blocking=True).float()

    def loss(self, stage: str) -> torch.Tensor:
        cfg, s, rt = self.cfg, self.data.slices, self.runtime
        if stage == "global":
            x = self._unlabeled_images(_batch(torch.arange(len(s)), cfg.global_batch, self.g))
            views = []
            for _ in range(2):
                v, _ = random_spatial(x, g=self.g, **self.global_spatial)
                views.append(prepare_input(self._on_image_channels(random_intensity, v), rt))
            with autocast(rt):
                z1 = self.global_head(self.encode(views[0]))
                z2 = self.global_head(self.encode(views[1]))
            return nt_xent(z1.float(), z2.float(), cfg.global_temperature)
        if stage == "pseudo":
            x, y = self._pseudo_batch()
        else:
            x, y = self._labeled_batch(cfg.schedule(stage).batch)
        if cfg.augment:
            x, y = random_spatial(x, y, g=self.g, **self.spatial)
        y = y.to(rt.device)
        if stage == "local":
            return self.local_loss(x, y)[0]
        if self.branch is not None:
            loss = self.finetune_with_branch(x, y)
        elif stage == "pseudo" and cfg.pseudo_contrastive_weight > 0:
            contrast, logits = self.local_loss(x, y)
            seg = ce_dice(logits.float(), y, num_classes=self.data.num_classes, dice_weight=cfg.dice_weight)
            loss = seg + cfg.pseudo_contrastive_weight * contrast
        else:
            with autocast(rt):
                logits = self.net(prepare_input(self._intensity(x) if cfg.augment else x, rt))
            loss = ce_dice(logits.float(), y, num_classes=self.data.num_classes, dice_weight=cfg.dice_weight)
        if cfg.consistency_weight > 0 and len(s.unlabeled) > 0:
            loss = loss + cfg.consistency_weight * self.consistency_loss(cfg.consistency_batch or len(x))
        return loss

    def local_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the local contrastive loss of two intensity views of x with labels y, the first view's logits)."""
        cfg, rt = self.cfg, self.runtime
        v1, v2 = prepare_input(self._intensity(x), rt), prepare_input(self._intensity(x), rt)
        with autocast(rt):
            logits, f1 = self.net(v1, return_features=True)
            _, f2 = self.net(v2, return_features=True)
            e1, e2 = self.local_head(f1["decoder"]), self.local_head(f2["decoder"])
        contrast = local_contrastive(
            e1.float(),
            e2.float(),
            y,
            cfg.local_temperature,
            cfg.local_mode,
            cfg.local_stride,
            cfg.local_block,
            cfg.local_chunk,
        )
        return contrast, logits

    # ---- consistency on unpainted slices (FixMatch-style) ----------------------------------------
    def consistency_loss(self, n: int) -> torch.Tensor:
        """The network's confident pixels on weakly augmented unpainted crops are the targets of the
        same crops strongly augmented (intensity + cut-out); see losses.confident_ce."""
        cfg, rt = self.cfg, self.runtime
        weak = self._unlabeled_images(_batch(self.data.slices.unlabeled, n, self.g))
        if cfg.augment:
            weak, _ = random_spatial(weak, g=self.g, **self.spatial)
        strong = self._on_image_channels(random_cutout, self._on_image_channels(random_intensity, weak))
        with torch.no_grad(), autocast(rt):
            teacher = self.net(prepare_input(weak, rt))
        with autocast(rt):
            student = self.net(prepare_input(strong, rt))
        teacher_probs = torch.softmax(teacher.float(), dim=1)
        self.consistency_seen.append(
            float((teacher_probs.max(dim=1).values >= cfg.consistency_threshold).float().mean())
        )
        return confident_ce(student.float(), teacher_probs, cfg.consistency_threshold)

    # ---- self-training -----------------------------------------------------------------------------
    @torch.no_grad()
    def make_pseudo_labels(self, max_seconds: float | None = None) -> dict:
        """Label the unpainted slices with the current network; keep only confident pixels. With
        `pseudo_paint_lines`, pixels painted on slices along another axis are the targets as painted.

        With `max_seconds`, slices (or whole volumes, per `pseudo_volumes`) are labelled in a random order until
        that time is used up."""
        cfg, s = self.cfg, self.data.slices
        pool = s.unlabeled
        lines = holds_paint(s.labels, pool) if cfg.pseudo_paint_lines else None
        scope = cfg.pseudo_scope
        if scope != "all":
            with_paint = s.volume_index[s.labeled]
            if lines is not None:
                with_paint = torch.cat([with_paint, s.volume_index[pool[lines]]])
            of_painted = pool[torch.isin(s.volume_index[pool], with_paint.unique())]
            # volumes painted whole leave nothing to self-train on but the volumes nobody painted
            scope = "all" if scope == "auto" and len(of_painted) < len(s.labeled) else "painted"
            pool = pool if scope == "all" else of_painted
        was_training = self.unet.training
        self.unet.eval()
        whole = cfg.pseudo_volumes == "on" or (
            cfg.pseudo_volumes == "auto" and paint_orders_classes(s, self.data.num_classes)
        )
        if whole:
            # "auto" mirrors only when no time budget runs: under one, the time goes to labelling more volumes
            mode = cfg.prediction_mirrors
            mirrors = mode == "on" or (mode == "auto" and max_seconds is None)
            pool, labels, report = volume_pseudo_labels(
                s,
                pool,
                functools.partial(self._softmax, MIRROR_VIEWS if mirrors else MIRROR_VIEWS[:1]),
                self.data.num_classes,
                cfg.pseudo_threshold,
                max_seconds,
                self.g,
            )
            report["mirrors"] = mirrors
        else:
            pool, labels, report = self._slice_pseudo_labels(pool, max_seconds)
        self.unet.train(was_training)
        if cfg.pseudo_paint_lines:
            painted = s.labels[pool]
            labels = torch.where(painted != IGNORE, painted, labels)
        keep = (labels != IGNORE).flatten(1).any(dim=1)
        self.pseudo = (pool[keep], labels[keep])
        return {"scope": scope, "whole_volumes": whole, "pool_slices": len(pool), "slices": int(keep.sum()), **report}

    def _slice_pseudo_labels(self, pool: torch.Tensor, max_seconds: float | None):
        cfg, s, rt = self.cfg, self.data.slices, self.runtime
        out = []
        if max_seconds is not None:
            pool = pool[torch.randperm(len(pool), generator=self.g)]
        t0, labelled = time.monotonic(), 0
        for chunk in pool.split(64 if max_seconds is None else 8) if len(pool) else ():
            if max_seconds is not None and labelled and time.monotonic() - t0 > max_seconds:
                break
            labelled += len(chunk)
            with autocast(rt):
                logits = self.net(prepare_input(self._images(chunk), rt))
            conf, label = torch.softmax(logits.float(), dim=1).max(dim=1)
            out.append(torch.where(conf >= cfg.pseudo_threshold, label, IGNORE).to(torch.uint8).cpu())
        labels = torch.cat(out) if out else torch.empty((0, s.size, s.size), dtype=torch.uint8)
        pool = pool[:labelled]
        within = s.within_volume(pool)
        kept = labels != IGNORE
        in_padding = int((kept & ~within).sum())
        if not cfg.pseudo_label_padding:
            labels = torch.where(within, labels, IGNORE)
        confident = float((labels != IGNORE).float().mean()) if len(labels) else 0.0
        # of the confident pixels, the share in the padding (labelled there only with pseudo_label_padding)
        padding_share = in_padding / int(kept.sum()) if int(kept.sum()) else 0.0
        return pool, labels, {"confident_fraction": round(confident, 4), "padding_share": round(padding_share, 4)}

    def _softmax(self, views, idx: torch.Tensor) -> torch.Tensor:
        total, n = softmax_sum(self.net, self._images(idx), self.runtime, views)
        return (total / n).cpu()

    def _pseudo_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, s, rt = self.cfg, self.data.slices, self.runtime
        pool, labels = self.pseudo
        n_pseudo = round(cfg.pseudo_batch * cfg.pseudo_fraction) if len(pool) else 0
        idx = _batch(s.labeled, cfg.pseudo_batch - n_pseudo, self.g)
        pick = torch.randint(0, max(1, len(pool)), (n_pseudo,), generator=self.g)
        x, y = self._crop(torch.cat([s.stack(idx), s.stack(pool[pick])]), torch.cat([s.labels[idx], labels[pick]]))
        return x.to(rt.device, non_blocking=True).float(), y.to(rt.device).long()

    # ---- regularization branch (fine-tune stage only; model/regularizer.py) -----------------------
    def finetune_with_branch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """CE + Dice on the painted batch + branch_weight * branch loss on the painted batch and a
        batch of unpainted slices (every slice of the training volumes that nobody painted)."""
        cfg, s, rt = self.cfg, self.data.slices, self.runtime
        x_lab = prepare_input(self._intensity(x) if cfg.augment else x, rt)
        with autocast(rt):
            logits, feats = self.net(x_lab, return_features=True)
        seg = ce_dice(logits.float(), y, num_classes=self.data.num_classes, dice_weight=cfg.dice_weight)
        bottlenecks, images = [feats["bottleneck"]], [self.unet.pad_input(x_lab)[0]]
        n_unl = cfg.finetune_batch if cfg.branch_unlabeled_batch is None else cfg.branch_unlabeled_batch
        if n_unl > 0 and len(s.unlabeled) > 0:
            xu = self._unlabeled_images(_batch(s.unlabeled, n_unl, self.g))
            if cfg.augment:
                xu, _ = random_spatial(xu, g=self.g, **self.spatial)
            xu = prepare_input(self._intensity(xu) if cfg.augment else xu, rt)
            with autocast(rt):
                bottlenecks.append(self.encode(xu))
            images.append(self.unet.pad_input(xu)[0])
        with autocast(rt):
            aux = self.branch(torch.cat([b.float() for b in bottlenecks]), torch.cat(images).float())
        self.last_branch_loss = float(aux.detach())
        return seg + cfg.branch_weight * aux.float()

    # ---- state ------------------------------------------------------------------------------
    def state(self, stage_index: int, epoch: int, opt, metrics: dict) -> dict:
        return {
            "format": checkpoint.CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "stage_index": stage_index,
            "epoch": epoch,
            "model": checkpoint.cpu_state(self.unet),
            "global_head": checkpoint.cpu_state(self.global_head),
            "local_head": checkpoint.cpu_state(self.local_head),
            "branch": checkpoint.cpu_state(self.branch) if self.branch is not None else None,
            "weight_average": self.average.state() if self.average is not None else None,
            "optimizer": opt.state_dict() if opt is not None else {},
            "rng": {"generator": self.g.get_state(), "torch": torch.get_rng_state()},
            "metrics": metrics,
            "slices": self.data.info,
            "num_classes": self.data.num_classes,
        }

    def restore(self, saved: dict) -> None:
        self.unet.load_state_dict(saved["model"])
        self.global_head.load_state_dict(saved["global_head"])
        self.local_head.load_state_dict(saved["local_head"])
        if self.branch is not None and saved.get("branch"):
            self.branch.load_state_dict(saved["branch"])
        if self.average is not None:
            self.average.load(saved.get("weight_average"))
        self.g.set_state(saved["rng"]["generator"])
        torch.set_rng_state(saved["rng"]["torch"])
        if distributed.active():  # the checkpoint holds rank 0's stream: every rank goes on with its own
            self.g.manual_seed(distributed.sampling_seed(int(torch.randint(0, 2**31, (1,), generator=self.g))))


def _same_run(saved: dict, cfg: TrainConfig) -> list[str]:
    now = cfg.to_dict()
    defaults = TrainConfig().to_dict()  # a key a checkpoint predates counts as its default value
    return sorted(
        k for k in set(now) | set(saved) if k not in RUNTIME_FIELDS and saved.get(k, defaults.get(k)) != now.get(k)
    )


def dice_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> list[float]:
    out = []
    for c in range(1, num_classes):
        p, t = pred == c, truth == c
        denom = int(p.sum()) + int(t.sum())
        out.append(1.0 if denom == 0 else 2.0 * int((p & t).sum()) / denom)
    return out


def train(cfg: TrainConfig) -> dict:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    runtime = runtime_for(cfg.device, cfg.channels_last, cfg.compile, cfg.bf16, cache=cfg.speed_cache or None)
    data = load_data(cfg)
    trainer = Trainer(cfg, data, runtime)
    plan = stage_plan(cfg, data.slices, distributed.world_size())
    if not plan:
        raise ValueError("every training stage is switched off (global_stage, local_stage, finetune_stage)")

    ckpt_path = out / "checkpoint.pt"
    stage_index, epoch, metrics, opt_state = 0, 0, {"stages": {}}, None
    resumed = False
    if ckpt_path.exists():
        saved = checkpoint.load(ckpt_path)
        differs = _same_run(saved["config"], cfg)
        if differs:
            raise ValueError(
                f"{ckpt_path} belongs to a run with another config (differs in: {', '.join(differs)}); "
                "use a new out_dir or delete the checkpoint"
            )
        trainer.restore(saved)
        stage_index, epoch, metrics, opt_state = (
            saved["stage_index"],
            saved["epoch"],
            saved["metrics"],
            saved["optimizer"],
        )
        resumed = True
    elif cfg.init_from:
        loaded = checkpoint.load_matching(trainer.unet, checkpoint.weights_of(checkpoint.load(cfg.init_from)))
        if loaded == 0:
            raise ValueError(f"init_from {cfg.init_from} shares no weights with this U-Net (widths {list(cfg.widths)})")
        metrics["init_from"] = {"path": cfg.init_from, "tensors": loaded}

    # a budgeted stage that a resumed run had already measured keeps the length it fixed then
    totals = [metrics["stages"].get(st, {}).get("planned_steps") or e * n for st, e, n in plan]
    total = sum(totals)
    done = sum(totals[:stage_index]) + (epoch * plan[stage_index][2] if stage_index < len(plan) else 0)
    main = distributed.is_main()  # only rank 0 of a DDP run writes anything
    progress = ProgressWriter(out / PROGRESS_FILE if main else None, total, done)
    budget = None
    if cfg.budget_s is not None:
        spent = sum(m.get("wall_s", 0.0) for m in metrics["stages"].values())
        budget = Budget(max(0.0, cfg.budget_s - spent), dict(zip(STAGES, cfg.budget_shares)))
    info = {
        "slices": len(data.slices),
        "painted_slices": len(data.slices.labeled),
        "axis": data.info["axis"],
        "size": data.slices.size,
        "patch_size": cfg.patch_size,
        "num_classes": data.num_classes,
        "runtime": runtime.describe(),
        "stages": [p[0] for p in plan],
        "budget_s": cfg.budget_s,
    }
    metrics["data"] = info
    if distributed.active():
        metrics["distributed"] = distributed.describe()
    if resumed:
        resumed_stage = plan[stage_index][0] if stage_index < len(plan) else "done"
        progress.event("resume", stage=resumed_stage, epoch=epoch, message=f"from {ckpt_path.name}")
    else:
        progress.event("start", message=json.dumps(info))

    try:
        for si in range(stage_index, len(plan)):
            stage, epochs, steps = plan[si]
            stage_total, later = totals[si], [p[0] for p in plan[si + 1 :]]
            opt = trainer.optimizer(stage)
            first_epoch = epoch if si == stage_index else 0
            if si == stage_index and opt_state:
                opt.load_state_dict(opt_state)
            stage_metrics = metrics["stages"].setdefault(
                stage, {"wall_s": 0.0, "epochs": epochs, "steps_per_epoch": steps}
            )
            clock = None
            if budget is not None:
                clock = budget.stage(stage, later, epochs * steps, planned=stage_metrics.get("planned_steps"))
                stage_metrics.setdefault("budget_s", round(clock.seconds, 2))
                progress.eta_cap = lambda: clock.eta(progress.done - sum(totals[:si])) + budget.later_eta(clock, later)  # noqa: B023 (reset before the loop moves on)
            trainer.unet.train()
            if stage == "pseudo" and first_epoch * steps < stage_total:  # also on a resume: labels are not checkpointed
                t_pseudo = time.monotonic()
                metrics["pseudo"] = trainer.make_pseudo_labels(None if clock is None else clock.seconds / 3)
                stage_metrics["pseudo_label_s"] = round(time.monotonic() - t_pseudo, 3)
            if first_epoch * steps < stage_total:
                progress.event("stage", stage=stage, epoch=first_epoch, epochs=math.ceil(stage_total / steps))
            ep, ended = first_epoch, first_epoch * steps >= stage_total
            decay = cfg.lr_decay if stage in SEGMENTING_STAGES else "constant"
            average = trainer.average if stage in SEGMENTING_STAGES else None
            while not ended:
                t0, losses = time.monotonic(), []
                for st in range(steps):
                    if decay != "constant":
                        stage_metrics["final_lr"] = scale_lr(opt, lr_factor(decay, ep * steps + st, stage_total))
                    opt.zero_grad(set_to_none=True)
                    loss = trainer.step(functools.partial(trainer.loss, stage))
                    loss.backward()
                    opt.step()
                    if average is not None:
                        average.update()
                    losses.append(float(loss.detach()))
                    stage_done = ep * steps + st + 1
                    if clock is not None:
                        planned = distributed.agree(clock.after_step(stage_done))
                        if planned is not None:
                            progress.total += planned - stage_total
                            totals[si] = stage_total = planned
                            stage_metrics.update(planned_steps=planned, step_s=round(clock.step_s or 0.0, 4))
                        if distributed.agree(clock.over()) and stage_done < stage_total:
                            progress.total -= stage_total - stage_done
                            totals[si] = stage_total = stage_done
                            stage_metrics.update(planned_steps=stage_done, stopped_by_budget=True)
                    ended = stage_done >= stage_total
                    shown = math.ceil(stage_total / steps)
                    progress.step(stage, ep + 1, shown, st + 1, steps, losses[-1], force=ended or st + 1 == steps)
                    if ended:
                        break
                stage_metrics["wall_s"] = round(stage_metrics["wall_s"] + time.monotonic() - t0, 3)
                stage_metrics["final_loss"] = distributed.mean(float(np.mean(losses)))
                stage_metrics["steps_run"] = ep * steps + len(losses)
                if trainer.consistency_seen:
                    stage_metrics["consistency_confident"] = round(float(np.mean(trainer.consistency_seen)), 4)
                    trainer.consistency_seen.clear()
                if clock is not None:
                    stage_metrics["epochs"] = math.ceil(stage_total / steps)
                if ended and average is not None:  # before the checkpoint, which then holds the average
                    stage_metrics["averaged_steps"] = average.finish()
                if ended and stage == "global" and main:  # before the checkpoint that marks the stage done
                    checkpoint.save(
                        {
                            "format": checkpoint.GLOBAL_FORMAT,
                            "state_dict": trainer.unet.encoder_state_dict(),
                            "config": cfg.to_dict(),
                        },
                        out / "global.pt",
                    )
                if main:
                    checkpoint.save(
                        trainer.state(si + 1 if ended else si, 0 if ended else ep + 1, None if ended else opt, metrics),
                        ckpt_path,
                    )
                progress.event(
                    "epoch",
                    stage=stage,
                    epoch=ep + 1,
                    epochs=math.ceil(stage_total / steps),
                    loss=round(stage_metrics["final_loss"], 5),
                )
                ep += 1
            progress.eta_cap = None
            epoch = 0
        trainer.unet.eval()
        if not main:  # validation, the clean-up decision and the model are rank 0's
            return metrics
        if data.val:
            metrics["validation"] = validate(trainer, data, cfg)
        cleanup, metrics["cleanup"] = decide_cleanup(trainer.net, cfg, data.info, trainer.runtime, data.num_classes)
        model = {
            "format": checkpoint.MODEL_FORMAT,
            "state_dict": checkpoint.cpu_state(trainer.unet),
            "config": cfg.to_dict(),
            "num_classes": data.num_classes,
            "slices": data.info,
            "cleanup": cleanup.to_dict() if cleanup else None,
        }
        checkpoint.save(model, out / "model.pt")
        atomic_write_bytes(out / "config.json", json.dumps(cfg.to_dict(), indent=2).encode())
        atomic_write_bytes(out / "metrics.json", json.dumps(metrics, indent=2).encode())
        progress.done = progress.total
        progress.event("done", message=f"model written to {out / 'model.pt'}")
    finally:
        progress.close()
    return metrics


@torch.no_grad()
def validate(trainer: Trainer, data: TrainData, cfg: TrainConfig) -> dict:
    per_volume = {}
    for name, image, label in data.val:
        pred, _ = predict_array(
            trainer.net, image, data.info, trainer.runtime, data.num_classes, chunk_pixels=cfg.predict_chunk_pixels
        )
        per_volume[name] = dice_per_class(pred, label, data.num_classes)
    per_class = np.mean(list(per_volume.values()), axis=0).tolist()
    return {"dice_per_volume": per_volume, "dice_per_class": per_class, "dice_mean": float(np.mean(per_class))}


def _fail(out_dir: str, message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    if out_dir:
        write_error(out_dir, message)


def _out_dir_of(config_path: str) -> str:
    """out_dir of a config that may be invalid, so even a config error is reported in progress.jsonl."""
    try:
        value = json.loads(Path(config_path).read_text()).get("out_dir", "")
        return value if isinstance(value, str) else ""
    except (OSError, ValueError, AttributeError):
        return ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m model.train CONFIG.json", file=sys.stderr)
        return 2
    out_dir = _out_dir_of(argv[0])
    try:
        cfg = TrainConfig.load(argv[0])
        out_dir = cfg.out_dir
        train(cfg)
    except (SlicewiseError, ValueError, FileNotFoundError) as e:
        _fail(out_dir, str(e))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
