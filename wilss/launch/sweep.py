"""The sweep runner: a Ray Tune experiment (grid or Optuna) of ``wilss.launch.trial`` trials.

    run_sweep(spec, Search(kind="grid", grid={"pseudo.n_seeds": [1, 3, 5]}), tasks=("10-5",), repeats=2)

- Grid (ablations): ``tune.grid_search`` over the knobs x tasks x seeds (``train.seed``), FIFO.
- Optuna: TPE, seeded, the preset's values of the searched knobs as the first trial, inside a
  ``ConcurrencyLimiter``; optional Optuna RDB storage for the study; optional ASHA on ``inc_step``.
  Objective ``per-task``: one study per task (Tune experiments ``<sweep>.<task>``); ``mean``: one study
  whose trials run every task and report the mean of the tasks' final metric.
- Everything is checked before Ray starts (keys, bounds, values, tasks, metric: ConfigError naming
  the key); a rerun of the same sweep resumes it (``Tuner.restore``), another sweep under the same
  name is refused.
- Concurrency: what the cluster's GPUs (or CPUs) hold, given each trial's needs (RAY.md P3: Train
  placement groups are invisible to Tune, so Tune's own accounting cannot be relied on).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field

from wilss.atomic import check_writable_dir
from wilss.config import flatten, override
from wilss.errors import ConfigError, WilssError
from wilss.launch import space as sp
from wilss.launch.storage import (
    Storage,
    check_name,
    read_rows,
    read_sweep_record,
    write_sweep_record,
)
from wilss.launch.trial import METRICS, SweepSpec, n_reports, trial_main
from wilss.methods import create_method


@dataclass(frozen=True)
class Search:
    kind: str = "grid"  # "grid" or "optuna"
    grid: dict = field(default_factory=dict)  # grid: knob -> values
    space: tuple[str, ...] = ()  # optuna: "key=low:high[:log]" / "key=a,b,c" entries
    num_samples: int = 8  # optuna: trials per study
    seed: int = 0  # optuna: TPE seed
    optuna_storage: str = ""  # optuna: an RDB URL (sqlite:///study.db, postgresql://...) for the study
    scheduler: str = "fifo"  # or "asha"


@dataclass(frozen=True)
class Plan:
    """One Tune experiment of a sweep."""

    experiment: str
    spec: SweepSpec
    param_space: dict  # grid: key -> values; optuna: {}
    params: list  # optuna: [space.Param]
    total: int  # trials
    first_point: dict | None = None


@dataclass
class SweepResult:
    rows: object  # pandas.DataFrame: every row of the sweep
    failed: list[str]  # trial ids that errored
    storage: Storage


def plan(spec: SweepSpec, search: Search, tasks: tuple[str, ...] = (), repeats: int = 1) -> list[Plan]:
    """Check everything and lay out the sweep's Tune experiments (no Ray needed)."""
    check_name("sweep name", spec.name)
    if spec.metric not in METRICS:
        raise ConfigError(f"metric '{spec.metric}' is not a result metric: choose one of {', '.join(METRICS)}")
    if spec.mode not in ("max", "min") or spec.objective not in ("per-task", "mean"):
        raise ConfigError("mode is max or min; objective is per-task or mean")
    if spec.workers < 0:
        raise ConfigError(f"--workers must be >= 0 (0 = train inside the trial), got {spec.workers}")
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}")
    if spec.gpus_per_trial < 0:
        raise ConfigError(f"--gpus-per-trial must be >= 0, got {spec.gpus_per_trial:g}")
    if spec.cpus_per_worker <= 0 or spec.cpus_per_trial <= 0:
        raise ConfigError(f"--cpus-per-worker must be > 0, got {min(spec.cpus_per_worker, spec.cpus_per_trial):g}")
    base = override(spec.base, {})  # validates the whole base config
    tasks = tuple(tasks) or (base.data.task,)
    for t in tasks:
        check_name("task", t)
        override(base, {"data.task": t})  # an unknown task fails here, naming it
    methods = search.grid.get("method", [base.method]) if search.kind == "grid" else [base.method]
    for m in dict.fromkeys(methods):  # missing model files etc. fail here, not in every trial
        create_method(str(m)).check(override(base, {"method": m}))
    seeds = [base.train.seed + i for i in range(repeats)]
    spec = dataclasses.replace(spec, tasks=tasks if spec.objective == "mean" else ())
    if search.kind == "grid":
        grid = sp.parse_grid(base, search.grid)
        dims = dict(grid)
        if spec.objective == "per-task" and (len(tasks) > 1 or tasks[0] != base.data.task):
            dims["data.task"] = list(tasks)
        if repeats > 1:
            dims["train.seed"] = seeds
        sp.parse_grid(base, dims)
        return [Plan(spec.name, spec, dims, [], sp.grid_size(dims))]
    if search.kind != "optuna":
        raise ConfigError(f"search kind '{search.kind}' is grid or optuna")
    if search.scheduler not in ("fifo", "asha"):
        raise ConfigError(f"scheduler '{search.scheduler}' is fifo or asha")
    if repeats > 1:
        raise ConfigError("an Optuna trial runs one seed: run the best point with more seeds as a grid "
                          "(experiments/sweep.py --repeats does)")
    if search.num_samples < 1:
        raise ConfigError(f"--trials must be >= 1, got {search.num_samples}")
    params = sp.parse_space(base, search.space)
    if not params:
        raise ConfigError("the search space is empty: give --space key=low:high or key=a,b,c")
    if spec.objective == "mean":
        return [Plan(spec.name, spec, {}, params, search.num_samples, sp.default_point(base, params))]
    plans = []
    for t in tasks:
        tb = override(base, {"data.task": t})
        name = spec.name if len(tasks) == 1 else f"{spec.name}.{t}"
        plans.append(Plan(name, dataclasses.replace(spec, base=tb), {}, params, search.num_samples,
                          sp.default_point(tb, params)))
    return plans


