"""Every rule of model/retrain.plan_retrain as a plain function call: no threads, no HTTP, no files."""

from __future__ import annotations

import dataclasses

import pytest

from data.errors import Conflict, InvalidInput
from model.config import STAGES, TrainConfig, preset
from model.retrain import (
    ActiveModel,
    EarlierGlobalStage,
    ProjectSnapshot,
    RetrainRequest,
    VolumeInput,
    check_train_mode,
    check_train_request,
    halve_for_memory,
    painted_axis,
    plan_retrain,
    refresh_config,
    stage_overrides,
)

LABELS = [1, 2]
QUICK = preset("quick", num_classes=3)


def slices(n: int, volume: int = 1, axis: int = 0, version: int = 1) -> list[dict]:
    return [{"volume_id": volume, "axis": axis, "index": i, "version": version} for i in range(n)]


def snapshot(annotations=None, active=None, volumes=None, labels=LABELS) -> ProjectSnapshot:
    volumes = volumes or [
        VolumeInput(1, "/img/1.nii.gz", "/job/labels/1.nii.gz"),
        VolumeInput(2, "/img/2.nii.gz", None),
    ]
    return ProjectSnapshot(
        job_id=9,
        model_dir="/job/model",
        label_values=labels,
        volumes=volumes,
        annotations=slices(4) if annotations is None else annotations,
        active=active,
        device="cpu",
    )


def active(seen=None, **changes) -> ActiveModel:
    model = ActiveModel(
        id=3,
        path="/jobs/3/model",
        has_weights=True,
        config=QUICK.to_dict(),
        preset="quick",
        label_map=LABELS,
        base_id=3,
        base_annotations_seen=slices(4) if seen is None else seen,
    )
    return dataclasses.replace(model, **changes)


def trained_global(job_id=5, volume_ids=(1, 2), axis=0, signature=None, exists=True, use="trained"):
    record = {
        "use": use,
        "job_id": job_id,
        "path": f"/jobs/{job_id}/model/global.pt",
        "volume_ids": list(volume_ids),
        "axis": axis,
        "signature": signature or QUICK.global_signature(),
        "why": "...",
    }
    return EarlierGlobalStage(record, exists)


def request(mode="auto", stages=None, preset_name="quick") -> RetrainRequest:
    return RetrainRequest(preset_name, stages or {}, mode)


# ---------------------------------------------------------------------- modes


def test_full_without_an_active_model_trains_everything_and_says_why():
    plan = plan_retrain(request(), snapshot(), [])
    assert (plan.mode, plan.reason) == ("full", "auto: the project has no active model yet")
    assert (
        plan.global_stage["use"] == "trained" and plan.global_stage["why"] == "no earlier global stage of this project"
    )
    assert plan.global_stage["path"] == "/job/model/global.pt" and plan.global_stage["job_id"] == 9
    cfg = plan.config
    assert (cfg.global_stage, cfg.local_stage, cfg.finetune_stage, cfg.init_from) == (True, True, True, None)
    assert cfg.images == ("/img/1.nii.gz",) and cfg.labels == ("/job/labels/1.nii.gz",)
    assert cfg.unlabeled == ("/img/2.nii.gz",) and cfg.out_dir == "/job/model"
    assert (cfg.num_classes, cfg.device, plan.label_map) == (3, "cpu", [1, 2])
    assert plan.message() == "full retrain (auto: the project has no active model yet)"


def test_auto_refreshes_after_few_changes_and_goes_full_after_many():
    seen = slices(4)
    near = slices(4) + [{"volume_id": 1, "axis": 0, "index": 10 + i, "version": 1} for i in range(5)]
    plan = plan_retrain(request(), snapshot(annotations=near, active=active(seen)), [])
    assert plan.mode == "refresh" and plan.from_model_id == 3 and plan.base_model_id == 3
    assert (
        plan.reason == "auto: 5 painted slices new, changed or erased since model 3, at most 5 refresh the active model"
    )
    far = near + [{"volume_id": 1, "axis": 0, "index": 20, "version": 1}]
    plan = plan_retrain(request(), snapshot(annotations=far, active=active(seen)), [])
    assert plan.mode == "full" and plan.reason.endswith("more than the 5 a refresh takes in")


