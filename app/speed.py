"""Where the server keeps its per-machine speed measurement, and the report of what it chose.

Training subprocesses (config `speed_cache`) and the server's own inference (model.inference) read the
same file, so both run with the same switches. model/device.py makes the choice; this module only
names the file and reports.
"""

from __future__ import annotations

from pathlib import Path

SPEED_FILE = "speed.json"


def speed_cache(workspace_root: str | Path) -> Path:
    return Path(workspace_root) / SPEED_FILE


def speed_report(device: str, workspace_root: str | Path) -> dict:
    """The switches an "auto" config gets on this machine and why; never measures (that is the first
    retrain's job), so a machine not measured yet says so."""
    from model import device as speed  # torch loads only when this report is first asked for

    cache = speed_cache(workspace_root)
    runtime = speed.runtime_for(device, cache=cache, measure=False)
    measured = speed.measured_choice(cache, measure=False) if runtime.device.type == "cpu" else None
    info = speed.cpu_info()
    return {
        **runtime.describe(),
        "cpu": info.model,
        "machine_key": speed.machine_key(info),
        "measurement": measured,
        "inference_compile": False,
    }
