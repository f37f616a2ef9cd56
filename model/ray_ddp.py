"""`python -m model.ray_ddp CONFIG.json --workers N [--cpu]`: one training run as N DDP ranks on a Ray cluster.

This process is a Ray driver (of the cluster at $RAY_ADDRESS). Ray Train's TorchTrainer starts N workers,
a GPU each (`--cpu`: CPU workers), joins them in a process group (NCCL on GPUs, gloo on CPUs, as Ray
picks) and runs `model.train.train` on each as one rank (model/distributed.py). No file system is shared:

- the files the config reads go to every worker's node through Ray's object store and are written there
  at the paths the config names, so every rank (and a run resumed later) trains with the same config;
  the files already in out_dir (a checkpoint to resume from) go along;
- every rank trains with out_dir `<the config's folder>/ddp-out`, where only rank 0 writes. A thread
  on rank 0 sends each new checkpoint and the new progress lines, twice a second, to a small actor on
  this driver's node that writes them into the config's out_dir, and at the end the rest of rank 0's
  output (model.pt last). Whoever follows out_dir follows this run as a single-process one.

What the workers print reaches this process's stdout (Ray's log_to_driver). The exit status is
model.train's: 0 done, 2 a bad config or data (the error is in progress.jsonl), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
from pathlib import Path

import ray

from data.atomic import atomic_write_bytes, read_from
from data.errors import SlicewiseError
from model import distributed
from model.config import TrainConfig, input_paths
from model.progress import FILE_NAME as PROGRESS_FILE
from model.progress import write_error

RANKS_OUT = "ddp-out"
SEND_S = 0.5
STREAMED = ("checkpoint.pt", PROGRESS_FILE)  # sent while the run goes on; the rest at its end
LAST = "model.pt"  # its presence says the run is complete: written last


class Sink:
    """On the driver's node: writes what rank 0 sends into the run's out_dir."""

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.code: int | None = None

    def write(self, name: str, data: bytes) -> None:
        atomic_write_bytes(self.folder / name, data)

    def append(self, name: str, data: bytes) -> None:
        with open(self.folder / name, "ab") as f:
            f.write(data)

    def finish(self, code: int) -> None:
        self.code = code

    def returncode(self) -> int | None:
        return self.code


class Sender:
    """On rank 0: sends what is new in its out_dir to the sink, from a thread until `finish`."""

    def __init__(self, sink, folder: Path):
        self.sink, self.folder = sink, folder
        self.offset, self.stamp = 0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="slicewise-ddp-send", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(SEND_S):
            self.send_new()

    def send_new(self) -> None:
        # the checkpoint before the progress lines: an epoch's line does not come before its checkpoint
        checkpoint = self.folder / "checkpoint.pt"
        try:
            stamp = checkpoint.stat().st_mtime_ns
            if stamp != self.stamp:
                ray.get(self.sink.write.remote(checkpoint.name, checkpoint.read_bytes()))
                self.stamp = stamp
        except FileNotFoundError:
            pass
        data = read_from(self.folder / PROGRESS_FILE, self.offset)
        data = data[: data.rfind(b"\n") + 1]  # whole lines only
        if data:
            ray.get(self.sink.append.remote(PROGRESS_FILE, data))
            self.offset += len(data)

    def finish(self) -> None:
        self._stop.set()
        self._thread.join()
        self.send_new()
        rest = [p for p in self.folder.iterdir() if p.is_file() and p.name not in STREAMED]
        for path in sorted(rest, key=lambda p: (p.name == LAST, p.name)):
            ray.get(self.sink.write.remote(path.name, path.read_bytes()))


def train_rank(args: dict) -> None:
    """What each Ray Train worker runs: one rank of the run."""
    import ray.train
    import torch

    from model.train import train

    context = ray.train.get_context()
    rank, local_rank = context.get_world_rank(), context.get_local_rank()
    config = dict(args["config"])
    out = Path(args["root"]) / RANKS_OUT
    config["out_dir"] = str(out)
    if args["use_gpu"]:
        import ray.train.torch

        torch.cuda.set_device(ray.train.torch.get_device())
    else:
        config["device"] = "cpu"
    if local_rank == 0:  # once per node: the inputs, and an out_dir with only what the run starts from
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for path, ref in args["inputs"].items():
            write_path(Path(path), ref)
        for name, ref in args["out_files"].items():
            atomic_write_bytes(out / name, ray.get(ref))
    distributed.barrier()
    sender = Sender(args["sink"], out) if rank == 0 else None
    code = 0
    try:
        train(TrainConfig.from_dict(config))
    except (SlicewiseError, ValueError, FileNotFoundError) as exc:  # the same on every rank: no rank waits
        code = 2
        if rank == 0:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            write_error(out, str(exc))
    finally:
        if sender is not None:
            sender.finish()
    if rank == 0:
        ray.get(args["sink"].finish.remote(code))
    distributed.barrier()  # no node's folder goes while a rank still writes in it
    if local_rank == 0:
        shutil.rmtree(out, ignore_errors=True)
        if ray.get_runtime_context().get_node_id() != args["files_node"]:
            remove_inputs(Path(args["root"]), [Path(p) for p in args["inputs"]])


def fit(config_path: Path, workers: int, use_gpu: bool = True, files_node: str | None = None) -> int:
    """Train the run of `config_path` as `workers` DDP ranks -> model.train's exit status.

    files_node: the Ray node whose file system holds the config's folder (default: this driver's)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    import data
    import model

    config_path = Path(config_path).resolve()
    config = json.loads(config_path.read_text())
    out = Path(config["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        code = [str(Path(package.__file__).parent) for package in (model, data)]  # what the workers import
        ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", runtime_env={"py_modules": code})
    here = files_node or ray.get_runtime_context().get_node_id()
    sink = (
        ray.remote(Sink)
        .options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False))
        .remote(str(out))
    )
    args = {
        "config": config,
        "root": str(config_path.parent),
        "use_gpu": use_gpu,
        "inputs": {path: put_path(Path(path)) for path in input_paths(config)},
        "out_files": {
            p.name: ray.put(p.read_bytes()) for p in sorted(out.iterdir()) if p.is_file() and p.name != PROGRESS_FILE
        },
        "sink": sink,
        "files_node": here,
    }
    trainer = TorchTrainer(
        train_rank,
        train_loop_config=args,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(name=config_path.parent.name, storage_path=str(config_path.parent / "ray-train")),
    )
    print(f"training as {workers} DDP ranks on Ray Train workers, {'a GPU' if use_gpu else 'CPUs'} each", flush=True)
    try:
        trainer.fit()
    except Exception as exc:
        code = ray.get(sink.returncode.remote())
        print(f"error: the Ray Train run failed: {exc}", file=sys.stderr, flush=True)
        return code or 1
    code = ray.get(sink.returncode.remote())
    return 1 if code is None else code


