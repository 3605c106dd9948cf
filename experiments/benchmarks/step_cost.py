"""Benchmark: two exact shortcuts in a training step, each against the plain way, side by side in one
process (issue "Performance": what makes a step, and so every trial, cheaper).

  atrous    one FMWISS training iteration at step 0 (student) and at a weak step (student, plug-in
            teacher, frozen previous model; forward, backward, AdamW step) with the ASPP's atrous convs
            skipping the taps that only read zero padding (``wilss.models.aspp``) vs torch's full conv.
            The same outputs and gradients; on the synthetic default's 8x8 feature maps the rates 12,
            24 and 36 reach past the whole map.
  evidence  reading one image's cached foundation evidence: the store's file (one read, one sha256 over
            raw bytes; ``wilss.foundation.cache``) vs ``torch.save`` / ``torch.load`` of the same tensors
            (zip + pickle) with the same sha256 check, at the synthetic size and at ViT-B/16 448 px.

    python experiments/benchmarks/step_cost.py [--threads 1] [--repeats 10]

Weights are random (the cost does not depend on their values) and the batches are the synthetic
benchmark's, so it runs offline; the first run prepares the synthetic data and its evidence (~1 minute).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import platform
import tempfile
from pathlib import Path

import torch
from pseudo_labels import timeit  # experiments/benchmarks/: the same timer as the pseudo-label benchmark
from torch import nn

from wilss import engine
from wilss.config import override
from wilss.data.datasets import default_cache_dir, prepare
from wilss.foundation.cache import EvidenceStore
from wilss.methods import StepContext, create_method
from wilss.models.aspp import AtrousConv2d
from wilss.presets import preset
from wilss.protocol import step_sizes, train_loader


def full_convs_(model: nn.Module) -> None:
    """Turn every ``AtrousConv2d`` back into torch's ``nn.Conv2d`` (the plain way; same parameters)."""
    for m in model.modules():
        if isinstance(m, AtrousConv2d):
            m.__class__ = nn.Conv2d


def iteration(step: int, plain: bool, repeats: int) -> float:
    """Median seconds of one FMWISS training iteration at ``step`` (0, or 1: the weak step)."""
    cfg = override(preset("synthetic"), {"method": "fmwiss"})
    cache = default_cache_dir()
    data = prepare(cfg.data, cache, progress=False)
    method = create_method("fmwiss")
    torch.manual_seed(0)
    model = method.create_model(cfg, step_sizes(data, 0))
    prev = None
    if step > 0:
        prev = copy.deepcopy(model).eval().requires_grad_(False)
        model.add_head(len(data.task.new(step)))
    ctx = StepContext(cfg, data.task, step, model, prev, torch.device("cpu"), data=data, cache_dir=cache,
                      log=lambda m: None)
    method.begin_step(ctx)
    for m in (model, prev, method.teacher):
        if plain and m is not None:
            full_convs_(m)
    batch = next(iter(train_loader(method, ctx)))
    optimizer = engine.make_optimizer(method.param_groups(ctx, 1e-4), cfg.train)
    ctx.epoch, ctx.epochs = cfg.fmwiss.warmup_epochs, cfg.train.epochs_next  # past the warm-up: every loss
    model.train()
    method.begin_epoch(ctx)

    def one() -> None:
        terms = method.losses(ctx, batch)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()

    return timeit(one, repeats)


# evidence of one image: synthetic (tiny CLIP 64 x 8 x 8, tiny ViT 4 heads x 64 tokens x 32) and
# real (CLIP ViT-B/16 512 x 28 x 28, DINO ViT-B/16 12 heads x 784 tokens x 64, both at 448 px)
EVIDENCE = {
    "synthetic": {"clip": (64, 8, 8), "q": (4, 64, 32), "k": (4, 64, 32)},
    "ViT-B/16 448 px": {"clip": (512, 28, 28), "q": (12, 784, 64), "k": (12, 784, 64)},
}


def evidence_reads(shapes: dict, repeats: int) -> tuple[float, float]:
    """Median seconds to read one image's evidence: (the store's format, torch.load + sha256)."""
    tensors = {k: torch.randn(s).half() for k, s in shapes.items()}
    with tempfile.TemporaryDirectory() as tmp:
        store = EvidenceStore(tmp)
        store.write("m", "ab" * 32, tensors)
        legacy = Path(tmp, "legacy.pt")
        torch.save({"key": "ab" * 32, "tensors": tensors}, legacy)

        def torch_load() -> None:
            blob = torch.load(legacy, map_location="cpu", weights_only=True)
            h = hashlib.sha256()
            for name in sorted(blob["tensors"]):
                h.update(blob["tensors"][name].view(torch.uint8).numpy().tobytes())

        assert all(torch.equal(store.read("m", "ab" * 32)[k], tensors[k]) for k in tensors)
        return timeit(lambda: store.read("m", "ab" * 32), repeats), timeit(torch_load, repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s); synthetic default (resnet-tiny, 64 px, batch 32)")
    print(f"\nFMWISS training iteration (median of {args.repeats} after a warm-up)")
    print(f"{'step':<22} {'full atrous conv':>17} {'skip padding taps':>18} {'ratio':>7}")
    for step, name in ((0, "step 0 (student)"), (1, "weak step (all parts)")):
        full, fast = iteration(step, True, args.repeats), iteration(step, False, args.repeats)
        print(f"{name:<22} {full * 1e3:>14.1f} ms {fast * 1e3:>15.1f} ms {full / fast:>6.2f}x")
    print(f"\nreading one image's cached evidence (median of {args.repeats * 20})")
    print(f"{'size':<22} {'torch.load + sha256':>20} {'store format':>14} {'ratio':>7}")
    for name, shapes in EVIDENCE.items():
        fast, slow = evidence_reads(shapes, args.repeats * 20)
        print(f"{name:<22} {slow * 1e3:>17.3f} ms {fast * 1e3:>11.3f} ms {slow / fast:>6.1f}x")


if __name__ == "__main__":
    main()
