"""Shared stages first: before a sweep's trials start, build the steps several trials share, once each,
with a whole machine.

A sweep over FMWISS's step-1 knobs (N, λ, α, β, fusion) shares step 0 between all its trials. Left to
the trials, one of them trains it on its own CPU while the others wait for it with theirs idle
(``experiments/benchmarks/sweep_cost.py`` measured 25% of a 2-core sweep lost that way). Built here
first, it gets every CPU of a node (or its trial's GPU share), and the trials find it in the step store
and start on their own steps at once.

    jobs = shared_jobs(plans)         # ray-free: which leading steps more than one trial needs
    build_shared(jobs, spec, totals)  # one Ray task per chain, all CPUs of a node between them

Only the in-trial training path (``workers == 0``) builds here: with Ray Train workers a step already
runs on the trial's whole worker group. Building goes through ``wilss.launch.steps.ensure_step``, so
an artifact already in the store (a resumed sweep, another sweep) is reused, and a build killed
halfway publishes nothing.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import dataclass

from wilss.artifacts import step_config, step_key
from wilss.config import Config, override
from wilss.data.tasks import get_task
from wilss.methods import create_method


@dataclass(frozen=True)
class Job:
    """The leading steps ``steps`` (0, 1, ...) of ``cfg``'s run that ``users`` trials share."""

    cfg: Config
    steps: tuple[int, ...]
    keys: tuple[str, ...]
    users: int

    def describe(self) -> str:
        steps = ", ".join(map(str, self.steps))
        return f"step {steps} of {self.cfg.data.task} (seed {self.cfg.train.seed}), shared by {self.users} trials"


def trial_configs(plan) -> tuple[list[Config], int | None]:
    """The configs a plan's trials will run (one per trial and task) and the last step they can
    share (None: any). A grid enumerates its points; an Optuna study is known only at its default
    point, and its trials share step 0 alone, when no searched key determines step 0."""
    spec = plan.spec
    if plan.param_space:  # grid
        keys = list(plan.param_space)
        points = [dict(zip(keys, values)) for values in itertools.product(*plan.param_space.values())]
        last = None
    else:  # optuna: sampled later; the step-0 config must not depend on any searched key
        method = create_method(spec.base.method)
        fixed = step_config(spec.base, 0, method.sections, method.step0_keys)
        if any(p.key in fixed for p in plan.params):
            return [], 0
        points = [plan.first_point or {}] * plan.total
        last = 0
    configs = []
    for point in points:
        cfg = override(spec.base, point)
        configs += [override(cfg, {"data.task": t}) if t != cfg.data.task else cfg for t in spec.trial_tasks(cfg)]
    return configs, last


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


def build_shared(jobs: list[Job], spec, cpus: float, log=print) -> float:
    """Build every job's steps into ``spec.artifacts``, the jobs side by side on ``cpus`` CPUs of a
    node between them (each at least the trial's own share) and the trial's GPUs. Returns the wall time."""
    import ray

    from wilss.artifacts import StepStore

    store = StepStore(spec.artifacts)
    jobs = [j for j in jobs if store.get(j.keys[-1]) is None]  # a resumed sweep: built before
    if not jobs:
        return 0.0
    t0 = time.perf_counter()
    each = max(spec.cpus_per_trial, float(int(cpus // len(jobs))))
    opts = {"num_cpus": each} | ({"num_gpus": spec.gpus_per_trial} if spec.gpus_per_trial else {})
    for job in jobs:
        log(f"[{spec.name}] building {job.describe()}, before the trials, with {each:g} CPU"
            f"{f' and {spec.gpus_per_trial:g} GPU' if spec.gpus_per_trial else ''}")
    build = ray.remote(**opts)(_build_job)
    refs = [build.remote(job, spec.artifacts, int(each), spec.storage, spec.name) for job in jobs]
    for job, ref in zip(jobs, refs):
        try:
            log(f"[{spec.name}] built {job.describe()} in {ray.get(ref):.0f}s")
        except Exception as e:  # noqa: BLE001 - any failure: the trials build it and record their errors
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            log(f"[{spec.name}] warning: building {job.describe()} failed ({first}); the trials will try "
                f"it themselves (log: shared-{job.keys[-1]}.log)")
    return time.perf_counter() - t0


def _build_job(job: Job, artifacts: str, threads: int, storage: str, sweep: str) -> float:
    """(a Ray task) Build ``job`` with ``threads`` torch threads; its log goes to the sweep's log folder."""
    import torch

    from wilss.artifacts import StepStore
    from wilss.launch.steps import ensure_step
    from wilss.launch.storage import Storage
    from wilss.launch.trial import local_build, log_file

    torch.set_num_threads(max(1, threads))
    t0 = time.perf_counter()
    with log_file(Storage(storage), sweep, f"shared-{job.keys[-1]}") as log:
        store, previous, build = StepStore(artifacts), None, local_build(log)
        for step, key in zip(job.steps, job.keys):
            ensure_step(job.cfg, step, key, build, previous, store, log)
            previous = store.get(key) / "checkpoint.pt"
    return time.perf_counter() - t0
