"""The incremental protocol: walk the steps of a task, train each with a method, evaluate, record.

At step t the student grows one classifier, the step t-1 model is kept frozen in eval mode for the
method to distil from, and the step's images come from the split rule. After each step the protocol
writes a checkpoint and one result row (atomically); a rerun into the same folder skips finished steps.
``joint`` is a single step over every class and image, recorded as the task's last step.

``run_protocol`` walks the steps in one process, keeping the model in memory. ``run_step`` runs ONE
step starting from the previous step's checkpoint file: the unit a launcher schedules (``wilss.launch``
runs it inside a Ray Tune trial or on every worker of a Ray Train group; under ``torch.distributed``
the loaders shard the data and the engine averages gradients and metrics).
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
from wilss.data.datasets import PreparedData, default_cache_dir, prepare
from wilss.data.tasks import get_task
from wilss.data.transforms import eval_transform
from wilss.errors import WilssError
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
    """One process: the whole dataset. Under torch.distributed: this rank's shard, and the batch is
    the global one split over the ranks (so the number of iterations and the lr schedule do not
    depend on the number of workers)."""
    g = torch.Generator().manual_seed(seed)
    sampler = engine.shard_sampler(dataset, train, seed)
    if sampler is not None:
        batch_size = max(1, -(-batch_size // engine.world()[1]))
    n = len(sampler) if sampler is not None else len(dataset)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                      drop_last=train and n >= batch_size, num_workers=workers, generator=g,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False)


def step_sizes(data: PreparedData, upto: int) -> list[int]:
    """Classifier sizes of steps 0..upto: step 0 also predicts background."""
    return [len(data.task.new(t)) + (t == 0) for t in range(upto + 1)]


def train_loader(method: Method, ctx: StepContext) -> DataLoader:
    """The step's training batches: shuffled by a seeded generator, augmentations seeded per image and
    epoch, so the batches do not depend on ``data.loader_workers``."""
    cfg = ctx.cfg
    seed = cfg.train.seed + ctx.step
    dataset = method.train_dataset(ctx)
    dataset.seed_augmentations(seed)
    return _loader(dataset, cfg.train.batch_size, True, cfg.data.loader_workers, seed)


def test_loader(cfg: Config, data: PreparedData, step: int) -> DataLoader:
    idx = splits.eval_indices(data.present_val, data.task, step, cfg.eval.selection)
    ds = SegmentationDataset(data.val, idx, labels.eval_lut(data.task, step),
                             eval_transform(cfg.eval.mode, cfg.eval.size))
    batch = cfg.eval.batch_size if cfg.eval.mode == "crop" else 1  # full images differ in size
    return _loader(ds, batch, False, cfg.data.loader_workers, 0)


def step_meta(cfg: Config, step: int, n_classes: int) -> dict:
    """What a step's checkpoint records about the run, checked when it is loaded."""
    return {"dataset": cfg.data.dataset, "task": get_task(cfg.data.dataset, cfg.data.task).name,
            "overlap": cfg.data.overlap, "step": step, "method": cfg.method, "n_classes": n_classes}


def run_step(cfg: Config, step: int, checkpoint: Path | None, *, previous: Path | None = None,
             data: PreparedData | None = None, device: torch.device | str | None = None,
             cache_dir: str | Path | None = None, progress: bool = False, log: Callable[[str], None] = print,
             on_epoch: Callable[[int, dict], None] | None = None) -> dict:
    """Train and evaluate step ``step`` of ``cfg``'s task, starting from ``previous`` (the checkpoint
    of step ``step - 1``; None at step 0 and for a joint method); save the result to ``checkpoint``
    (None: do not save, e.g. on ranks > 0). Returns the step's measured columns, as ``run_protocol``
    records them (metrics, losses, timings, the method's columns, ``device``).

    The same seeds as ``run_protocol``, so a protocol run step by step from checkpoints trains the
    same models.
    """
    t0 = time.perf_counter()
    validate(cfg)
    device = torch.device(device) if device is not None else engine.resolve_device(cfg.train.device)
    cache_dir = Path(cache_dir or cfg.data.cache_dir or default_cache_dir())
    data = data or prepare(cfg.data, cache_dir, progress=progress)
    method = create_method(cfg.method)
    task = data.task
    first = method.joint or step == 0
    if first != (previous is None):
        raise WilssError(f"step {step} of {cfg.method} " + ("starts from no checkpoint" if first else
                         "needs the checkpoint of the step before"))
    prev_model = None
    if first:
        seed_everything(cfg.train.seed * 1000 + step)
        model = method.create_model(cfg, step_sizes(data, task.n_steps - 1 if method.joint else 0))
    else:
        model = method.create_model(cfg, step_sizes(data, step - 1))
        _, state = engine.load_checkpoint(Path(previous), model, expect=step_meta(cfg, step - 1, model.n_classes))
        method.restore(state)
        seed_everything(cfg.train.seed * 1000 + step)  # as run_protocol: the new head's init follows
        prev_model = copy.deepcopy(model).eval().requires_grad_(False)
        model.add_head(len(task.new(step)))
    model.to(device)
    ctx = StepContext(cfg, task, step, model, prev_model.to(device) if prev_model else None, device,
                      data=data, cache_dir=cache_dir, log=log)
    cols = _train_step(method, ctx, checkpoint, step_meta(cfg, step, model.n_classes), t0, on_epoch=on_epoch)
    return cols | {"device": str(device)}


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
    method = create_method(cfg.method)
    method.check(cfg)
    cache_dir = Path(cfg.data.cache_dir or paths.cache)
    data = prepare(cfg.data, cache_dir, progress=progress)
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
        meta = step_meta(cfg, step, model.n_classes)
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


def _train_step(method: Method, ctx: StepContext, checkpoint: Path | None, meta: dict, t0: float,
                on_epoch: Callable[[int, dict], None] | None = None) -> dict:
    """Train and evaluate one step, save its checkpoint (unless None); returns its measured columns
    (metrics, losses, timings, the method's own columns), which a reused artifact carries to other runs."""
    cfg, task, step, data = ctx.cfg, ctx.task, ctx.step, ctx.data
    method.begin_step(ctx)
    loader = train_loader(method, ctx)
    first = method.joint or step == 0
    epochs, lr = (cfg.train.epochs, cfg.train.lr) if first else (cfg.train.epochs_next, cfg.train.lr_next)
    ctx.log(f"step {step}: classes {list(task.new(step)) if not method.joint else 'all'}, "
            f"{len(loader.dataset)} images, {epochs} epochs")
    losses = engine.fit(method, ctx, loader, epochs, lr, cfg.train, log=ctx.log, on_epoch=on_epoch)
    extra_cols = method.end_step(ctx)
    t_train = time.perf_counter() - t0

    ev = engine.evaluate(ctx.model, test_loader(cfg, data, step), task.n_seen(step), method.predict, ctx.device,
                         cfg.train.amp)
    metrics = step_metrics(ev, 1 + len(task.new(0)), data.class_names[: task.n_seen(step)],
                           cfg.eval.future_classes, cfg.eval.average)
    t_step = time.perf_counter() - t0
    if checkpoint is not None:
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
