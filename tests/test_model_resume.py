"""A training run killed after its first checkpoint resumes from that epoch when started again."""

import json
import subprocess
import sys
import time
from pathlib import Path

from test_model_train import sparse_dataset

from model.config import preset

ROOT = Path(__file__).resolve().parents[1]


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    images, labels = sparse_dataset(tmp_path / "data", painted=2)
    out = tmp_path / "model"
    cfg = preset(
        "quick",
        images=images,
        labels=labels,
        out_dir=str(out),
        device="cpu",
        global_stage=False,
        local_epochs=1,
        local_steps=2,
        finetune_epochs=8,
        finetune_steps=2,
    )
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(cfg.to_dict()))
    command = [sys.executable, "-m", "model.train", str(config_path)]

    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (out / "checkpoint.pt").exists():
            assert run.poll() is None, run.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.05)
        # let it get into the fine-tune stage so the resume point is mid-stage
        while not any(
            '"stage": "finetune"' in l and '"event": "epoch"' in l
            for l in (out / "progress.jsonl").read_text().splitlines()
        ):
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        run.kill()
        run.wait()
    assert not (out / "model.pt").exists(), "the run finished before it could be killed"
    before = [json.loads(l) for l in (out / "progress.jsonl").read_text().splitlines()]
    last_epoch = max(e["epoch"] for e in before if e["event"] == "epoch" and e["stage"] == "finetune")

    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    after = [json.loads(l) for l in (out / "progress.jsonl").read_text().splitlines()][len(before) :]
    resume = after[0]
    assert resume["event"] == "resume" and resume["stage"] == "finetune"
    # the checkpoint may be one epoch ahead of the last progress line the killed run managed to write
    assert resume["epoch"] in (last_epoch, last_epoch + 1)
    steps = [e for e in after if e["event"] == "step"]
    assert {e["stage"] for e in steps} == {"finetune"}  # the local stage is not redone
    assert steps[0]["epoch"] == resume["epoch"] + 1
    assert after[-1]["event"] == "done" and (out / "model.pt").exists()
    assert 0 < resume["progress"] < 1
