"""The server reports its speed switches and uses the same choice as training (one cached measurement)."""

from __future__ import annotations

import json

import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from app.speed import speed_cache
from model import checkpoint, device
from model.config import preset
from model.inference import load_predictor
from model.unet import UNet

NATIVE = device.CpuInfo("Test CPU with bf16", frozenset({"avx2", "avx512_bf16", "amx_bf16"}), "AVX512", "")


def _cache_with(path, best: str) -> None:
    ms = {"float32": 50.0, "bf16": 40.0, "channels_last": 55.0, "channels_last + bf16": 41.0}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({device.machine_key(NATIVE): {"step_ms": ms, "best": best, "measured_utc": "today"}}))


def test_health_speed_says_what_was_chosen_and_why(tmp_path, monkeypatch):
    with TestClient(create_app(Settings(workspace=tmp_path / "ws", demo=False, device="cpu"))) as client:
        report = client.get("/api/health/speed").json()
        expected, why = device.choose_switches(torch.device("cpu"), None, measure=False)
        assert report["device"] == "cpu" and report["autocast"] == ("bfloat16" if expected["bf16"] else None)
        assert report["why"]["bf16"] == why["bf16"] and report["cpu"] == device.cpu_info().model
        assert (
            report["measurement"] is None and not (tmp_path / "ws" / "speed.json").exists()
        )  # a report never measures

        monkeypatch.setattr(device, "cpu_info", lambda: NATIVE)
        monkeypatch.setattr(device.platform, "machine", lambda: "x86_64")
        _cache_with(speed_cache(tmp_path / "ws"), "float32")
        report = client.get("/api/health/speed").json()
        assert report["autocast"] is None and "float32 fastest" in report["why"]["bf16"]
        assert report["measurement"]["best"] == "float32" and report["machine_key"] == device.machine_key(NATIVE)


def test_server_inference_uses_the_measurement_training_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(device, "cpu_info", lambda: NATIVE)
    monkeypatch.setattr(device.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(device, "measure_step_ms", lambda: (_ for _ in ()).throw(AssertionError("measured again")))
    cfg = preset("quick")
    checkpoint.save(
        {
            "format": checkpoint.MODEL_FORMAT,
            "state_dict": checkpoint.cpu_state(UNet(cfg.in_channels, 3, cfg.widths)),
            "config": cfg.to_dict(),
            "num_classes": 3,
            "slices": {"axis": 0, "size": 32, "max_size": 128, "multiple": 8, "context": cfg.context_slices},
        },
        tmp_path / "model.pt",
    )
    cache = tmp_path / "ws" / "speed.json"
    for best, dtype in (("float32", None), ("bf16", torch.bfloat16)):
        _cache_with(cache, best)
        trained_with = device.runtime_for("cpu", cfg.channels_last, cfg.compile, cfg.bf16, cache=cache)
        served_with = load_predictor(tmp_path, "cpu", speed_cache=cache).runtime
        assert trained_with.autocast_dtype == served_with.autocast_dtype == dtype
        assert not served_with.compile
    forced = cfg.replace(bf16="off")
    checkpoint.save(
        {
            "format": checkpoint.MODEL_FORMAT,
            "state_dict": checkpoint.cpu_state(UNet(cfg.in_channels, 3, cfg.widths)),
            "config": forced.to_dict(),
            "num_classes": 3,
            "slices": {"axis": 0, "size": 32, "max_size": 128, "multiple": 8, "context": cfg.context_slices},
        },
        tmp_path / "model.pt",
    )
    assert load_predictor(tmp_path, "cpu", speed_cache=cache).runtime.autocast_dtype is None  # the config wins
