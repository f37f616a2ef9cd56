"""progress.jsonl: how a training run reports what it does, written by model.train and read by the app.

One JSON object per line, appended and flushed, so a reader that follows the file never sees half a
record (a half-written last line waits for its newline). Every line has "event" (start, resume, stage,
step, epoch, done, error) and "time"; training lines add "stage", "epoch"/"epochs", "loss",
"progress" (0-1 of all training steps) and "eta_s". No torch here: the web process reads this file.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FILE_NAME = "progress.jsonl"
STEP_WRITE_S = 0.5  # at most this often a training step is written


class ProgressWriter:
    """Appends one JSON object per line (flushed) and echoes a short line to stdout; with no path it only
    counts (a DDP rank other than 0)."""

    def __init__(self, path: Path | None, total_steps: int, done_steps: int):
        self.path, self.total, self.done = path, max(1, total_steps), done_steps
        self.start_done, self.start_time, self.last_write = done_steps, time.monotonic(), 0.0
        self.eta_cap: Callable[[], float] | None = None  # a budgeted run's bound on the time left
        self.reported = 0.0
        self.file = open(path, "a", buffering=1) if path is not None else None

    def eta(self) -> float | None:
        """Seconds left at the rate of the steps run so far, bounded by `eta_cap` when set."""
        ran = self.done - self.start_done
        rate = None if ran <= 0 else (time.monotonic() - self.start_time) / ran * (self.total - self.done)
        if self.eta_cap is None:
            return rate
        cap = self.eta_cap()
        return cap if rate is None else min(rate, cap)

    def event(self, event: str, **fields: Any) -> None:
        if self.file is None:
            return
        eta = self.eta()
        # a budgeted stage may plan more steps once its warm-up is over: the bar never goes back
        self.reported = max(self.reported, min(1.0, self.done / max(1, self.total)))
        record = {
            "event": event,
            **fields,
            "progress": round(self.reported, 4),
            "eta_s": None if eta is None else round(eta, 1),
            "time": round(time.time(), 3),
        }
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if event != "step":
            print(human_line(record), flush=True)

    def step(
        self, stage: str, epoch: int, epochs: int, step: int, steps: int, loss: float, force: bool = False
    ) -> None:
        self.done += 1
        now = time.monotonic()
        if force or now - self.last_write >= STEP_WRITE_S:
            self.last_write = now
            self.event("step", stage=stage, epoch=epoch, epochs=epochs, step=step, steps=steps, loss=round(loss, 5))

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def write_error(out_dir: str | Path, message: str) -> None:
    """Record why a run could not even start (bad config or data) where the app looks for it."""
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(out_dir) / FILE_NAME, "a") as f:
            f.write(json.dumps({"event": "error", "message": message, "time": round(time.time(), 3)}) + "\n")
    except OSError:
        pass


def human_line(r: dict) -> str:
    parts = [f"[{r.get('stage', 'train')}] {r['event']}"]
    if "epoch" in r:
        parts.append(f"epoch {r['epoch']}/{r.get('epochs', '?')}")
    if r.get("loss") is not None:
        parts.append(f"loss {r['loss']:.4f}")
    if r.get("message"):
        parts.append(str(r["message"]))
    parts.append(f"{100 * r['progress']:.0f}%")
    if r.get("eta_s") is not None:
        parts.append(f"eta {r['eta_s']:.0f}s")
    return " ".join(parts)


def read_new_lines(path: Path, offset: int) -> tuple[int, list[dict]]:
    """Complete JSON lines appended since `offset` -> (new offset, events). A half-written last line waits."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0, []
    if size < offset:
        offset = 0  # the file was started again
    if size == offset:
        return offset, []
    with open(path, "rb") as f:
        f.seek(offset)
        chunk = f.read(size - offset)
    end = chunk.rfind(b"\n")
    if end < 0:
        return offset, []
    events = []
    for line in chunk[: end + 1].splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return offset + end + 1, events


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def progress_fields(event: dict) -> dict:
    """What a progress line says about the job: stage, epoch, progress (0-1 of training), eta_s, loss, message."""
    out = {}
    if isinstance(event.get("stage"), str):
        out["stage"] = event["stage"]
    for key in ("epoch", "epochs"):
        if _number(event.get(key)):
            out[key] = int(event[key])
    for key in ("progress", "fraction"):
        if isinstance(event.get(key), (int, float)):
            out["progress"] = min(1.0, max(0.0, float(event[key])))
            break
    for key in ("eta_s", "eta"):
        if isinstance(event.get(key), (int, float)):
            out["eta_s"] = max(0.0, float(event[key]))
            break
    if isinstance(event.get("loss"), (int, float)) and math.isfinite(event["loss"]):
        out["loss"] = float(event["loss"])
    kind = event.get("event")
    if kind in ("resume", "error") and isinstance(event.get("message"), str):
        out["message"] = f"{kind}: {event['message']}"[:500]
    elif kind == "start":
        out["message"] = "training started"
    elif kind == "done":
        out["message"] = "training finished; predicting"
    return out


def reported_error(event: dict) -> str | None:
    """The message of an "error" line (why the run stopped), else None."""
    if event.get("event") == "error" and isinstance(event.get("message"), str):
        return event["message"][:1000]
    return None