def test_refresh_config_fine_tunes_the_active_model_for_half_the_epochs():
    plan = plan_retrain(request("refresh"), snapshot(active=active()), [])
    cfg = plan.config
    assert plan.mode == "refresh" and plan.start_from == "/jobs/3/model/model.pt" == cfg.init_from
    assert (cfg.global_stage, cfg.local_stage, cfg.finetune_stage, cfg.pseudo_stage) == (False, False, True, False)
    assert cfg.finetune_epochs == max(1, QUICK.finetune_epochs // 2)
    assert cfg.unlabeled == ()  # nothing in a plain refresh reads the unpainted volume
    assert plan.global_stage == {"use": "off", "why": "a refresh runs the fine-tune stage only"}
    assert plan.message().startswith("refresh: fine-tuning model 3 (refresh requested: fine-tuning model 3; 0 painted")


def test_refresh_keeps_what_the_request_names_explicitly():
    cfg = plan_retrain(
        request("refresh", {"finetune": {"epochs": 7, "steps": 3}, "pseudo": True}), snapshot(active=active()), []
    ).config
    assert (cfg.finetune_epochs, cfg.finetune_steps, cfg.pseudo_stage) == (7, 3, True)
    assert cfg.paint_growth_slices is None
    grows = refresh_config(preset("cpu"), "/m.pt")
    assert grows.paint_growth_slices == preset("cpu").paint_growth_slices
    assert refresh_config(preset("cpu"), "/m.pt", {"finetune": {"epochs": 3}}).paint_growth_slices is None
    branch = preset("quick", branch="cpc")
    assert refresh_config(branch, "/m.pt").reads_unpainted  # a branch reads unpainted slices: they stay
    assert not refresh_config(preset("quick"), "/m.pt").reads_unpainted


def test_refresh_counts_changes_since_the_last_full_retrain_behind_the_active_model():
    chained = active(id=4, base_id=3, base_annotations_seen=slices(2))
    plan = plan_retrain(request(), snapshot(annotations=slices(4), active=chained), [])
    assert plan.mode == "refresh" and plan.base_model_id == 3 and plan.from_model_id == 4
    assert "2 painted slices new, changed or erased since model 3 (the last full retrain behind model 4)" in plan.reason


@pytest.mark.parametrize(
    "model, why",
    [
        (active(has_weights=False), "model 3's model.pt is missing"),
        (active(preset="cpu"), "model 3 was trained with the cpu preset and this retrain uses quick"),
        (
            active(config={**QUICK.to_dict(), "num_classes": 5}),
            "model 3 has 5 classes and the project's label map now has 3",
        ),
        (active(config={**QUICK.to_dict(), "widths": [4, 8, 16]}), "model 3 has another network (widths differ)"),
        (active(label_map=[1, 3]), "the project's label map changed since model 3 was trained"),
    ],
)
def test_an_incompatible_active_model_means_full_with_the_reason(model, why):
    assert plan_retrain(request(), snapshot(active=model), []).reason == f"auto: {why}"
    forced = plan_retrain(request("refresh"), snapshot(active=model), [])
    assert forced.mode == "full" and forced.reason == f"refresh requested, but {why}: running the full pipeline instead"


def test_a_model_from_before_an_architecture_field_existed_reads_as_what_it_was_built_with():
    no_bottleneck = {k: v for k, v in QUICK.to_dict().items() if k != "bottleneck"}  # today's default
    assert (
        plan_retrain(request(), snapshot(active=active(config=no_bottleneck)), []).mode
        == plan_retrain(request(), snapshot(active=active()), []).mode
        == "refresh"
    )
    # 2.5D input came later than the first model files, which took one slice: a different first layer
    no_context = {k: v for k, v in QUICK.to_dict().items() if k != "context_slices"}
    assert QUICK.context_slices != 0
    assert "context_slices differ" in plan_retrain(request(), snapshot(active=active(config=no_context)), []).reason
    changed = active(config={**QUICK.to_dict(), "context_slices": QUICK.context_slices + 1})
    assert "context_slices differ" in plan_retrain(request(), snapshot(active=changed), []).reason


def test_full_request_and_explicit_pretraining_win_over_auto():
    assert plan_retrain(request("full"), snapshot(active=active()), []).reason == "full retrain requested"
    plan = plan_retrain(request(stages={"local": True}), snapshot(active=active()), [])
    assert plan.mode == "full" and plan.reason == "auto: the request enables the local stage"
    with pytest.raises(InvalidInput, match="runs the fine-tune stage only, but stages enables global"):
        check_train_mode("refresh", {"global": {"enabled": True}})


def test_nothing_painted_is_a_conflict():
    with pytest.raises(Conflict, match="nothing is painted"):
        plan_retrain(request(), snapshot(annotations=[]), [])


# ---------------------------------------------------------------------- the global stage


def test_global_stage_is_reused_while_volumes_settings_and_axis_match():
    plan = plan_retrain(request("full"), snapshot(), [trained_global()])
    assert plan.global_stage["use"] == "reused" and plan.global_stage["job_id"] == 5
    assert plan.start_from == "/jobs/5/model/global.pt"  # linked by the worker to ...
    assert plan.config.init_from == plan.global_stage["path"] == "/job/model/global.pt"  # ... where the run reads it
    assert not plan.config.global_stage and plan.config.local_stage
    assert "source" not in plan.global_stage
    assert plan.message() == "full retrain, reusing the global stage of job 5 (full retrain requested)"


@pytest.mark.parametrize(
    "earlier, why",
    [
        (trained_global(volume_ids=(1,)), "the project's volumes changed since the global stage of job 5"),
        (
            trained_global(signature={**QUICK.global_signature(), "rotate_deg": 5.0}),
            "the global settings differ from those of job 5",
        ),
        (trained_global(axis=2), "the slices are painted along another axis than for job 5"),
    ],
)
def test_global_stage_runs_again_when_something_it_learned_from_changed(earlier, why):
    plan = plan_retrain(request("full"), snapshot(), [earlier])
    assert plan.global_stage["use"] == "trained" and plan.global_stage["why"] == why and plan.start_from is None
    assert plan.config.global_stage and plan.config.init_from is None


def test_global_history_skips_missing_files_and_runs_without_a_global_stage_and_finds_an_older_match():
    newest_mismatch = trained_global(job_id=8, volume_ids=(1,))
    gone = trained_global(job_id=7, exists=False)
    off = EarlierGlobalStage({"use": "off", "why": "..."}, False)
    older_match = trained_global(job_id=6, use="reused")
    plan = plan_retrain(request("full"), snapshot(), [newest_mismatch, gone, off, older_match])
    assert plan.global_stage["use"] == "reused" and plan.global_stage["job_id"] == 6
    plan = plan_retrain(request("full"), snapshot(), [newest_mismatch, gone, off])
    assert plan.global_stage["why"] == "the project's volumes changed since the global stage of job 8"


def test_a_request_naming_the_global_stage_wins_over_reuse():
    plan = plan_retrain(request("full", {"global": False}), snapshot(), [trained_global()])
    assert plan.global_stage == {"use": "off", "why": "the request switched the global stage off"}
    assert (
        not plan.config.global_stage
        and plan.message() == "full retrain, without the global stage (full retrain requested)"
    )
    plan = plan_retrain(request("full", {"global": True}), snapshot(), [trained_global()])
    assert (
        plan.global_stage["use"] == "trained" and plan.global_stage["why"] == "the request asked for the global stage"
    )


def test_the_fields_that_shape_the_global_stage_come_from_the_config():
    shaping = TrainConfig.fields_shaping_global()
    assert {"widths", "max_size", "global_lr", "flip", "rotate_deg", "intensity", "seed"} <= set(shaping)
    assert not {
        "device",
        "threads",
        "images",
        "out_dir",
        "init_from",
        "local_lr",
        "finetune_epochs",
        "pseudo_threshold",
        "branch",
        "num_classes",
        "global_stage",
    } & set(shaping)
    base = preset("quick").global_signature()
    assert preset("quick", rot90=True).global_signature() != base
    assert preset("quick", finetune_epochs=99, device="cuda", threads=1).global_signature() == base


def test_painted_axis_is_the_one_with_most_painted_slices():
    assert painted_axis([]) is None
    assert painted_axis(slices(2, axis=0) + slices(3, axis=2)) == 2
    assert painted_axis(slices(2, axis=1) + slices(2, axis=2)) == 1  # a tie goes to the lower axis, as in training


# ---------------------------------------------------------------------- the request


def test_every_stage_can_be_switched_and_scheduled_except_fine_tune_off():
    for stage in STAGES:
        if stage != "finetune":
            assert check_train_request("quick", {stage: False}, "cpu") == ("quick", {stage: False})
    assert stage_overrides({"pseudo": {"enabled": True, "epochs": 2}, "global": False}) == {
        "pseudo_stage": True,
        "pseudo_epochs": 2,
        "global_stage": False,
        "paint_growth_slices": None,  # the schedule it names runs as named
    }
    assert stage_overrides({"local": {"epochs": 2}, "pseudo": True}) == {
        "local_stage": True,
        "local_epochs": 2,
        "pseudo_stage": True,
    }  # no fine-tune or self-training schedule named: those still grow with the paint
    cfg = plan_retrain(request("full", {"pseudo": False}), snapshot(), []).config
    assert not cfg.pseudo_stage
    with pytest.raises(InvalidInput, match="cannot be switched off"):
        check_train_request(None, {"finetune": False}, "cpu")
    with pytest.raises(InvalidInput, match="unknown stages"):
        check_train_request(None, {"warmup": True}, "cpu")


def test_out_of_memory_retry_halves_the_batches():
    full = preset("cpu").to_dict()
    halved = halve_for_memory(full)
    assert halved["local_batch"] == full["local_batch"] // 2 and halved["local_mode"] == "block"
    assert halved["pseudo_batch"] == full["pseudo_batch"]


def test_auto_goes_full_when_the_active_refresh_scores_below_the_model_it_fine_tuned():
    seen, now = slices(4), slices(6)  # 2 changes: auto would refresh
    refreshed = active(seen, id=4, base_id=3, refreshed_from=3)
    worse = dataclasses.replace(
        refreshed, prequential={"dice": 0.70, "slices": 3}, previous_prequential={"dice": 0.80, "slices": 5}
    )
    plan = plan_retrain(request(), snapshot(annotations=now, active=worse), [])
    assert plan.mode == "full"
    assert plan.reason == (
        "auto: model 4, a refresh of model 3, scored Dice 0.700 on the 3 slices painted since it was trained, "
        "below model 3's 0.800: the refresh did not help"
    )
    # a drop within PREQUENTIAL_DROP, too few scored slices, no score, or no refresh: auto refreshes as before
    for prequential, previous, refreshed_from in (
        ({"dice": 0.76, "slices": 3}, {"dice": 0.80, "slices": 5}, 3),
        ({"dice": 0.50, "slices": 2}, {"dice": 0.80, "slices": 5}, 3),
        ({"dice": None, "slices": 0}, {"dice": 0.80, "slices": 5}, 3),
        ({"dice": 0.50, "slices": 3}, {"dice": 0.80, "slices": 5}, None),
    ):
        model = dataclasses.replace(
            refreshed, prequential=prequential, previous_prequential=previous, refreshed_from=refreshed_from
        )
        assert plan_retrain(request(), snapshot(annotations=now, active=model), []).mode == "refresh"
    # asked for by name, a refresh still runs
    assert plan_retrain(request("refresh"), snapshot(annotations=now, active=worse), []).mode == "refresh"
