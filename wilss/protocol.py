"""The incremental protocol: walk the steps of a task, train each with a method, evaluate, record.

At step t the student grows one classifier, the step t-1 model is kept frozen in eval mode for the
method to distil from, and the step's images come from the split rule. After each step the protocol
writes a checkpoint and one result row (atomically); a rerun into the same folder skips finished steps.
``joint`` is a single step over every class and image, recorded as the task's last step.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from wilss import engine
from wilss.artifacts import StepStore, step_key
from wilss.atomic import write_text
from wilss.config import Config, validate
from wilss.data import labels, splits
from wilss.data.dataset import SegmentationDataset
from wilss.data.datasets import PreparedData, prepare
from wilss.data.transforms import eval_transform
from wilss.methods import Method, StepContext, create_method
from wilss.metrics import step_metrics
from wilss.results import make_row, write_row


@dataclass(frozen=True)
class RunPaths:
    """Where a run writes: ``<out>/results/step-<t>.parquet`` and ``<out>/checkpoints/step-<t>.pt``."""

    out: Path

    def result(self, step: int) -> Path:
        return self.out / "results" / f"step-{step}.parquet"

    def checkpoint(self, step: int) -> Path:
        return self.out / "checkpoints" / f"step-{step}.pt"

    @property
    def cache(self) -> Path:
        return self.out / "cache"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _loader(dataset, batch_size: int, train: bool, workers: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train and len(dataset) >= batch_size,
                      num_workers=workers, generator=g, pin_memory=torch.cuda.is_available(),
                      persistent_workers=False)


def step_sizes(data: PreparedData, upto: int) -> list[int]:
    """Classifier sizes of steps 0..upto: step 0 also predicts background."""
    return [len(data.task.new(t)) + (t == 0) for t in range(upto + 1)]


def train_loader(method: Method, ctx: StepContext) -> DataLoader:
    cfg = ctx.cfg
    return _loader(method.train_dataset(ctx), cfg.train.batch_size, True, cfg.data.loader_workers,
                   cfg.train.seed + ctx.step)


def test_loader(cfg: Config, data: PreparedData, step: int) -> DataLoader:
    idx = splits.eval_indices(data.present_val, data.task, step, cfg.eval.selection)
    ds = SegmentationDataset(data.val, idx, labels.eval_lut(data.task, step),
                             eval_transform(cfg.eval.mode, cfg.eval.size))
    batch = cfg.eval.batch_size if cfg.eval.mode == "crop" else 1  # full images differ in size
    return _loader(ds, batch, False, cfg.data.loader_workers, 0)


def run_protocol(cfg: Config, out: str | Path, *, sweep: str = "", trial_id: str = "",
                 store: StepStore | str | Path | None = None, progress: bool = True,
                 log: Callable[[str], None] = print) -> list[dict]:
    """Run every step of ``cfg``'s task into ``out``; returns the result rows (one per step).

    store: a shared ``StepStore`` folder; a step whose artifact (keyed by the config that determines
    it) is there is loaded instead of trained, and a step built here is published there.
    """
    validate(cfg)
    paths = RunPaths(Path(out))
    store = StepStore(store) if isinstance(store, (str, Path)) else store
    device = engine.resolve_device(cfg.train.device)
    cache_dir = Path(cfg.data.cache_dir or paths.cache)
    data = prepare(cfg.data, cache_dir, progress=progress)
    method = create_method(cfg.method)
    task = data.task
    steps = [task.n_steps - 1] if method.joint else list(range(task.n_steps))
    setting = "overlap" if cfg.data.overlap else "disjoint"
    log(f"{cfg.method} on {cfg.data.dataset} {task.name} {setting}: {len(steps)} step(s), "
        f"train images per step {[len(s) for s in data.train_splits]}, device {device}")

    rows, model = [], None
    ids = {"sweep": sweep, "trial_id": trial_id}
    for step in steps:
        seed_everything(cfg.train.seed * 1000 + step)
        t0 = time.perf_counter()
        prev_model = None
        if method.joint or step == 0:
            model = method.create_model(cfg, step_sizes(data, task.n_steps - 1 if method.joint else 0))
        else:
            prev_model = copy.deepcopy(model).eval().requires_grad_(False)
            model.add_head(len(task.new(step)))
        model.to(device)
        meta = {"dataset": cfg.data.dataset, "task": task.name, "overlap": cfg.data.overlap, "step": step,
                "method": cfg.method, "n_classes": model.n_classes}
        key = step_key(cfg, step, method.sections, method.step0_keys)

        if paths.result(step).is_file():  # this run finished the step before: resume
            done = paths.checkpoint(step) if paths.checkpoint(step).is_file() else None
            if done is None and store is not None and store.get(key):
                done = store.get(key) / "checkpoint.pt"
            if done is not None:
                _, state = engine.load_checkpoint(done, model, expect=meta)
                method.restore(state)
                rows.append(pd.read_parquet(paths.result(step)).iloc[0].to_dict())
                log(f"step {step}: already done in {paths.out}, loaded its checkpoint")
                continue

        ctx = StepContext(cfg, task, step, model, prev_model.to(device) if prev_model else None, device,
                          data=data, cache_dir=cache_dir, log=log)
        if store is None:
            row = _train_step(method, ctx, paths.checkpoint(step), meta, t0)
        else:
            with store.lock(key):  # another process building this artifact: wait for it
                if store.get(key):
                    row = _reuse_step(method, ctx, store.get(key), meta, t0)
                else:
                    with store.publish(key) as tmp:
                        row = _train_step(method, ctx, tmp / "checkpoint.pt", meta, t0)
                        write_text(tmp / "row.json", json.dumps(row))
            row = row | {"cache.step_key": key}
        row = make_row(cfg, step=step, metrics={}, device=str(device), timings={}, **ids) | row
        write_row(row, paths.result(step))
        rows.append(row)
    return rows


def _train_step(method: Method, ctx: StepContext, checkpoint: Path, meta: dict, t0: float) -> dict:
    """Train and evaluate one step, save its checkpoint; returns its measured columns (metrics, losses,
    timings, the method's own columns), which a reused artifact carries to other runs."""
    cfg, task, step, data = ctx.cfg, ctx.task, ctx.step, ctx.data
    method.begin_step(ctx)
    loader = train_loader(method, ctx)
    first = method.joint or step == 0
    epochs, lr = (cfg.train.epochs, cfg.train.lr) if first else (cfg.train.epochs_next, cfg.train.lr_next)
    ctx.log(f"step {step}: classes {list(task.new(step)) if not method.joint else 'all'}, "
            f"{len(loader.dataset)} images, {epochs} epochs")
    losses = engine.fit(method, ctx, loader, epochs, lr, cfg.train, log=ctx.log)
    extra_cols = method.end_step(ctx)
    t_train = time.perf_counter() - t0

    ev = engine.evaluate(ctx.model, test_loader(cfg, data, step), task.n_seen(step), method.predict, ctx.device,
                         cfg.train.amp)
    metrics = step_metrics(ev, 1 + len(task.new(0)), data.class_names[: task.n_seen(step)],
                           cfg.eval.future_classes, cfg.eval.average)
    t_step = time.perf_counter() - t0
    engine.save_checkpoint(checkpoint, ctx.model, meta, method.state())
    ctx.log(f"step {step}: mIoU all {metrics['miou_all']:.3f}  old {metrics['miou_old']:.3f}  "
            f"new {metrics['miou_new']:.3f}  ({t_step:.0f}s)")
    return (metrics | {f"time.{k}": v for k, v in {"step_s": t_step, "train_s": t_train,
                                                  "eval_s": t_step - t_train}.items()}
            | {f"loss.{k}": v for k, v in losses.items()} | {"n_train_images": len(loader.dataset)}
            | extra_cols | ctx.stats | {"cache.step_hit": False})


def _reuse_step(method: Method, ctx: StepContext, artifact: Path, meta: dict, t0: float) -> dict:
    """Load a step another run built; its measured columns come with it."""
    _, state = engine.load_checkpoint(artifact / "checkpoint.pt", ctx.model, expect=meta)
    method.restore(state)
    built = json.loads((artifact / "row.json").read_text())
    ctx.log(f"step {ctx.step}: reused the shared artifact {artifact.name} (mIoU all {built['miou_all']:.3f})")
    return built | {"cache.step_hit": True, "time.build_s": built.get("time.step_s", float("nan")),
                    "time.step_s": time.perf_counter() - t0}
