"""The Ray side of a training job: a detached actor that runs `python -m model.train` on a Ray worker.

The server (app/ray_runner.py) hands the actor every file the run reads as bytes in Ray's object store,
so the worker needs no view of the server's workspace. The actor writes them under a folder of its own
on the worker, points the config at them, and runs the same training entry as the local runner, in
its own process group. The server pulls progress lines, the log, each new checkpoint and at the end
the results back through `pull` and `results`; nothing here writes outside that folder.

The folder's name comes from the job (not from a random temp name), so a run started again from a
checkpoint sees the same paths in its config and `model.train` accepts the checkpoint as its own.
A job given more than one GPU runs `python -m model.ray_ddp` there instead: it drives that many Ray Train
workers training the run data-parallel (DDP) and gathers rank 0's output into the same folder, so the
server follows it as any other run.
No torch is imported here: this module is also loaded by the web process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from app.jobs import signal_group
from data.atomic import read_from
from model.config import PATH_FIELDS, PATH_LIST_FIELDS, input_paths

__all__ = ["PATH_FIELDS", "PATH_LIST_FIELDS", "TrainingRun", "input_paths", "predict_on_worker"]
STREAMED = ("progress.jsonl", "checkpoint.pt")  # pulled while the run goes on, not with the results
RESULT_LAST = "model.pt"  # written last by the server: its presence says the run is complete


def run_root(name: str) -> Path:
    return Path(tempfile.gettempdir()) / "slicewise-ray" / name


class TrainingRun:
    """One training run (`ray.remote(TrainingRun).options(lifetime="detached", name=...)` by the runner)."""

    def __init__(self, name: str, config: dict, files: dict, out_files: dict, workers: int = 1, use_gpu: bool = True):
        """files: {server path: object ref of its bytes, or {relative path: ref} for a folder};
        out_files: {name: ref} of what the server's out_dir already holds (a checkpoint to resume from);
        workers > 1: train as that many DDP ranks through Ray Train (on a GPU each, unless not use_gpu)."""
        self.name = name
        self.workers, self.use_gpu = workers, use_gpu
        self.root = run_root(name)
        self.config, self.files, self.out_files = config, files, out_files
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.error: str | None = None
        self.cancelled = False
        self._lock = threading.Lock()
        # an earlier actor of this job on this node (killed, or ended by Ray's memory monitor) leaves its
        # folder behind; it goes before any call is answered, so `pull` never returns its files as this run's
        shutil.rmtree(self.root, ignore_errors=True)
        self._prepared = threading.Event()  # set once the folder holds this run's inputs (or the run failed)
        self._thread = threading.Thread(target=self._run, name=f"slicewise-{name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ what the server calls

    def info(self) -> dict:
        import ray

        context = ray.get_runtime_context()
        return {
            "actor_id": context.get_actor_id(),
            "node_id": context.get_node_id(),
            "pid": os.getpid(),
            "train_pid": self.process.pid if self.process else None,
            "host": os.uname().nodename,
            "workers": self.workers,
        }

    def pull(self, progress_offset: int, log_offset: int, checkpoint_stamp: float) -> dict:
        """What is new since the given offsets; the return code once the run has ended."""
        if not self._prepared.is_set():  # the folder is still being written: a checkpoint in it may be half there
            return {
                "progress": b"",
                "log": b"",
                "checkpoint": None,
                "checkpoint_stamp": checkpoint_stamp,
                "returncode": None,
                "error": None,
            }
        returncode = self.returncode  # read first: once set, everything the run wrote is on disk
        out = self.root / "out"
        checkpoint = out / "checkpoint.pt"
        stamp, checkpoint_bytes = checkpoint_stamp, None
        try:
            mtime = checkpoint.stat().st_mtime
            if mtime != checkpoint_stamp:
                checkpoint_bytes, stamp = checkpoint.read_bytes(), mtime
        except OSError:
            pass
        return {
            "progress": read_from(out / "progress.jsonl", progress_offset),
            "log": read_from(self.root / "train.log", log_offset),
            "checkpoint": checkpoint_bytes,
            "checkpoint_stamp": stamp,
            "returncode": returncode,
            "error": self.error,
        }

    def results(self) -> dict[str, bytes]:
        """Every file the run left in its out_dir except the streamed ones."""
        out = self.root / "out"
        if not out.is_dir():
            return {}
        return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and p.name not in STREAMED}

    def cancel(self, grace_s: float = 5.0) -> None:
        with self._lock:
            self.cancelled = True
            process = self.process
        if process is None:
            return
        signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            signal_group(process.pid, signal.SIGKILL)
            process.wait()

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ the run

    def _run(self) -> None:
        try:
            try:
                config_path = self._materialize()
            finally:
                self._prepared.set()
            env = dict(os.environ)
            # the code Ray shipped with the job (runtime_env py_modules) comes first for the subprocess too
            env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
            env.setdefault("PYTHONUNBUFFERED", "1")
            command = [sys.executable, "-m", "model.train", str(config_path)]
            if self.workers > 1:
                import ray

                env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address  # the Ray Train driver joins this cluster
                node = ray.get_runtime_context().get_node_id()  # where this actor's folder is
                command = [sys.executable, "-m", "model.ray_ddp", str(config_path), "--workers", str(self.workers)]
                command += ["--files-node", node] + ([] if self.use_gpu else ["--cpu"])
            with self._lock:
                if self.cancelled:
                    self.returncode = -signal.SIGTERM
                    return
                with open(self.root / "train.log", "ab") as log:
                    self.process = subprocess.Popen(
                        command,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=self.root,
                        env=env,
                        preexec_fn=own_group_dying_with_parent,
                    )
            self.returncode = self.process.wait()
        except Exception as exc:  # the inputs could not be written: say why, as a failed run
            self.error = f"the Ray worker could not prepare the run: {type(exc).__name__}: {exc}"
            with open(self.root / "train.log", "a") as log:
                log.write(f"Error: {self.error}\n")
            self.returncode = 1

    def _materialize(self) -> Path:
        import json

        import ray

        out = self.root / "out"
        out.mkdir(parents=True)
        for name, ref in self.out_files.items():
            (out / name).write_bytes(ray.get(ref))
        for index, (server_path, ref) in enumerate(sorted(self.files.items())):
            target = self._local_path(index, server_path)
            if isinstance(ref, dict):  # a folder (a DICOM series)
                for relative, part in ref.items():
                    (target / relative).parent.mkdir(parents=True, exist_ok=True)
                    (target / relative).write_bytes(ray.get(part))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(ray.get(ref))
        config_path = self.root / "config.json"
        config_path.write_text(json.dumps(self._remote_config(), indent=1))
        return config_path

    def _local_path(self, index: int, server_path: str) -> Path:
        return self.root / "inputs" / f"{index}_{Path(server_path).name}"

    def _remote_config(self) -> dict:
        where = {p: str(self._local_path(i, p)) for i, p in enumerate(sorted(self.files))}
        config = dict(self.config)
        for key in PATH_LIST_FIELDS:
            config[key] = [where.get(p, p) if p else p for p in config.get(key) or ()]
        for key in PATH_FIELDS:
            if config.get(key):
                config[key] = where[config[key]]
        config["out_dir"] = str(self.root / "out")
        # the speed measurement belongs to the machine that trains, so it is kept next to its runs
        config["speed_cache"] = str(run_root("speed.json")) if config.get("speed_cache") else ""
        return config


def own_group_dying_with_parent() -> None:
    """In the child before exec: its own process group (cancel ends the whole tree), and SIGKILL when
    the actor's thread that started it dies, so a killed actor never leaves training behind."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: cancel still ends the group


def predict_on_worker(model_bytes: bytes, array, spacing: tuple, want_probs: bool, painted=None):
    """A Ray task: one volume's (labels, probs, labels with `painted` taken as certain or None) with the model
    given as its model.pt bytes."""
    import numpy as np

    from model.inference import load_predictor

    with tempfile.TemporaryDirectory(prefix="slicewise-predict-") as folder:
        path = Path(folder) / "model.pt"
        path.write_bytes(model_bytes)
        predictor = load_predictor(path, device="auto")
        # the server applies the model's clean-up (app/predictions.py), which may be decided after training
        array, spacing = np.asarray(array), tuple(spacing)
        if painted is None:
            labels, probs = predictor.predict(array, spacing, return_probs=want_probs, clean=False)
            return np.asarray(labels, dtype=np.uint8), probs, None
        labels, with_paint, probs = predictor.predict_with_paint(
            array, np.asarray(painted), spacing, return_probs=want_probs, clean=False
        )
    return np.asarray(labels, dtype=np.uint8), probs, np.asarray(with_paint, dtype=np.uint8)
