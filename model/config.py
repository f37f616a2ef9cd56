"""The training configuration: one frozen dataclass, saved inside every checkpoint and model.

`TrainConfig.from_dict` is the only way a config enters from outside (JSON file, app, CLI) and it
refuses unknown keys by name, so a typo never silently falls back to a default.
`preset("quick" | "cpu" | "paper", **overrides)` gives the three sizes the project ships.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

from model.schedule import LR_DECAYS

# The training stages in the order model.train runs them, with the words the UI shows for them.
STAGE_LABELS = {
    "global": "global contrastive pretraining (every slice, no labels)",
    "local": "local contrastive pretraining (painted slices)",
    "finetune": "fine-tuning on the painted slices",
    "pseudo": "self-training on confident predictions",
}
STAGES = tuple(STAGE_LABELS)
GROWING_STAGES = ("finetune", "pseudo")  # their epochs grow with the painted slices (TrainConfig.paint_growth)
SEGMENTING_STAGES = ("finetune", "pseudo")  # they train the segmentation the model ends with (TrainConfig.lr_decay)
LOCAL_MODES = ("stride", "block", "exact")
DEVICES = ("auto", "cpu", "cuda")
TRISTATE = ("auto", "on", "off")
BRANCHES = ("none", "cpc", "recon")  # model/regularizer.py
PSEUDO_SCOPES = ("painted", "all", "auto")
MAX_SMOOTH_MM = 4.0  # predict_smooth_mm: a wider Gaussian would blur a small structure's ends away
# 3D clean-up of predicted masks (data/mask_cleanup.py): "auto" decides per class on the painted voxels of
# the model's predictions of painted volumes (model/postprocess.py), "all" always keeps the largest
# component and fills holes, "off" never cleans
CLEANUP_MODES = ("auto", "all", "off")

# What each field changes, so that a stage's result (a global.pt, a model to fine-tune further) is
# reused only while every field that shapes it is the same. A field shapes every stage unless it is
# listed here: a new field can make a reuse rarer, never silently wrong.
RUNTIME_FIELDS = frozenset(
    {
        "device",
        "threads",
        "channels_last",
        "compile",
        "bf16",
        "predict_chunk_pixels",
        "predict_flip",
        "predict_flip_budget_s",
        "predict_smooth_mm",
        "defer_cleanup",
        "speed_cache",
    }
)
INPUT_FIELDS = frozenset(
    {"images", "labels", "unlabeled", "val_images", "val_labels", "out_dir", "init_from", "axis"}
)  # the data and where the run starts; compared by the caller
# the fields naming files a run reads: lists of paths, and single paths
PATH_LIST_FIELDS = ("images", "labels", "unlabeled", "val_images", "val_labels")
PATH_FIELDS = ("init_from",)
ARCHITECTURE_FIELDS = (
    "widths",
    "bottleneck",
    "num_classes",
    "context_slices",
    "context_far",
    "position_channel",
)  # a model continues only into the same network
# what a model file written before a field existed was built with, where that differs from today's default
BUILT_BEFORE_THE_FIELD = {"context_slices": 0}
# fields used only by stages after the global one, besides those named after their stage
LATER_STAGE_FIELDS = frozenset(
    {
        "num_classes",
        "dice_weight",
        "weight_decay",
        "lr_decay",
        "weight_average",
        "elastic",  # the global stage's views never bend (TrainConfig.spatial_augment)
        "augment",
        "refresh_budget_s",
        "cleanup",
        "cleanup_volumes",
        "partial_slices",
        "paint_growth_slices",
        "paint_growth_max",
        "position_channel",  # the encoder never sees the place: only the segmentation head does
    }
)


class Schedule(NamedTuple):
    enabled: bool
    epochs: int
    steps: int | None
    batch: int


@dataclass(frozen=True)
class TrainConfig:
    # ---- data -------------------------------------------------------------------------------
    images: tuple[str, ...] = ()  # image volumes (NIfTI file, DICOM folder or zip)
    labels: tuple[str, ...] = ()  # sparse label volume per image (255 = not annotated); "" = none
    unlabeled: tuple[str, ...] = ()  # extra volumes without any annotation
    val_images: tuple[str, ...] = ()  # fully labeled validation volumes (Dice in metrics.json)
    val_labels: tuple[str, ...] = ()
    out_dir: str = ""
    axis: str | int = "auto"  # "auto" = the axis with most painted slices, else 0/1/2
    # train on every slice along `axis` with an annotated pixel: with slices painted along another axis,
    # the network learns from the lines they cross this axis' slices in
    partial_slices: bool = False
    num_classes: int | None = None  # background + classes; None = max label value + 1
    # ---- slices -----------------------------------------------------------------------------
    max_size: int = 256  # in-plane extents above this are resized down, never up
    # 2.5D: this many neighbouring slices on each side go with a slice into the network as extra channels
    context_slices: int = 1
    # > context_slices: two more channels, the slices this far away on each side, so that a slice across a
    # long structure sees where along it it lies (0 = none)
    context_far: int = 0
    # The slice's place along the axis in its volume (-1 first slice .. 1 last) as one more input channel, which
    # the U-Net gives to its segmentation head only. Along the MSD hippocampus's axis 1 a slice is all one
    # class, and only its place tells which (docs/method.md).
    position_channel: bool = False
    # Training steps see square crops of this side (None = whole slices), so a step costs the same
    # for a 512 x 512 CT as for a 128 x 128 image; inference still runs on whole slices.
    patch_size: int | None = None
    patch_foreground: float = 0.33  # share of crops centred on a painted structure pixel (nnU-Net style)
    # ---- time budget ------------------------------------------------------------------------
    # Seconds for the training stages of a run (None = the fixed schedule below). A budgeted stage runs
    # its first steps, measures them, and then takes at most its <stage>_epochs x <stage>_steps steps,
    # fewer when the measured step time says they would not fit in its share of the budget; it also
    # stops at the end of that share. Reading the volumes and predicting masks are not included.
    budget_s: float | None = None
    refresh_budget_s: float | None = None  # budget_s of a fine-tune refresh (retrain_config)
    # global, local, finetune, pseudo: fine-tuning makes the masks, so it gets the largest share when the
    # budget cannot hold every stage's steps (a CPU without AVX-512: 22 fine-tune steps at (0.3, 0.25, 0.3, 0.15))
    budget_shares: tuple[float, float, float, float] = (0.2, 0.15, 0.5, 0.15)
    # ---- model ------------------------------------------------------------------------------
    widths: tuple[int, ...] = (64, 128, 256, 512)
    bottleneck: int | None = None  # None = 2 * widths[-1]
    global_proj_dim: int = 128
    local_proj_dim: int = 128
    init_from: str | None = None  # model.pt / global.pt / checkpoint.pt whose weights start this run
    # ---- stages (epoch = steps_per_epoch steps; steps None = one pass over the samples) ------
    global_stage: bool = True
    global_epochs: int = 100
    global_steps: int | None = None
    global_batch: int = 32
    global_lr: float = 3e-4
    global_weight_decay: float = 1e-5
    global_temperature: float = 0.5
    local_stage: bool = True
    local_epochs: int = 70
    local_steps: int | None = None
    local_batch: int = 4
    local_lr: float = 1e-4
    local_temperature: float = 0.1
    local_mode: str = "block"
    local_stride: int = 4
    local_block: int = 16
    local_chunk: int = 4096
    finetune_stage: bool = True
    finetune_epochs: int = 120
    finetune_steps: int | None = None
    finetune_batch: int = 8
    finetune_lr: float = 1e-4
    # the encoder's and bottleneck's learning rate in fine-tune and self-training, as a share of the stage's:
    # below 1 the painted slices move the pretrained features less than the decoder
    finetune_encoder_lr_scale: float = 1.0
    dice_weight: float = 1.0
    weight_decay: float = 1e-5
    # Learning rate over each fine-tune and self-training stage: "constant", or "poly" (each stage's lr x
    # (1 - step / steps) ^ 0.9, nnU-Net's), so the stage ends on small steps; under a time budget the steps
    # are those the budget plans. Off: it gained along axis 2 only and lost at 5 %
    # (docs/benchmarks/lr_decay_and_augmentation.md).
    lr_decay: str = "constant"
    # Each fine-tune and self-training stage ends on an exponential moving average of its weights with this
    # decay (model/weight_average.py) instead of its last step's; 0 = off.
    weight_average: float = 0.0
    # Fine-tune and self-training epochs grow with the painted slices, for schedules of fixed steps sized
    # for a few painted slices: x1 up to paint_growth_slices painted slices, then in proportion, at most
    # paint_growth_max times (None = never). A time budget still caps the steps.
    paint_growth_slices: int | None = None
    paint_growth_max: float = 2.0
    # ---- self-training (after fine-tune; off by default) --------------------------------------
    # The fine-tuned model labels the unpainted slices; pixels it is at least pseudo_threshold sure of
    # become labels, the rest stay IGNORE, and training goes on with painted + pseudo-labelled slices.
    pseudo_stage: bool = False
    pseudo_epochs: int = 4
    pseudo_steps: int | None = None
    pseudo_batch: int = 16
    pseudo_lr: float = 5e-4
    pseudo_threshold: float = 0.9
    pseudo_fraction: float = 0.5  # share of each batch drawn from pseudo-labelled slices
    # "painted": the unpainted slices of the volumes with paint; "all": of every training volume; "auto":
    # "painted" unless those slices are fewer than the painted ones (volumes painted whole), then "all".
    # "auto" failed its rule at 5 %: -0.003 +- 0.007 along axis 1 (docs/benchmarks/self_training_scope.md)
    pseudo_scope: str = "painted"
    # True: the slice-by-slice labeller also keeps the network's confident guesses in the padding around each
    # volume's slices (never painted, cropped off every mask); False: only the volume's own pixels are labelled.
    # False failed its rule: paired validation -0.003 along axis 0 and +0.014 along axis 2 (6 seeds each),
    # -0.007 along axis 1 (3 seeds), float32 (docs/benchmarks/pseudo_labels_padding.md)
    pseudo_label_padding: bool = True
    # True: where a slice painted along another axis crosses an unpainted slice, its painted pixels are
    # that slice's self-training targets, whatever the network predicts there (no effect with one axis).
    # Off: level along axes 0 and 2, -0.014 +- 0.037 along axis 1 (docs/benchmarks/mixed_planes.md)
    pseudo_paint_lines: bool = False
    # "on": label whole volumes, mirrors averaged, with the 3D clean-up the paint chooses (model/pseudo_labels.py);
    # "auto": only when that clean-up puts the classes in order along an axis the paint shows, a mistake a
    # slice alone cannot see. Off: as the product predicts (the order put in at inference anyway) level,
    # -0.000 / -0.003 on validation along axes 0 / 2 (docs/benchmarks/pseudo_labels_in_order.md).
    # true / false of older configs read as "on" / "off".
    pseudo_volumes: str = "off"
    # > 0: self-training also runs the local contrastive loss on its batches, so confident pseudo-labelled
    # pixels join the painted ones as anchors and positives (loss = CE + Dice + this x local contrastive)
    pseudo_contrastive_weight: float = 0.0
    # ---- consistency on unpainted slices (fine-tune and self-training; off by default) --------
    # FixMatch-style: every step also predicts a batch of unpainted slices under a weak (spatial) augmentation;
    # pixels it is at least consistency_threshold sure of become the targets of the same crops under a strong
    # one (intensity + a cut-out box), and the loss adds consistency_weight x that cross-entropy.
    consistency_weight: float = 0.0
    consistency_threshold: float = 0.9
    consistency_batch: int | None = None  # unpainted slices per step; None = the stage's batch
    # ---- regularization branch (model/regularizer.py; fine-tune stage only; off by default) --
    branch: str = "none"  # "none" | "cpc" | "recon"
    branch_weight: float = 0.1  # total loss = CE + Dice on painted slices + branch_weight * branch loss
    branch_unlabeled_batch: int | None = None  # unpainted slices per fine-tune step; None = finetune_batch
    branch_dim: int = 64
    branch_steps_ahead: int = 2  # cpc: predict latents 1..k rows ahead
    branch_temperature: float = 0.1  # cpc: InfoNCE temperature
    # ---- augmentation -----------------------------------------------------------------------
    augment: bool = True
    flip: bool = True
    rot90: bool = False  # anatomy has a canonical orientation; off unless asked
    rotate_deg: float = 15.0
    scale_range: tuple[float, float] = (0.85, 1.15)
    # std of a smooth random displacement of each training slice after the global stage, in half-image
    # units (0 = off)
    elastic: float = 0.0
    intensity: bool = True
    # ---- runtime ----------------------------------------------------------------------------
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # torch intra-op threads; None = torch's default
    channels_last: str = "auto"  # "auto" = what model/device.py chooses for this machine
    compile: str = "auto"
    bf16: str = "auto"
    speed_cache: str = ""  # JSON file keeping the per-machine speed measurement ("" = never measure)
    predict_chunk_pixels: int = 4_000_000  # slices per inference batch = this // (H*W)
    # test-time augmentation: average the prediction over each slice and its two in-plane mirrors (3x the
    # inference cost). It and "auto" clean-up raised held-out Dice at 10 volumes x 3 painted slices along
    # every axis or left it level (docs/benchmarks/label_efficiency_axes.md). "auto" mirrors when this
    # machine, timed on the volume's first slices, adds at most predict_flip_budget_s to the volume, and only
    # for a model trained with mirrors (`flip`): one trained without them mislabels mirrored slices.
    predict_flip: str = "auto"
    predict_flip_budget_s: float = 15.0
    # A 2D network labels each slice on its own: the softmax is averaged along the slicing axis with a
    # Gaussian of this std in mm before the argmax (model/inference.py smooth_slices), so 1 mm spans a slice
    # of a 1 mm series and a quarter of a 4 mm one; 0 = off, and off for a volume whose spacing is not given.
    predict_smooth_mm: float = 0.0
    cleanup: str = "auto"  # one of CLEANUP_MODES
    cleanup_volumes: int = 3  # "auto" decides on at most this many painted volumes
    # "auto" clean-up decided by the caller from the predictions it makes anyway (the server predicts every
    # volume after a retrain) instead of predicting painted volumes once more at the end of training
    defer_cleanup: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.pseudo_volumes, bool):
            object.__setattr__(self, "pseudo_volumes", "on" if self.pseudo_volumes else "off")
        problems = []
        if self.local_mode not in LOCAL_MODES:
            problems.append(f"local_mode must be one of {LOCAL_MODES}, got {self.local_mode!r}")
        if self.device not in DEVICES:
            problems.append(f"device must be one of {DEVICES}, got {self.device!r}")
        for name in ("channels_last", "compile", "bf16", "predict_flip", "pseudo_volumes"):
            if getattr(self, name) not in TRISTATE:
                problems.append(f"{name} must be one of {TRISTATE}, got {getattr(self, name)!r}")
        if self.branch not in BRANCHES:
            problems.append(f"branch must be one of {BRANCHES}, got {self.branch!r}")
        if not self.branch_weight >= 0:
            problems.append(f"branch_weight must be >= 0, got {self.branch_weight}")
        if self.branch_unlabeled_batch is not None and self.branch_unlabeled_batch < 0:
            problems.append("branch_unlabeled_batch must be >= 0 or null")
        if self.branch_dim < 1 or self.branch_steps_ahead < 1 or not self.branch_temperature > 0:
            problems.append("branch_dim and branch_steps_ahead must be >= 1 and branch_temperature > 0")
        if not 0 < self.pseudo_threshold <= 1 or not 0 <= self.pseudo_fraction <= 1:
            problems.append("pseudo_threshold must be in (0, 1] and pseudo_fraction in [0, 1]")
        if not self.pseudo_contrastive_weight >= 0:
            problems.append(f"pseudo_contrastive_weight must be >= 0, got {self.pseudo_contrastive_weight}")
        if not self.consistency_weight >= 0 or not 0 < self.consistency_threshold <= 1:
            problems.append("consistency_weight must be >= 0 and consistency_threshold in (0, 1]")
        if self.consistency_batch is not None and self.consistency_batch < 1:
            problems.append(f"consistency_batch must be >= 1 or null, got {self.consistency_batch}")
        if self.pseudo_scope not in PSEUDO_SCOPES:
            problems.append(f"pseudo_scope must be one of {PSEUDO_SCOPES}, got {self.pseudo_scope!r}")
        if self.cleanup not in CLEANUP_MODES:
            problems.append(f"cleanup must be one of {CLEANUP_MODES}, got {self.cleanup!r}")
        if self.cleanup_volumes < 1:
            problems.append("cleanup_volumes must be >= 1")
        if self.paint_growth_slices is not None and self.paint_growth_slices < 1:
            problems.append(f"paint_growth_slices must be >= 1 or None, got {self.paint_growth_slices}")
        if not self.paint_growth_max >= 1:
            problems.append(f"paint_growth_max must be >= 1, got {self.paint_growth_max}")
        if not 0 < self.finetune_encoder_lr_scale <= 1:
            problems.append(f"finetune_encoder_lr_scale must be in (0, 1], got {self.finetune_encoder_lr_scale}")
        if not 0 <= self.context_slices <= 8:
            problems.append(f"context_slices must be 0..8, got {self.context_slices}")
        if self.context_far and not self.context_slices < self.context_far <= 32:
            problems.append(f"context_far must be 0 (none) or context_slices+1..32, got {self.context_far}")
        if not 0 <= self.predict_smooth_mm <= MAX_SMOOTH_MM:
            problems.append(f"predict_smooth_mm must be 0 (off) to {MAX_SMOOTH_MM} mm, got {self.predict_smooth_mm}")
        if self.predict_flip == "on" and not self.flip:
            problems.append(
                'predict_flip "on" averages mirrored slices, which a model trained without mirrors (flip false) '
                'has never seen; use "auto" or "off"'
            )
        if not self.predict_flip_budget_s >= 0:
            problems.append(f"predict_flip_budget_s must be >= 0, got {self.predict_flip_budget_s}")
        if self.axis not in ("auto", 0, 1, 2):
            problems.append(f"axis must be 'auto', 0, 1 or 2, got {self.axis!r}")
        if not self.widths or any(int(w) < 1 for w in self.widths):
            problems.append(f"widths must be positive channel counts, got {self.widths!r}")
        if self.num_classes is not None and not 2 <= self.num_classes <= 255:
            problems.append(f"num_classes must be 2..255 (background + 1..254 labels), got {self.num_classes}")
        if self.labels and len(self.labels) != len(self.images):
            problems.append(f"{len(self.images)} images but {len(self.labels)} label volumes")
        if len(self.val_labels) != len(self.val_images):
            problems.append(f"{len(self.val_images)} validation images but {len(self.val_labels)} labels")
        if self.max_size < 2 ** (len(self.widths) + 1):
            problems.append(f"max_size {self.max_size} is too small for {len(self.widths)} U-Net levels")
        for stage in STAGES:
            schedule = self.schedule(stage)
            if schedule.epochs < 0:
                problems.append(f"{stage}_epochs must be >= 0")
            if schedule.steps is not None and schedule.steps < 1:
                problems.append(f"{stage}_steps must be >= 1 or null")
            if schedule.batch < 1:
                problems.append(f"{stage}_batch must be >= 1")
        if self.patch_size is not None and (
            self.patch_size < 2 ** (len(self.widths) + 1) or self.patch_size % 2 ** len(self.widths)
        ):
            problems.append(
                f"patch_size must be a multiple of {2 ** len(self.widths)} and at least "
                f"{2 ** (len(self.widths) + 1)} for {len(self.widths)} U-Net levels, or null"
            )
        if self.lr_decay not in LR_DECAYS:
            problems.append(f"lr_decay must be one of {', '.join(LR_DECAYS)}, got {self.lr_decay!r}")
        if not 0 <= self.weight_average < 1:
            problems.append(
                f"weight_average must be in [0, 1) (an average's decay per step; 0 = off), got {self.weight_average}"
            )
        if not 0 <= self.elastic <= 0.5:
            problems.append(f"elastic must be in [0, 0.5] (a displacement std in half-image units), got {self.elastic}")
        if not 0 <= self.patch_foreground <= 1:
            problems.append(f"patch_foreground must be in [0, 1], got {self.patch_foreground}")
        for name in ("budget_s", "refresh_budget_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                problems.append(f"{name} must be > 0 seconds or null, got {value}")
        if (
            len(self.budget_shares) != 4
            or any(not s >= 0 for s in self.budget_shares)
            or not sum(self.budget_shares) > 0
        ):
            problems.append("budget_shares must be 4 shares >= 0 (global, local, finetune, pseudo), not all 0")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    @property
    def depth(self) -> int:
        return len(self.widths)

    @property
    def in_channels(self) -> int:
        return len(context_offsets(self.context_slices, self.context_far)) + int(self.position_channel)

    @property
    def prediction_mirrors(self) -> str:
        """predict_flip as inference applies it: never mirrors for a model trained without them."""
        return self.predict_flip if self.flip else "off"

    def spatial_augment(self, stage: str) -> dict[str, Any]:
        """The keyword arguments of model.augment.random_spatial for `stage`.

        Elastic bending is for the stages after the global one: it was measured with global stages
        trained without it, and leaving it out keeps a project's global stage reusable."""
        return dict(
            flip=self.flip,
            rot90=self.rot90,
            rotate_deg=self.rotate_deg,
            scale_range=self.scale_range,
            elastic=0.0 if stage == "global" else self.elastic,
        )

    def schedule(self, stage: str) -> Schedule:
        """Whether `stage` runs, and for how long."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        return Schedule(*(getattr(self, f"{stage}_{key}") for key in ("stage", "epochs", "steps", "batch")))

    def paint_growth(self, painted_slices: int) -> float:
        """How many times its epochs the fine-tune and self-training stages run for this many painted slices."""
        if self.paint_growth_slices is None:
            return 1.0
        return min(self.paint_growth_max, max(1.0, painted_slices / self.paint_growth_slices))

    def runs(self, stage: str) -> bool:
        schedule = self.schedule(stage)
        return schedule.enabled and schedule.epochs > 0

    @property
    def reads_unpainted(self) -> bool:
        """Whether a run learns from volumes with nothing painted (else they need not be given at all)."""
        return (
            self.global_stage
            or self.branch != "none"
            or self.consistency_weight > 0
            or (self.pseudo_stage and self.pseudo_scope != "painted")
        )

    @classmethod
    def fields_shaping_global(cls) -> tuple[str, ...]:
        """The fields that change what the label-free global stage learns (its encoder, global.pt)."""
        later = tuple(f"{stage}_" for stage in STAGES if stage != "global") + ("branch_", "branch", "consistency_")
        return tuple(
            f.name
            for f in fields(cls)
            if f.name not in RUNTIME_FIELDS | INPUT_FIELDS | LATER_STAGE_FIELDS
            and not f.name.startswith(later)
            and not f.name.endswith("_stage")
        )

    def global_signature(self) -> dict[str, Any]:
        """The values of `fields_shaping_global`, as JSON would store them."""
        return json.loads(json.dumps({name: getattr(self, name) for name in self.fields_shaping_global()}))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        values = {}
        for name, value in d.items():
            if isinstance(value, list):
                value = tuple(value)
            if name == "predict_flip" and isinstance(value, bool):  # model files that kept it as a bool
                value = "auto" if value else "off"
            values[name] = value
        return cls(**values)

    @classmethod
    def from_model_file(cls, d: dict[str, Any]) -> TrainConfig:
        """The config a model file was trained with; fields it predates read as what it was built with."""
        return cls.from_dict({**{k: v for k, v in BUILT_BEFORE_THE_FIELD.items() if k not in d}, **d})

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        try:
            d = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"config {path} is not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise ValueError(f"config {path} must be a JSON object")
        return cls.from_dict(d)


# What both CPU-sized presets share: 128 x 128 training patches whatever the image size, and the local
# contrastive loss on every 4th pixel per direction (mode "stride") instead of tile by tile.
_CPU_SIZED: dict[str, Any] = dict(patch_size=128, local_mode="stride")

_PRESETS: dict[str, dict[str, Any]] = {
    # Tiny: the whole pipeline in well under a minute on a 2-core CPU for a few hippocampus volumes.
    # 200 fine-tune steps: 3 hippocampus volumes x 2 painted slices reach mean Dice > 0.5 on unpainted
    # volumes (docs/benchmarks/retrain_timing.md); 20 steps gave 0.01.
    "quick": dict(
        _CPU_SIZED,
        widths=(16, 32, 64),
        global_proj_dim=32,
        local_proj_dim=32,
        global_epochs=1,
        global_steps=4,
        global_batch=8,
        local_epochs=1,
        local_steps=4,
        local_batch=4,
        local_lr=3e-4,
        finetune_epochs=4,
        finetune_steps=50,
        finetune_batch=8,
        finetune_lr=2e-3,
        pseudo_epochs=1,
        pseudo_steps=4,
        pseudo_batch=8,
        max_size=128,
        budget_s=40.0,
        refresh_budget_s=15.0,
    ),
    # Narrow U-Net and short schedules sized for a clinician waiting on a 2-core CPU, whatever the image
    # size (128 x 128 training patches): training at most 4 min for a full retrain, 20 s for a refresh,
    # leaving the rest of 5 min / 30 s for reading volumes and writing masks (docs/benchmarks/).
    "cpu": dict(
        _CPU_SIZED,
        budget_s=240.0,
        refresh_budget_s=20.0,
        widths=(16, 32, 64, 128),
        global_proj_dim=64,
        local_proj_dim=64,
        global_epochs=8,
        global_steps=50,
        global_batch=32,
        global_lr=1e-3,
        local_epochs=6,
        local_steps=40,
        local_batch=8,
        local_lr=5e-4,
        # 16 x 40 steps: at 10 x 3 +0.013 / +0.013 (6 seeds) / +0.014 paired on validation along axes 0 / 1 / 2
        # over 8 (docs/benchmarks/longer_finetune.md); where the budget binds (5 %) a stage stops at its share
        finetune_epochs=16,
        finetune_steps=40,
        finetune_batch=16,
        finetune_lr=1e-3,
        # self-training on: it beat fine-tune alone at 5x2, 10x3 and 20x5 painted slices
        # (docs/benchmarks/label_efficiency.md, rows ft+pseudo / full+pseudo)
        pseudo_stage=True,
        pseudo_epochs=4,
        pseudo_steps=40,
        pseudo_batch=16,
        pseudo_lr=5e-4,
        # x1 up to 60 painted slices, at most x4: 7 fully painted volumes (249-252 slices, x4) gained
        # +0.007 +- 0.005 held out over x2 and 20 x 5 (x1.67) +0.011 +- 0.009 over x1, every seed; 10 x 3
        # stays at x1 (docs/benchmarks/paint_growth.md); the time budget still caps the steps
        paint_growth_slices=60,
        paint_growth_max=4.0,
        # level along axes 0 and 1 (6 seeds), +0.044 +- 0.020 along axis 2 and +0.007 +- 0.004 at 5 %
        # (docs/benchmarks/lr_decay_and_augmentation.md)
        elastic=0.05,
        # 1 mm: level or better on the validation volumes of the 1 mm data along every axis and at 5 %, held
        # out +0.005 / +0.002 / +0.013 along axes 0 / 1 / 2; a whole 4 mm slice lost 0.19 on the thick-slice
        # copy (docs/benchmarks/weight_average_and_slice_smoothing.md)
        predict_smooth_mm=1.0,
    ),
    # the published schedule (docs/method.md): widths 64-512, Adam 3e-4/1e-5 100 epochs global, 1e-4
    # batch 4 ~70 epochs local, batch 8 120 epochs fine-tune. Meant for a GPU.
    "paper": dict(),
}


def context_offsets(context: int, far: int = 0) -> tuple[int, ...]:
    """Where the input channels of a slice come from, as offsets along the axis: its `context` neighbours on
    each side and, with `far` > context, the slices `far` away on each side."""
    near = tuple(range(-context, context + 1))
    return (-far, *near, far) if far > context else near


def preset(name: str, **overrides: Any) -> TrainConfig:
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(_PRESETS)}")
    return TrainConfig.from_dict({**TrainConfig().to_dict(), **_PRESETS[name], **overrides})


PRESETS = tuple(_PRESETS)


def input_paths(config: dict[str, Any]) -> list[str]:
    """Every path a training config (as a dict) reads."""
    paths = [p for key in PATH_LIST_FIELDS for p in config.get(key) or () if p]
    paths += [config[key] for key in PATH_FIELDS if config.get(key)]
    return sorted(set(paths))