def _record(plans: list[Plan], search: Search) -> dict:
    """What identifies a sweep: a rerun with the same record resumes it."""
    return {"experiments": [{"name": p.experiment, "base": flatten(p.spec.base), "tasks": list(p.spec.tasks),
                             "grid": p.param_space, "space": sp.as_dict(p.params), "trials": p.total,
                             "metric": p.spec.metric, "mode": p.spec.mode, "objective": p.spec.objective}
                            for p in plans],
            "search": {"kind": search.kind, "seed": search.seed, "scheduler": search.scheduler}}


def _differences(old, new, path: str = "") -> list[str]:
    """Where two sweep records differ. Config keys present in only one of them (a knob added to or
    removed from wilss since) do not count: their values cannot have been chosen differently."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = set(old) & set(new) if path.endswith("base") else set(old) | set(new)
        return [d for k in sorted(keys) for d in _differences(old.get(k), new.get(k), f"{path}.{k}" if path else k)]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in _differences(a, b, f"{path}.{i}")]
    if old == new:
        return []
    parts = path.split(".")  # experiments.<i>.base.<key> -> <key>
    return [".".join(parts[3:]) if parts[:1] == ["experiments"] and parts[2:3] == ["base"] else path]


def _trial_dirname(trial) -> str:
    return trial.trial_id


def trial_needs(spec: SweepSpec) -> tuple[float, float]:
    """(CPUs, GPUs) one trial occupies while it trains."""
    if spec.workers == 0:
        return spec.cpus_per_trial, spec.gpus_per_trial
    return spec.workers * spec.cpus_per_worker, spec.gpus_per_trial


def fits(spec: SweepSpec, totals: dict) -> int:
    """How many trials the cluster runs at once; WilssError when not even one fits."""
    cpu, gpu = trial_needs(spec)
    n = math.inf
    if cpu:
        n = min(n, math.floor(totals["CPU"] / cpu + 1e-9))
    if gpu:
        n = min(n, math.floor(totals["GPU"] / gpu + 1e-9))
    if n < 1:
        raise WilssError(f"one trial needs {cpu:g} CPUs and {gpu:g} GPUs but the cluster has "
                         f"{totals['CPU']:g} CPUs and {totals['GPU']:g} GPUs: lower --workers or --gpus-per-trial")
    return int(n) if n != math.inf else 1


def _trainable(spec: SweepSpec, totals: dict):
    from ray import tune

    from wilss.launch.cluster import DRIVER_RESOURCE

    if spec.workers == 0:  # the trial trains: it holds what it trains with
        res = {"cpu": spec.cpus_per_trial} | ({"gpu": spec.gpus_per_trial} if spec.gpus_per_trial else {})
    elif totals.get(DRIVER_RESOURCE):  # the trial only drives Train workers: hold (almost) nothing
        res = {"cpu": 0, DRIVER_RESOURCE: 0.01}
    else:
        print(f"warning: the cluster declares no {DRIVER_RESOURCE} resource; trial drivers take 0.01 CPU")
        res = {"cpu": 0.01}
    return tune.with_resources(tune.with_parameters(trial_main, spec=spec), res)


def _tuner(p: Plan, search: Search, storage: Storage, concurrency: int, totals: dict, started: float):
    from ray import tune

    from wilss.launch.progress import Progress

    path = storage.uri_of("ray", p.experiment)
    trainable = _trainable(p.spec, totals)
    if tune.Tuner.can_restore(path):
        print(f"[{p.experiment}] resuming the Tune experiment at {path}")
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    keys = tuple(p.param_space) + tuple(q.key for q in p.params)
    scheduler = None
    if search.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="inc_step", max_t=n_reports(p.spec.base, p.spec.trial_tasks(p.spec.base)),
                                  grace_period=1, reduction_factor=3)
    if search.kind == "grid":
        param_space = {k: tune.grid_search(v) for k, v in p.param_space.items()}
        tune_config = tune.TuneConfig(metric="objective", mode=p.spec.mode, num_samples=1, scheduler=scheduler,
                                      max_concurrent_trials=min(concurrency, p.total),
                                      trial_dirname_creator=_trial_dirname, reuse_actors=True)
    else:
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage_rdb = optuna.storages.RDBStorage(search.optuna_storage) if search.optuna_storage else None
        # metric/mode go to the searcher itself: Tune does not forward them for a define-by-run space (P5)
        searcher = OptunaSearch(space=sp.DefineByRun(p.params), metric="objective", mode=p.spec.mode,
                                points_to_evaluate=[p.first_point] if p.first_point else None, seed=search.seed,
                                study_name=p.experiment, storage=storage_rdb)
        param_space = {}
        tune_config = tune.TuneConfig(metric="objective", mode=p.spec.mode, num_samples=p.total,
                                      search_alg=ConcurrencyLimiter(searcher, max_concurrent=min(concurrency, p.total)),
                                      scheduler=scheduler, trial_dirname_creator=_trial_dirname, reuse_actors=True)
    run_config = tune.RunConfig(name=p.experiment, storage_path=storage.uri_of("ray"),
                                failure_config=tune.FailureConfig(max_failures=1),
                                callbacks=[Progress(p.experiment, p.total, p.spec.metric, p.spec.mode, keys, started)],
                                verbose=0)
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def _check_cluster(address: str | None) -> None:
    """An unreachable cluster address fails here, before the sweep writes anything."""
    import os
    import sys

    address = address or os.environ.get("RAY_ADDRESS")
    if address and not ("ray" in sys.modules and sys.modules["ray"].is_initialized()):
        from wilss.launch.cluster import check_reachable

        check_reachable(address)


def run_sweep(spec: SweepSpec, search: Search, *, tasks: tuple[str, ...] = (), repeats: int = 1,
              resume: bool = False, address: str | None = None, concurrency: int | None = None) -> SweepResult:
    """Run (or resume) a sweep; returns its rows. Checks everything before Ray starts."""
    started = time.monotonic()
    if concurrency is not None and concurrency < 1:
        raise ConfigError(f"--concurrency must be >= 1, got {concurrency} (leave it out to fill the cluster)")
    plans = plan(spec, search, tasks, repeats)
    storage = Storage(spec.storage)
    storage.check_writable()
    if spec.artifacts and "://" not in spec.artifacts:
        check_writable_dir(spec.artifacts, "--artifacts")
    _check_cluster(address)
    record = json.loads(json.dumps(_record(plans, search), default=str))  # as it reads back from disk
    old = read_sweep_record(storage, spec.name)
    if old is None and resume:
        raise WilssError(f"nothing to resume: {storage.uri} holds no sweep '{spec.name}' (drop --resume to start it)")
    if old is not None:
        diff = _differences(old, record)
        if diff:
            raise WilssError(f"{storage.uri} holds a sweep '{spec.name}' started with other settings "
                             f"({', '.join(diff[:4])}{', ...' if len(diff) > 4 else ''}; other flags, or defaults "
                             f"changed in wilss since): choose another --name or --storage, or rerun with the "
                             f"same flags to resume it")
        print(f"[{spec.name}] resuming ({len(read_rows(storage, spec.name))} rows so far)")
    else:
        write_sweep_record(storage, spec.name, record)

    from wilss.launch.cluster import alive_nodes, cluster_totals, ray_session

    failed: list[str] = []
    with ray_session(address):
        totals = cluster_totals()
        n = concurrency or fits(spec, totals)
        cpu, gpu = trial_needs(spec)
        print(f"[{spec.name}] {sum(p.total for p in plans)} trials, up to {n} at once ({cpu:g} CPU"
              f"{f', {gpu:g} GPU' if gpu else ''} each; cluster {totals['CPU']:g} CPU, {totals['GPU']:g} GPU); "
              f"results in {storage.uri_of('results', f'sweep={spec.name}')}", flush=True)
        if storage.local and alive_nodes() > 1:
            print(f"[{spec.name}] note: {storage.uri} must be a folder every node mounts (NFS), or give an "
                  f"s3:// storage: trials on other nodes write their rows and artifacts there", flush=True)
        if spec.share_stages and spec.workers == 0:  # shared evidence and steps first, with the whole node
            from wilss.launch.cluster import free_node_cpus
            from wilss.launch.prebuild import build_shared, shared_evidence, shared_jobs

            build_shared(shared_evidence(plans) + shared_jobs(plans), spec, free_node_cpus(spec.gpus_per_trial),
                         log=lambda m: print(m, flush=True))
        for p in plans:
            grid = _tuner(p, search, storage, n, totals, started).fit()
            failed += [r.path.rstrip("/").rsplit("/", 1)[-1] for r in grid if r.error is not None]
    return SweepResult(read_rows(storage, spec.name), failed, storage)
