"""Ray Train: one incremental step = one ``TorchTrainer.fit()`` on N workers.

Every worker runs ``wilss.protocol.run_step`` under torch.distributed (gloo on CPU, nccl on GPU):
the loaders shard the data, the engine averages gradients and sums the evaluation confusion
matrices, so all ranks end with the same model and metrics. Rank 0 saves the checkpoint and the
step's columns and reports them (``ray.train.report``); the others report metrics only. The previous
step's checkpoint travels through the object store, so workers on any node can start from it.

Run names are deterministic (``<sweep>-train/<trial>/step<t>``): a run killed after it reported
is picked up again by the next ``fit()`` with the same name, which then hands back the stored result
instead of training again.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from wilss.config import Config

# Scalar columns forwarded as Train metrics (the full set travels in the checkpoint).
_METRICS = ("miou_all", "miou_old", "miou_new", "miou_old_nobg", "miou_all_nobg", "hiou")


@dataclass(frozen=True)
class TrainSpec:
    """How a step runs on Ray Train."""

    workers: int
    storage_path: str  # Ray storage (local path or URI) for run state and checkpoints
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    max_failures: int = 2  # worker-group restarts per step
    controller_failure_limit: int = 3  # finite: the default (-1) retries a startup timeout forever

    def scaling(self) -> ScalingConfig:
        res = {"CPU": self.cpus_per_worker}
        if self.use_gpu:
            res["GPU"] = self.gpus_per_worker
        return ScalingConfig(num_workers=self.workers, use_gpu=self.use_gpu, resources_per_worker=res)


def _worker(config: dict) -> None:
    """The Train loop of one step, on every worker."""
    import torch.distributed as dist

    from wilss.data.datasets import default_cache_dir, prepare
    from wilss.protocol import run_step

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    done = ray.train.get_checkpoint()
    if done is not None:  # an earlier attempt of this run finished the step: hand its result back
        ray.train.report({"step": config["step"]}, checkpoint=done if rank == 0 else None)
        return
    cfg: Config = config["cfg"]
    log = print if rank == 0 else (lambda m: None)
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
    # Rank 0 first: it fills the data caches (synthetic benchmark, class sets) the others then read.
    if rank > 0:
        dist.barrier()
    data = prepare(cfg.data, cache_dir, progress=False)
    if rank == 0:
        dist.barrier()
    with tempfile.TemporaryDirectory(prefix="wilss-step-") as tmp:
        previous = None
        if config["previous"] is not None:
            previous = Path(tmp) / "previous.pt"
            previous.write_bytes(ray.get(config["previous"]))
        out = Path(tmp) / "out"
        out.mkdir()
        cols = run_step(cfg, config["step"], out / "checkpoint.pt" if rank == 0 else None, previous=previous,
                        data=data, device=ray.train.torch.get_device(), cache_dir=cache_dir, log=log)
        node = ray.get_runtime_context().get_node_id()
        cols |= {"ray.node_id": node, "ray.node_ip": ray.util.get_node_ip_address(), "ray.workers": ctx.get_world_size()}
        metrics = {k: cols[k] for k in _METRICS if k in cols} | {"step": config["step"]}
        if rank == 0:
            (out / "cols.json").write_text(json.dumps(cols))
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(out)))
        else:
            ray.train.report(metrics)


def train_step(cfg: Config, step: int, previous: Path | None, checkpoint: Path, *, spec: TrainSpec,
               name: str) -> dict:
    """Run step ``step`` on ``spec.workers`` Train workers; write its checkpoint to ``checkpoint`` and
    return its columns (as ``run_step``)."""
    prev_ref = ray.put(previous.read_bytes()) if previous is not None else None
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"cfg": cfg, "step": step, "previous": prev_ref},
        torch_config=TorchConfig(backend="nccl" if spec.use_gpu else "gloo"),
        scaling_config=spec.scaling(),
        run_config=RunConfig(
            name=name, storage_path=spec.storage_path,
            failure_config=FailureConfig(max_failures=spec.max_failures,
                                         controller_failure_limit=spec.controller_failure_limit),
            checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {name} finished without a checkpoint")
    with tempfile.TemporaryDirectory(prefix="wilss-ckpt-") as tmp:
        got = Path(result.checkpoint.to_directory(tmp))
        cols = json.loads((got / "cols.json").read_text())
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(got / "checkpoint.pt", checkpoint)
    return cols


def run_distributed(cfg: Config, out: Path, workers: int, *, log=print) -> list[dict]:
    """``wilss run --workers N``: the protocol with every step on N Ray Train workers.

    Writes what ``run_protocol`` writes (``results/step-<t>.parquet``, ``checkpoints/step-<t>.pt``),
    plus ``artifacts/`` (the steps as shared artifacts) and ``ray/`` (the Train runs); a rerun skips
    finished steps. GPUs: one per worker when ``train.device`` is cuda, or auto and the cluster has them.
    """
    import os

    import pandas as pd

    from wilss.artifacts import StepStore
    from wilss.launch.cluster import cluster_totals, ray_session
    from wilss.launch.steps import RowSink, run_steps
    from wilss.protocol import RunPaths
    from wilss.results import write_row

    paths, store = RunPaths(out), StepStore(out / "artifacts")

    def read(step: int) -> dict | None:
        f = paths.result(step)
        return pd.read_parquet(f).iloc[0].to_dict() if f.is_file() else None

    def keep_checkpoint(row: dict, resumed: bool) -> None:  # the same layout as an in-process run
        src, dst = store.get(row["cache.step_key"]) / "checkpoint.pt", paths.checkpoint(int(row["step"]))
        if not dst.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
        log(f"step {row['step']}: mIoU all {row['miou_all']:.3f}{' (done before)' if resumed else ''}")

    with ray_session():
        gpus = cluster_totals()["GPU"]
        use_gpu = cfg.train.device == "cuda" or (cfg.train.device == "auto" and gpus >= workers)
        spec = TrainSpec(workers=workers, storage_path=str(out.resolve() / "ray"), use_gpu=use_gpu)
        log(f"{cfg.method} on {cfg.data.dataset} {cfg.data.task}: every step on {workers} Ray Train workers "
            f"({'GPU' if use_gpu else 'CPU'}, {'nccl' if use_gpu else 'gloo'})")

        def build(cfg: Config, step: int, previous: Path | None, checkpoint: Path) -> dict:
            return train_step(cfg, step, previous, checkpoint, spec=spec, name=f"run-train/step{step}")

        return run_steps(cfg, build, RowSink(read, lambda t, row: write_row(row, paths.result(t))), store,
                         on_row=keep_checkpoint, log=log)