def put_path(path: Path):
    """A file's bytes, or a folder's files by relative path, into the object store."""
    if path.is_dir():
        return {str(p.relative_to(path)): ray.put(p.read_bytes()) for p in sorted(path.rglob("*")) if p.is_file()}
    return ray.put(path.read_bytes())


def write_path(path: Path, ref) -> None:
    if isinstance(ref, dict):
        for relative, file_ref in ref.items():
            atomic_write_bytes(path / relative, ray.get(file_ref))
    else:
        atomic_write_bytes(path, ray.get(ref))


def remove_inputs(root: Path, paths: list[Path]) -> None:
    """The input copies on a node that is not the run's own, and the folders they leave empty up to root."""
    folders = {root}
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        folders.update(parent for parent in path.parents if root in parent.parents)
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (or gone): someone else's files stay


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.ray_ddp", description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--workers", type=int, required=True, help="DDP ranks, one Ray Train worker each")
    parser.add_argument("--cpu", action="store_true", help="CPU workers (gloo) instead of a GPU each (NCCL)")
    parser.add_argument("--files-node", help="id of the Ray node whose file system holds CONFIG's folder")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    return fit(Path(args.config), args.workers, use_gpu=not args.cpu, files_node=args.files_node)


if __name__ == "__main__":
    # by the module's name, not __main__: what Ray sends to the workers is then imported there, not pickled
    from model.ray_ddp import main as entry

    sys.exit(entry())
