"""Engine: fit one step, evaluate, checkpoint. Model- and method-agnostic.

``fit`` runs SGD with a per-iteration poly schedule over a method's loss dict, with the head
(ASPP + classifiers) at ``lr * head_lr_mult`` (METHOD.md §3.5, §4.2) and bf16 autocast on CUDA.
``evaluate`` streams predictions into a ``StepEvaluator``.

Data parallel: when a launcher (``wilss.launch``, Ray Train) has initialised ``torch.distributed``
with more than one process, ``fit`` averages gradients across the processes and ``evaluate`` sums
the confusion matrices, so every rank holds the same weights and reports the same metrics. Methods
never see it. The loaders shard their data (``shard_sampler``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler, Sampler

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
        log: Callable[[str], None] = print,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Train ``ctx.model`` for ``epochs``; returns the last epoch's mean of every loss term.

    on_epoch(epoch, means): called after every epoch (e.g. to report progress to a scheduler).
    """
    model = ctx.model
    optimizer = make_optimizer(method.param_groups(ctx, lr), cfg)
    max_iters = epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, method.lr_lambda(ctx, max_iters, len(loader)))
    if ctx.prev_model is not None:
        ctx.prev_model.eval()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    parallel = world()[1] > 1
    if parallel:  # start every rank from rank 0's weights (the optimiser's and the model's)
        broadcast_(params + list(model.parameters()) + list(model.buffers()))
    it, means = 0, {}
    ctx.epochs = epochs
    for epoch in range(epochs):
        model.train()
        ctx.epoch = epoch
        method.begin_epoch(ctx)
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)  # a new shuffle every epoch, the same on every rank
        if hasattr(getattr(loader, "dataset", None), "set_epoch"):
            loader.dataset.set_epoch(epoch)  # new augmentations every epoch, whichever process reads
        sums: dict[str, torch.Tensor] = {}
        start, n = time.perf_counter(), 0
        for batch in loader:
            batch = _to(batch, ctx.device)
            with _autocast(ctx.device, cfg.amp):
                terms = method.losses(ctx, batch)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            if parallel:
                allreduce_gradients(params)
            optimizer.step()
            scheduler.step()
            for k, v in terms.items():  # accumulate on device: no host sync in the loop
                sums[k] = sums.get(k, 0) + v.detach().float()
            it, n = it + 1, n + 1
            ctx.iteration = it
            if cfg.log_every and it % cfg.log_every == 0:
                log(f"  iter {it}/{max_iters} loss {terms['loss'].item():.4f}")
        if parallel:
            average_buffers_(model)  # BN running stats: one model on every rank
            sums = allreduce_means(sums, ctx.device)
        means = {k: float(v) / max(n, 1) for k, v in sums.items()}
        if not all(math.isfinite(v) for v in means.values()):
            raise WilssError(f"training diverged at step {ctx.step} epoch {epoch + 1} (losses {means}): "
                             f"lower train.lr / train.lr_next")
        terms_txt = " ".join(f"{k} {v:.4f}" for k, v in means.items() if k != "loss")
        log(f"  step {ctx.step} epoch {epoch + 1}/{epochs}  loss {means.get('loss', float('nan')):.4f}"
            f"{'  (' + terms_txt + ')' if terms_txt else ''}  {time.perf_counter() - start:.1f}s")
        method.end_epoch(ctx)
        if on_epoch is not None:
            on_epoch(epoch, means)
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
    if world()[1] > 1:  # each rank scored its shard: add the counts up
        for cm in (ev.ignore, ev.bg):
            dist.all_reduce(cm.mat, op=dist.ReduceOp.SUM)
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
    except Exception as e:  # noqa: BLE001 - truncated, not a zip/pickle, a pickle with code, ...
        raise WilssError(f"cannot read checkpoint {path} ({type(e).__name__}): the file is truncated or "
                         f"not a wilss checkpoint; delete it to retrain the step") from None
    meta = state.get("meta", {}) if isinstance(state, dict) else {}
    for key, value in (expect or {}).items():
        if meta.get(key) != value:
            raise WilssError(f"checkpoint {path} was made for {key}={meta.get(key)!r}, not {value!r}: it "
                             f"belongs to another run; delete it to retrain the step, or choose another --out")
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        lines = str(e).splitlines()  # torch's first line only names the module
        detail = " ".join(" ".join(lines[1:] or lines).split())
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        raise WilssError(f"checkpoint {path} does not fit the model ({detail}): it was made with another "
                         f"backbone or class count; delete it to retrain the step, or choose another --out") from None
    return meta, state.get("extra", {})


