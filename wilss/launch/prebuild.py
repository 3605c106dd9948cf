"""Shared stages first: before a sweep's trials start, build what several trials share, once each,
with a whole machine: the foundation evidence of the weak steps' images, then the leading steps.

A sweep over FMWISS's step-1 knobs (N, λ, α, β, fusion) shares step 0 between all its trials, and
the CLIP / ViT evidence of the step-1 images. Left to the trials, one of them builds each on its own
CPU (or GPU share) while the others wait for it with theirs idle (``experiments/benchmarks/
sweep_cost.py`` measured 25% of a 2-core sweep lost that way). Built here first, each gets every CPU
of a node (or its trial's GPU share), and the trials find them in the step store and the evidence
cache and start training at once.

    jobs = shared_evidence(plans) + shared_jobs(plans)  # ray-free: what more than one trial needs
    build_shared(jobs, spec, cpus)                      # evidence jobs, then step jobs; Ray tasks

Only the in-trial training path (``workers == 0``) builds here: with Ray Train workers a step already
runs on the trial's whole worker group. Steps are built through ``wilss.launch.steps.ensure_step`` and
evidence through ``wilss.foundation.evidence.ensure_task_evidence``, so what the store or the cache
holds (a resumed sweep, another sweep) is reused, and a build killed halfway publishes nothing. The
evidence goes to the trials' cache folder (``data.cache_dir``, else the node's default): on a
multi-node cluster without a shared ``data.cache_dir`` only the trials on the building node find it.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import dataclass

from wilss.artifacts import NEUTRAL, step_config, step_key
from wilss.config import Config, flatten, override
from wilss.data.tasks import get_task
from wilss.methods import create_method


@dataclass(frozen=True)
class Job:
    """The leading steps ``steps`` (0, 1, ...) of ``cfg``'s run that ``users`` trials share."""

    cfg: Config
    steps: tuple[int, ...]
    keys: tuple[str, ...]
    users: int

    phase = 1  # after the evidence

    def describe(self) -> str:
        steps = ", ".join(map(str, self.steps))
        return f"step {steps} of {self.cfg.data.task} (seed {self.cfg.train.seed}), shared by {self.users} trials"

    @property
    def name(self) -> str:  # of its log file
        return f"shared-{self.keys[-1]}"

    def pending(self, spec) -> bool:
        from wilss.artifacts import StepStore

        return StepStore(spec.artifacts).get(self.keys[-1]) is None

    def build(self, spec, log) -> None:
        from wilss.artifacts import StepStore
        from wilss.launch.steps import ensure_step
        from wilss.launch.trial import local_build

        store, previous, build = StepStore(spec.artifacts), None, local_build(log)
        for step, key in zip(self.steps, self.keys):
            ensure_step(self.cfg, step, key, build, previous, store, log)
            previous = store.get(key) / "checkpoint.pt"


@dataclass(frozen=True)
class EvidenceJob:
    """The foundation evidence of every weak step's images of ``cfg``'s task, which ``users`` trials read."""

    cfg: Config
    users: int
    phase = 0  # first: it needs no step, and step 1 needs it

    def describe(self) -> str:
        f = self.cfg.foundation
        return (f"the foundation evidence of {self.cfg.data.task} ({f.clip_model} + {f.vit_model}), "
                f"shared by {self.users} trials")

    @property
    def name(self) -> str:
        return f"shared-evidence-{evidence_key(self.cfg)}"

    def pending(self, spec) -> bool:  # the cache knows by reading it: the build itself skips what it holds
        return True

    def build(self, spec, log) -> None:
        from wilss.engine import resolve_device
        from wilss.foundation.evidence import ensure_task_evidence
        from wilss.launch.trial import shared_cache

        log(f"computing {self.describe()}")
        stats = ensure_task_evidence(self.cfg, shared_cache(self.cfg), resolve_device(self.cfg.train.device),
                                     progress=False, log=log)
        log(f"foundation evidence of {stats['images']} images: {stats['hits']} cached, {stats['misses']} "
            f"computed ({stats['seconds']:.1f}s)")


def evidence_key(cfg: Config) -> str:
    """What a task's evidence depends on (its data and foundation keys), hashed."""
    from wilss.foundation.cache import sha256_json

    keys = {k: v for k, v in flatten(cfg).items()
            if k.startswith(("data.", "foundation.", "train.device")) and k not in NEUTRAL}
    return sha256_json(keys)[:20]


def known_configs(plan) -> list[Config]:
    """The configs a plan's trials will run (one per trial and task), as far as the planner knows them:
    a grid enumerates its points; an Optuna study is known only at its default point (``first_point``),
    which stands for all of its trials."""
    spec = plan.spec
    if plan.param_space:  # grid
        keys = list(plan.param_space)
        points = [dict(zip(keys, values)) for values in itertools.product(*plan.param_space.values())]
    else:
        points = [plan.first_point or {}] * plan.total
    configs = []
    for point in points:
        cfg = override(spec.base, point)
        configs += [override(cfg, {"data.task": t}) if t != cfg.data.task else cfg for t in spec.trial_tasks(cfg)]
    return configs


