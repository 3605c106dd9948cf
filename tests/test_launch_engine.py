"""Data-parallel engine (what a Ray Train worker group runs), checked in two gloo processes without
Ray: averaged gradients reproduce one process training on the union of the ranks' batches, every
rank ends with the same weights, sharded evaluation adds up to the whole set, and loss terms or
gradients that only some ranks produce are handled."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from wilss import engine
from wilss.config import TrainConfig
from wilss.methods.base import Method, StepContext

N, B, WORLD = 24, 4, 2  # images, per-rank batch, ranks
CFG = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, amp=False)


class Pixels(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(N, 3, 8, 8, generator=g)
        self.y = torch.randint(0, 3, (N, 8, 8), generator=g)

    def __len__(self):
        return N

    def __getitem__(self, i):
        return {"image": self.x[i], "mask": self.y[i]}


class Toy(Method):
    """Mean pixel CE (so the mean of two half-batch gradients is the union batch's gradient)."""

    name = "toy"

    def param_groups(self, ctx, lr):
        return [{"params": list(ctx.model.parameters()), "lr": lr}]

    def lr_lambda(self, ctx, max_iters, iters_per_epoch):
        return lambda i: 1.0

    def losses(self, ctx, batch):
        ce = F.cross_entropy(ctx.model(batch["image"]), batch["mask"])
        return {"loss": ce, "ce": ce}


def make_model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))


def ctx_of(model):
    return StepContext(cfg=None, task=None, step=0, model=model, prev_model=None, device=torch.device("cpu"))


class UnionBatches:
    """One process's loader whose batch i is the union of the ranks' batches i, epoch by epoch."""

    def __init__(self, ds):
        self.ds, self.epoch = ds, 0

    def _shard(self, rank):
        sampler = DistributedSampler(self.ds, WORLD, rank, shuffle=True, seed=7)
        sampler.set_epoch(self.epoch)
        return list(sampler)

    def __len__(self):
        return math.ceil(len(self._shard(0)) / B)

    def __iter__(self):
        shards = [self._shard(r) for r in range(WORLD)]
        self.epoch += 1
        for i in range(0, len(shards[0]), B):
            idx = [j for s in shards for j in s[i:i + B]]
            yield {"image": self.ds.x[idx], "mask": self.ds.y[idx]}


def _rank(rank, port, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        ds = Pixels()
        model = make_model()
        if rank == 1:  # a rank that starts from other weights is overwritten by rank 0's
            with torch.no_grad():
                model[0].weight.add_(1.0)
        loader = DataLoader(ds, batch_size=B, sampler=DistributedSampler(ds, WORLD, rank, shuffle=True, seed=7))
        means = engine.fit(Toy(), ctx_of(model), loader, 2, CFG.lr, CFG, log=lambda m: None)

        ev = engine.evaluate(model, DataLoader(ds, batch_size=5, sampler=engine.ShardSampler(N, rank, WORLD)), 3,
                             lambda logits: logits.argmax(1), torch.device("cpu"), amp=False)

        # terms and gradients only some ranks produce
        terms = engine.allreduce_means({"a": torch.tensor(2.0)} | ({"b": torch.tensor(4.0)} if rank else {}))
        p_some, p_none = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3))
        if rank == 0:
            (p_some * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
        engine.allreduce_gradients([p_some, p_none])
        torch.save({"state": model.state_dict(), "means": means, "cm": ev.ignore.mat, "terms": terms,
                    "some": p_some.grad, "none": p_none.grad}, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_match_one_process_on_the_union_batches(tmp_path):
    mp.spawn(_rank, args=(free_port(), tmp_path), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))

    ref = make_model()
    ref_means = engine.fit(Toy(), ctx_of(ref), UnionBatches(Pixels()), 2, CFG.lr, CFG, log=lambda m: None)
    for key, value in ref.state_dict().items():
        assert torch.equal(r0["state"][key], r1["state"][key]), key  # every rank holds the same model
        assert torch.allclose(r0["state"][key], value, atol=1e-5), key  # = one process, union batches
    assert r0["means"]["loss"] == pytest.approx(ref_means["loss"], rel=1e-4)

    full = engine.evaluate(ref, DataLoader(Pixels(), batch_size=5), 3, lambda lg: lg.argmax(1),
                           torch.device("cpu"), amp=False)
    assert torch.equal(r0["cm"], full.ignore.mat) and torch.equal(r1["cm"], full.ignore.mat)

    assert {k: float(v) for k, v in r0["terms"].items()} == {"a": 2.0, "b": 2.0}
    assert torch.allclose(r1["some"], torch.tensor([0.5, 1.0, 1.5])) and r1["none"] is None