# --------------------------------------------------------------------------------------------------
# data parallelism over torch.distributed (gloo on CPU, nccl on GPU), set up by the launcher
#
# Why not DistributedDataParallel: methods call submodules directly (``model.encode``, a plug-in
# teacher, a localizer, the frozen previous model), and a DDP wrapper only reduces gradients of
# what runs through its own forward. So the engine averages, after backward, the gradient of every
# parameter the optimiser updates, in flat buckets (one all-reduce per ~25 MB, not one per tensor).
# Gradients a rank did not produce count as zero; a parameter no rank touched keeps ``grad=None``,
# so the optimiser skips it exactly as in one process. BN running statistics are averaged after
# every epoch, so all ranks evaluate (and rank 0 saves) the same model.


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside ``torch.distributed``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardSampler(Sampler[int]):
    """Indices rank, rank + size, ... of a dataset: disjoint shards, no padding (evaluation)."""

    def __init__(self, n: int, rank: int, size: int):
        self.indices = list(range(rank, n, size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def shard_sampler(dataset, train: bool, seed: int) -> Sampler | None:
    """This rank's sampler (None in one process): shuffled equal shards for training (a
    ``DistributedSampler``, padded so every rank runs the same number of iterations), disjoint
    unpadded shards for evaluation (so no image is scored twice)."""
    rank, size = world()
    if size == 1:
        return None
    if train:
        return DistributedSampler(dataset, num_replicas=size, rank=rank, shuffle=True, seed=seed)
    return ShardSampler(len(dataset), rank, size)


def broadcast_(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` (in place) with rank ``src``'s values."""
    seen = set()
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            dist.broadcast(t.data, src)


def _buckets(tensors: list[torch.Tensor], cap_bytes: int) -> list[list[int]]:
    """Indices of ``tensors`` grouped by (device, dtype) into buckets of at most ~cap_bytes."""
    out, current, size, key = [], [], 0, None
    for i, t in enumerate(tensors):
        k = (t.device, t.dtype)
        nbytes = t.numel() * t.element_size()
        if current and (k != key or size + nbytes > cap_bytes):
            out.append(current)
            current, size = [], 0
        current.append(i)
        size, key = size + nbytes, k
    if current:
        out.append(current)
    return out


def allreduce_gradients(params: list[torch.Tensor], bucket_mb: float = 25.0) -> None:
    """Average the gradients of ``params`` over all ranks (see the section comment)."""
    size = world()[1]
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    dist.all_reduce(has)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    for idx in _buckets(grads, int(bucket_mb * 2**20)):
        flat = torch.cat([grads[i].reshape(-1) for i in idx])
        dist.all_reduce(flat)
        flat /= size
        offset = 0
        for i in idx:
            n = grads[i].numel()
            if has[i] > 0:
                value = flat[offset:offset + n].view_as(grads[i])
                if params[i].grad is None:
                    params[i].grad = value.clone()
                else:
                    params[i].grad.copy_(value)
            offset += n


def average_buffers_(module: nn.Module) -> None:
    """Average the floating-point buffers (BN running mean/var) of ``module`` over all ranks."""
    size = world()[1]
    for b in module.buffers():
        if b.is_floating_point():
            dist.all_reduce(b.data)
            b.data /= size


def allreduce_means(sums: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Average per-rank loss sums over all ranks. Ranks may hold different terms (a term a batch
    did not need); a term a rank lacks counts as 0 there."""
    size = world()[1]
    names: list[list[str]] = [[] for _ in range(size)]
    dist.all_gather_object(names, sorted(sums))
    keys = sorted(set().union(*names))
    if not keys:
        return sums
    flat = torch.stack([torch.as_tensor(sums.get(k, 0.0), dtype=torch.float32, device=device) for k in keys])
    dist.all_reduce(flat)
    return dict(zip(keys, flat / size))