def trial_configs(plan) -> tuple[list[Config], int | None]:
    """``known_configs`` and the last step they can share (None: any). An Optuna study's trials share
    step 0 alone, and only when no searched key determines step 0."""
    if plan.param_space:
        return known_configs(plan), None
    method = create_method(plan.spec.base.method)
    fixed = step_config(plan.spec.base, 0, method.sections, method.step0_keys)
    if any(p.key in fixed for p in plan.params):
        return [], 0
    return known_configs(plan), 0


def shared_jobs(plans) -> list[Job]:
    """For every chain of leading steps that at least two trials of the sweep need, one ``Job``."""
    runs = []  # (cfg, keys of its steps up to the shareable one)
    for plan in plans:
        configs, last = trial_configs(plan)
        for cfg in configs:
            method = create_method(cfg.method)
            if method.joint:
                continue
            n = get_task(cfg.data.dataset, cfg.data.task).n_steps
            steps = range(n if last is None else min(n, last + 1))
            runs.append((cfg, [step_key(cfg, s, method.sections, method.step0_keys) for s in steps]))
    users = Counter(k for _, keys in runs for k in keys)
    jobs: dict[str, Job] = {}
    for cfg, keys in runs:
        shared = list(itertools.takewhile(lambda k: users[k] > 1, keys))
        if shared and shared[-1] not in jobs:
            jobs[shared[-1]] = Job(cfg, tuple(range(len(shared))), tuple(shared), users[shared[-1]])
    return list(jobs.values())


def shared_evidence(plans) -> list[EvidenceJob]:
    """For every task's foundation evidence that at least two trials of the sweep read, one job. A grid
    knows every trial's config; an Optuna study shares it when no searched key is a data or foundation key."""
    users: Counter = Counter()
    first: dict[str, Config] = {}
    for plan in plans:
        if not plan.param_space and any(p.key.startswith(("data.", "foundation.")) for p in plan.params):
            continue  # an Optuna study that searches what the evidence depends on
        for cfg in known_configs(plan):
            method = create_method(cfg.method)
            if method.joint or not method.uses_evidence(cfg) or get_task(cfg.data.dataset, cfg.data.task).n_steps < 2:
                continue
            key = evidence_key(cfg)
            users[key] += 1
            first.setdefault(key, cfg)
    return [EvidenceJob(first[k], n) for k, n in users.items() if n > 1]


def build_shared(jobs: list, spec, cpus: float, log=print) -> float:
    """Build every job (``EvidenceJob`` and ``Job``: the evidence first, then the steps), the jobs of a
    phase side by side on ``cpus`` CPUs of a node between them (each at least the trial's own share) and
    the trial's GPUs. Returns the wall time."""
    t0 = time.perf_counter()
    for phase in sorted({j.phase for j in jobs}):
        _build_phase([j for j in jobs if j.phase == phase and j.pending(spec)], spec, cpus, log)
    return time.perf_counter() - t0


def _build_phase(jobs: list, spec, cpus: float, log) -> None:
    import ray

    if not jobs:
        return
    each = max(spec.cpus_per_trial, float(int(cpus // len(jobs))))
    opts = {"num_cpus": each} | ({"num_gpus": spec.gpus_per_trial} if spec.gpus_per_trial else {})
    for job in jobs:
        log(f"[{spec.name}] building {job.describe()}, before the trials, with {each:g} CPU"
            f"{f' and {spec.gpus_per_trial:g} GPU' if spec.gpus_per_trial else ''}")
    build = ray.remote(**opts)(_build_job)
    refs = [build.remote(job, spec, int(each)) for job in jobs]
    for job, ref in zip(jobs, refs):
        try:
            log(f"[{spec.name}] built {job.describe()} in {ray.get(ref):.0f}s")
        except Exception as e:  # noqa: BLE001 - any failure: the trials build it and record their errors
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            log(f"[{spec.name}] warning: building {job.describe()} failed ({first}); the trials will try "
                f"it themselves (log: {job.name}.log)")


def _build_job(job, spec, threads: int) -> float:
    """(a Ray task) Build ``job`` with ``threads`` torch threads; its log goes to the sweep's log folder."""
    import torch

    from wilss.launch.storage import Storage
    from wilss.launch.trial import log_file

    torch.set_num_threads(max(1, threads))
    t0 = time.perf_counter()
    with log_file(Storage(spec.storage), spec.name, job.name) as log:
        job.build(spec, log)
    return time.perf_counter() - t0
