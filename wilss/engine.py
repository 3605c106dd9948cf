"""Engine: fit one step, evaluate, checkpoint. Model- and method-agnostic, distributed-agnostic.

``fit`` runs SGD with a per-iteration poly schedule over a method's loss dict, with the head
(ASPP + classifiers) at ``lr * head_lr_mult`` (METHOD.md §3.5, §4.2) and bf16 autocast on CUDA.
``evaluate`` streams predictions into a ``StepEvaluator``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from wilss.atomic import atomic_path
from wilss.config import TrainConfig
from wilss.errors import WilssError
from wilss.methods.base import Method, StepContext
from wilss.metrics import StepEvaluator


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise WilssError("train.device=cuda but no CUDA device is visible: use train.device=cpu or auto")
    return torch.device(name)


def make_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over the method's parameter groups (each may carry lr, weight_decay)."""
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=groups[0]["lr"], weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=cfg.momentum,
                           nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def fit(method: Method, ctx: StepContext, loader: Iterable, epochs: int, lr: float, cfg: TrainConfig,
        log: Callable[[str], None] = print) -> dict[str, float]:
    """Train ``ctx.model`` for ``epochs``; returns the last epoch's mean of every loss term."""
    model = ctx.model
    optimizer = make_optimizer(method.param_groups(ctx, lr), cfg)
    max_iters = epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, method.lr_lambda(ctx, max_iters, len(loader)))
    if ctx.prev_model is not None:
        ctx.prev_model.eval()
    it, means = 0, {}
    ctx.epochs = epochs
    for epoch in range(epochs):
        model.train()
        ctx.epoch = epoch
        method.begin_epoch(ctx)
        sums: dict[str, torch.Tensor] = {}
        start, n = time.perf_counter(), 0
        for batch in loader:
            batch = _to(batch, ctx.device)
            with _autocast(ctx.device, cfg.amp):
                terms = method.losses(ctx, batch)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            scheduler.step()
            for k, v in terms.items():  # accumulate on device: no host sync in the loop
                sums[k] = sums.get(k, 0) + v.detach().float()
            it, n = it + 1, n + 1
            ctx.iteration = it
            if cfg.log_every and it % cfg.log_every == 0:
                log(f"  iter {it}/{max_iters} loss {terms['loss'].item():.4f}")
        means = {k: float(v) / max(n, 1) for k, v in sums.items()}
        if not all(math.isfinite(v) for v in means.values()):
            raise WilssError(f"training diverged at step {ctx.step} epoch {epoch + 1} (losses {means}): "
                             f"lower train.lr / train.lr_next")
        terms_txt = " ".join(f"{k} {v:.4f}" for k, v in means.items() if k != "loss")
        log(f"  step {ctx.step} epoch {epoch + 1}/{epochs}  loss {means.get('loss', float('nan')):.4f}"
            f"{'  (' + terms_txt + ')' if terms_txt else ''}  {time.perf_counter() - start:.1f}s")
    return means


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, n_seen: int, predict: Callable, device: torch.device,
             amp: bool = True) -> StepEvaluator:
    model.eval()
    ev = StepEvaluator(n_seen, device)
    for batch in loader:
        batch = _to(batch, device)
        with _autocast(device, amp):
            logits = model(batch["image"])
        ev.update(predict(logits.float()), batch["mask"])
    return ev


# --------------------------------------------------------------------------------------------------
# checkpoints: plain state dicts plus metadata, written atomically, read with weights_only=True


def save_checkpoint(path: Path, model: nn.Module, meta: dict, extra: dict | None = None) -> None:
    """State dict + metadata (+ a method's extra tensors, e.g. a memory bank), written atomically."""
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "meta": meta, "extra": extra or {}}, tmp)


def load_checkpoint(path: Path, model: nn.Module, expect: dict | None = None) -> tuple[dict, dict]:
    """Load weights into ``model``; the checkpoint's meta must match ``expect`` (task, classes, ...).

    Returns (meta, extra)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WilssError(f"cannot read checkpoint {path} ({type(e).__name__}): the file is truncated or "
                         f"not a wilss checkpoint; delete it to retrain the step") from None
    meta = state.get("meta", {}) if isinstance(state, dict) else {}
    for key, value in (expect or {}).items():
        if meta.get(key) != value:
            raise WilssError(f"checkpoint {path} was made for {key}={meta.get(key)!r}, not {value!r}: use "
                             f"a checkpoint of this task or another output folder")
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        raise WilssError(f"checkpoint {path} does not fit the model ({str(e).splitlines()[0]}): it was "
                         f"made with another backbone or class count") from None
    return meta, state.get("extra", {})
