"""The sweep runner without Ray: search spaces, grids, row paths, sweep planning, the step walker."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pytest

from wilss.artifacts import StepStore
from wilss.config import override
from wilss.errors import ConfigError, WilssError
from wilss.launch import space as sp
from wilss.launch.steps import RowSink, run_steps
from wilss.launch.storage import Storage, partition_schema, read_row_at, read_rows, row_path, write_row_at
from wilss.launch.sweep import Search, fits, plan, run_sweep
from wilss.launch.trial import SweepSpec, link_shared_data, trial_paths
from wilss.presets import preset
from wilss.protocol import run_step

ROOT = Path(__file__).resolve().parents[1]
FAST = {"data.crop_size": 32, "eval.size": 32, "train.epochs": 1, "train.epochs_next": 1,
        "train.batch_size": 16, "data.task": "10-5"}


@pytest.fixture
def base():
    return override(preset("synthetic"), {"method": "fmwiss"})


# --------------------------------------------------------------------------------------------------
# search spaces


@pytest.mark.parametrize("entry, key, words", [
    ("fmwiss.lamda_dcl=0:1", "fmwiss.lamda_dcl", "did you mean 'fmwiss.lambda_dcl'"),  # unknown key
    ("fmwiss.alpha=0:2", "fmwiss.alpha", "<= 1.0"),  # bound outside the knob's range
    ("fmwiss.lambda_dcl=-1:1", "fmwiss.lambda_dcl", ">= 0.0"),
    ("pseudo.fusion=union,concat", "pseudo.fusion", "must be one of"),  # a fusion that does not exist
    ("pseudo.fusion=a:b", "pseudo.fusion", "needs a number knob"),
    ("pseudo.n_seeds=1.5:9", "pseudo.n_seeds", "takes an integer"),
    ("fmwiss.beta=0.9:0.5", "fmwiss.beta", "must be below"),
    ("fmwiss.tau=0:1:log", "fmwiss.tau", ">= 0.0001"),
    ("fmwiss=0:1", "fmwiss", "is a section"),
])
def test_space_mistakes_name_the_key(base, entry, key, words):
    with pytest.raises(ConfigError, match=key) as err:
        sp.parse_space(base, [*sp.PAPER_SPACE, entry])
    assert words in str(err.value)


def test_paper_space_types_conditions_and_first_point(base):
    params = sp.parse_space(base, sp.PAPER_SPACE)
    by = {p.key: p for p in params}
    assert by["pseudo.n_seeds"].kind == "int" and by["fmwiss.lambda_dcl"].log
    assert by["pseudo.fusion"].choices == ("union", "intersection", "none")
    assert [p.key for p in params][-1] == "pseudo.n_seeds"  # after the fusion it depends on
    assert sp.default_point(base, params) == {"fmwiss.lambda_dcl": 0.1, "fmwiss.alpha": 0.5, "fmwiss.beta": 0.9,
                                              "pseudo.fusion": "union", "pseudo.n_seeds": 9}
    # N alone is pointless while fusion is none
    with pytest.raises(ConfigError, match="pseudo.n_seeds"):
        sp.parse_space(override(base, {"pseudo.fusion": "none"}), ["pseudo.n_seeds=1:9"])
    # booleans and strings are choices, converted as the knob takes them
    assert sp.parse_param(base, "fmwiss.dcl=true,false").choices == (True, False)


class FakeTrial:
    """The part of optuna.Trial a define-by-run space uses."""

    def __init__(self, fusion):
        self.fusion, self.asked = fusion, {}

    def suggest_categorical(self, name, choices):
        self.asked[name] = self.fusion
        return self.fusion

    def suggest_int(self, name, low, high, log=False):
        self.asked[name] = low
        return low

    def suggest_float(self, name, low, high, log=False):
        self.asked[name] = high
        return high


def test_define_by_run_samples_n_only_with_fusion(base):
    space = sp.DefineByRun(sp.parse_space(base, sp.PAPER_SPACE))
    with_fusion, without = FakeTrial("union"), FakeTrial("none")
    space(with_fusion)
    space(without)
    assert "pseudo.n_seeds" in with_fusion.asked and "pseudo.n_seeds" not in without.asked
    assert without.asked["fmwiss.alpha"] == 1.0


def test_grid_values_are_checked(base):
    assert sp.parse_grid(base, {"pseudo.n_seeds": ["3", 5]}) == {"pseudo.n_seeds": [3, 5]}
    with pytest.raises(ConfigError, match="pseudo.fusion"):
        sp.parse_grid(base, {"pseudo.fusion": ["union", "mean"]})
    with pytest.raises(ConfigError, match="fmwiss.paste_scale_min"):  # a cross-field rule per grid point
        sp.parse_grid(base, {"fmwiss.paste_scale_min": [0.5, 2.0]})


# --------------------------------------------------------------------------------------------------
# planning: everything fails before Ray starts


def spec_of(base, tmp_path, **kw):
    storage = Storage.of(tmp_path / "store")
    return SweepSpec(name=kw.pop("name", "s1"), base=base, storage=storage.uri, artifacts=str(tmp_path / "art"), **kw)


def test_naive_trials_get_their_own_store_and_cache(base, tmp_path):
    cfg = override(base, {"data.cache_dir": str(tmp_path / "cache")})
    shared = spec_of(base, tmp_path)
    assert trial_paths(shared, cfg, "a") == trial_paths(shared, cfg, "b") == (shared.artifacts, str(tmp_path / "cache"))
    naive = dataclasses.replace(shared, share_stages=False)
    (store_a, cache_a), (store_b, cache_b) = trial_paths(naive, cfg, "a"), trial_paths(naive, cfg, "b")
    assert len({store_a, store_b, shared.artifacts}) == 3 and len({cache_a, cache_b, str(tmp_path / "cache")}) == 3
    link_shared_data(tmp_path / "cache", cache_a)  # the data stays shared, the evidence does not
    assert (Path(cache_a) / "synthetic").resolve() == (tmp_path / "cache" / "synthetic").resolve()
    assert not (Path(cache_a) / "evidence").exists()


def test_plan_grid_dims_tasks_and_seeds(base, tmp_path):
    (p,) = plan(spec_of(base, tmp_path), Search(grid={"pseudo.n_seeds": [1, 3]}), ("10-5", "5-5"), repeats=2)
    assert p.param_space == {"pseudo.n_seeds": [1, 3], "data.task": ["10-5", "5-5"], "train.seed": [0, 1]}
    assert p.total == 8
    plans = plan(spec_of(base, tmp_path), Search(kind="optuna", space=sp.PAPER_SPACE, num_samples=3), ("10-5", "5-5"))
    assert [q.experiment for q in plans] == ["s1.10-5", "s1.5-5"] and plans[1].spec.base.data.task == "5-5"
    (mean,) = plan(spec_of(base, tmp_path, objective="mean"), Search(kind="optuna", space=sp.PAPER_SPACE),
                   ("10-5", "5-5"))
    assert mean.spec.tasks == ("10-5", "5-5") and mean.first_point["pseudo.n_seeds"] == 9


def test_shared_jobs_are_the_leading_steps_several_trials_need(base, tmp_path):
    from wilss.launch.prebuild import shared_jobs

    def jobs(search, tasks=(), repeats=1, **kw):
        return shared_jobs(plan(spec_of(base, tmp_path, **kw), search, tasks, repeats=repeats))

    # N acts after step 0: one step-0 job per (task, seed), each shared by the N values
    (job,) = jobs(Search(grid={"pseudo.n_seeds": [1, 3, 9]}))
    assert job.steps == (0,) and job.users == 3 and job.cfg.method == "fmwiss"
    grid = jobs(Search(grid={"pseudo.n_seeds": [1, 3]}), ("10-5", "5-5"), repeats=2)
    assert sorted((j.cfg.data.task, j.cfg.train.seed, j.users) for j in grid) == [
        ("10-5", 0, 2), ("10-5", 1, 2), ("5-5", 0, 2), ("5-5", 1, 2)]
    # a knob of step 0 (the memory it fills) or a single trial: nothing is shared
    assert jobs(Search(grid={"fmwiss.memory_per_class": [10, 20]})) == []
    assert jobs(Search(grid={"pseudo.n_seeds": [9]})) == []
    # many steps: N acts from step 1 on, so only step 0 is common (each later step depends on N)
    (chain,) = jobs(Search(grid={"pseudo.n_seeds": [1, 3]}), ("10-1",))
    assert chain.steps == (0,) and len(chain.keys) == 1
    # Optuna: the trials share step 0 unless a searched key determines it
    (opt,) = jobs(Search(kind="optuna", space=sp.PAPER_SPACE, num_samples=4))
    assert opt.steps == (0,) and opt.users == 4
    assert jobs(Search(kind="optuna", space=("train.lr=1e-4:1e-2:log",), num_samples=4)) == []


def test_shared_evidence_is_each_tasks_evidence_several_trials_read(base, tmp_path):
    from wilss.launch.prebuild import shared_evidence

    def jobs(search, tasks=(), repeats=1, method="fmwiss"):
        return shared_evidence(plan(spec_of(override(base, {"method": method}), tmp_path), search, tasks,
                                    repeats=repeats))

    (job,) = jobs(Search(grid={"pseudo.n_seeds": [1, 3, 9]}))
    assert job.users == 3 and job.cfg.data.task == "10-5" and job.name.startswith("shared-evidence-")
    # per task; seeds and step-0 knobs do not change the evidence
    two = jobs(Search(grid={"fmwiss.memory_per_class": [10, 20]}), ("10-5", "5-5"), repeats=2)
    assert sorted((j.cfg.data.task, j.users) for j in two) == [("10-5", 4), ("5-5", 4)]
    # a foundation knob: each value has its own evidence, read by one trial; methods without evidence
    assert jobs(Search(grid={"foundation.resolution": [64, 128]})) == []
    assert jobs(Search(grid={"pseudo.source": ["ground_truth", "foundation"]})) == []
    assert jobs(Search(grid={"train.lr": [1e-3, 1e-2]}), method="wilson") == []
    # Optuna: shared unless a searched key is a data or foundation key
    (opt,) = jobs(Search(kind="optuna", space=sp.PAPER_SPACE, num_samples=4))
    assert opt.users == 4
    assert jobs(Search(kind="optuna", space=("foundation.resolution=32:128",), num_samples=4)) == []


def test_a_failed_shared_build_leaves_the_step_to_the_trials(base, tmp_path, monkeypatch):
    """build_shared skips what the store holds, gives each job the node's CPUs, and turns a failed build
    into a warning (the trials then build the step and record their own errors)."""
    import sys
    import types

    from wilss.launch.prebuild import build_shared, shared_jobs

    s = spec_of(base, tmp_path)
    jobs = shared_jobs(plan(s, Search(grid={"pseudo.n_seeds": [1, 3]}), ("10-5", "5-5")))
    asked, kinds = [], []

    class Remote:
        def __init__(self, fn, opts):
            self.opts = opts

        def remote(self, job, *args):
            asked.append((job.cfg.data.task, self.opts))
            kinds.append((type(job).__name__, self.opts["num_cpus"]))
            return job

    def get(job):
        if job.cfg.data.task == "5-5":
            raise RuntimeError("worker died\nOutOfMemoryError: no memory left")
        return 12.0

    fake = types.SimpleNamespace(remote=lambda **opts: (lambda fn: Remote(fn, opts)), get=get)
    monkeypatch.setitem(sys.modules, "ray", fake)
    lines = []
    build_shared(jobs, s, 4.0, log=lines.append)
    assert sorted(asked) == [("10-5", {"num_cpus": 2.0}), ("5-5", {"num_cpus": 2.0})]  # 4 CPUs, 2 jobs
    assert any("built step 0 of 10-5" in m and "in 12s" in m for m in lines)
    assert any("warning: building step 0 of 5-5" in m and "OutOfMemoryError" in m and "the trials will" in m
               for m in lines)
    # the evidence first, with the node's CPUs to itself, then the steps
    from wilss.launch.prebuild import shared_evidence

    kinds.clear()
    (evidence,) = shared_evidence(plan(s, Search(grid={"pseudo.n_seeds": [1, 3]}), ("10-5",)))
    build_shared([jobs[0], evidence], s, 4.0, log=lines.append)
    assert kinds == [("EvidenceJob", 4.0), ("Job", 4.0)]
    assert any("built the foundation evidence of 10-5" in m and "shared by 2 trials" in m for m in lines)
    asked.clear()
    # an artifact already in the store (a resumed sweep) is not built again
    store = StepStore(s.artifacts)
    with store.publish(jobs[0].keys[-1]) as tmp:
        (tmp / "checkpoint.pt").write_bytes(b"x")
        (tmp / "row.json").write_text("{}")
    asked.clear()
    build_shared(jobs, s, 4.0, log=lines.append)
    assert [t for t, _ in asked] == [jobs[1].cfg.data.task]


def test_the_shared_build_asks_for_cpus_a_node_with_the_gpus_has(monkeypatch):
    import sys
    import types

    from wilss.launch.cluster import free_node_cpus

    nodes = [{"Alive": True, "Resources": {"CPU": 64.0}},  # a head without GPU
             {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}},
             {"Alive": False, "Resources": {"CPU": 128.0, "GPU": 8.0}}]  # gone
    free = {"CPU": 70.0}
    fake = types.SimpleNamespace(nodes=lambda: nodes, available_resources=lambda: free)
    monkeypatch.setitem(sys.modules, "ray", fake)
    assert free_node_cpus() == 64.0 and free_node_cpus(1.0) == 8.0
    free["CPU"] = 3.0  # the rest is held (e.g. by the job's entrypoint)
    assert free_node_cpus() == 3.0


@pytest.mark.parametrize("kw, search, tasks, words", [
    ({}, Search(kind="optuna", space=("pseudo.fusion=union,sum",)), (), "pseudo.fusion"),
    ({}, Search(grid={"pseudo.n_seed": [1]}), (), "pseudo.n_seed"),
    ({}, Search(), ("10-5", "12-3"), "12-3"),
    ({"metric": "accuracy"}, Search(), (), "accuracy"),
    ({"name": "a/b"}, Search(), (), "a/b"),
])
def test_run_sweep_refuses_mistakes_before_ray(base, tmp_path, kw, search, tasks, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        run_sweep(spec_of(base, tmp_path, **kw), search, tasks=tasks)
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()
    assert not (tmp_path / "store").exists()  # nothing written


def test_rerun_with_the_same_settings_resumes_and_other_settings_are_refused(base, tmp_path, monkeypatch):
    import wilss.launch.cluster

    def no_ray(*a, **k):
        raise RuntimeError("would start Ray")

    monkeypatch.setattr(wilss.launch.cluster, "ray_session", no_ray)
    spec, search = spec_of(base, tmp_path), Search(kind="optuna", space=sp.PAPER_SPACE, num_samples=2)
    with pytest.raises(RuntimeError, match="would start Ray"):  # first run: the record is written
        run_sweep(spec, search)
    with pytest.raises(RuntimeError, match="would start Ray"):  # the same settings: resumed
        run_sweep(spec, search, resume=True)
    with pytest.raises(WilssError, match=r"other settings \(experiments.0.trials"):
        run_sweep(spec, Search(kind="optuna", space=sp.PAPER_SPACE, num_samples=3))
    with pytest.raises(WilssError, match=r"other settings \(fmwiss.beta"):
        run_sweep(dataclasses.replace(spec, base=override(base, {"fmwiss.beta": 0.8})), search)
    with pytest.raises(WilssError, match="nothing to resume"):
        run_sweep(spec_of(base, tmp_path, name="s2"), Search(), resume=True)


def test_concurrency_follows_the_cluster(base, tmp_path):
    totals = {"CPU": 8.0, "GPU": 4.0}
    assert fits(spec_of(base, tmp_path), totals) == 8  # in-process trials, 1 CPU each
    assert fits(spec_of(base, tmp_path, workers=2), totals) == 4
    assert fits(spec_of(base, tmp_path, workers=2, gpus_per_trial=2), totals) == 2
    with pytest.raises(WilssError, match="lower --workers"):
        fits(spec_of(base, tmp_path, workers=16), totals)


# --------------------------------------------------------------------------------------------------
# rows and storage


def test_row_paths_round_trip_and_hive_read(tmp_path):
    storage = Storage.of(tmp_path / "st")
    for trial in ("a_00000", "a_00001"):
        for step in (0, 1):
            path = row_path(storage, "sw", "10-5", trial, step)
            write_row_at(storage, path, {"sweep": "sw", "task": "10-5", "trial_id": trial, "step": step, "x": 1.0})
    assert path.endswith("results/sweep=sw/trial=a_00001/10-5/step=1.parquet")
    assert read_row_at(storage, path)["trial_id"] == "a_00001"
    assert read_row_at(storage, row_path(storage, "sw", "10-5", "a_00002", 0)) is None
    df = read_rows(storage, "sw")
    assert list(zip(df["trial_id"], df["step"])) == [("a_00000", 0), ("a_00000", 1), ("a_00001", 0), ("a_00001", 1)]
    # the whole results folder as one hive-partitioned dataset, with the partition types given
    table = ds.dataset(storage.local_path("results"), partitioning=ds.partitioning(partition_schema(),
                                                                                  flavor="hive")).to_table()
    assert table.num_rows == 4 and set(table.column("trial").to_pylist()) == {"a_00000", "a_00001"}
    assert len(pd.read_parquet(storage.local_path("results", "sweep=sw"))) == 4  # one sweep as it is


class ObjectStoreLike(Storage):
    """A URI root taken through the pyarrow-filesystem path (as s3:// would be), on local disk."""

    local = False


def test_rows_through_a_pyarrow_filesystem_uri(tmp_path):
    storage = ObjectStoreLike(f"file://{tmp_path}/bucket")
    path = row_path(storage, "sw", "10-5", "t1", 0)
    assert path == f"{tmp_path}/bucket/results/sweep=sw/trial=t1/10-5/step=0.parquet"
    write_row_at(storage, path, {"sweep": "sw", "task": "10-5", "trial_id": "t1", "step": 0, "miou_all": 0.5})
    assert read_row_at(storage, path)["miou_all"] == 0.5
    assert list(read_rows(storage, "sw")["trial_id"]) == ["t1"]
    assert storage.uri_of("ray") == f"file://{tmp_path}/bucket/ray"


def test_step_walker_shares_and_skips(small_synthetic, tmp_path):
    cfg = override(preset("synthetic"), {**FAST, "data.root": str(small_synthetic)})
    store, built = StepStore(tmp_path / "art"), []

    def build(cfg, step, previous, checkpoint):
        built.append((cfg.train.lr_next, step))
        return run_step(cfg, step, checkpoint, previous=previous, log=lambda m: None)

    def sink():
        files = {}
        return RowSink(read=lambda t: files.get(t), write=lambda t, row: files.__setitem__(t, row))

    a, b = sink(), sink()
    first = run_steps(cfg, build, a, store, ids={"trial_id": "a"}, log=lambda m: None)
    second = run_steps(override(cfg, {"train.lr_next": 1e-4}), build, b, store, ids={"trial_id": "b"},
                       log=lambda m: None)
    assert built == [(5e-4, 0), (5e-4, 1), (1e-4, 1)]  # step 0 built once for both runs
    assert [r["cache.step_hit"] for r in first] == [False, False]
    assert [r["cache.step_hit"] for r in second] == [True, False]
    assert second[0]["miou_all"] == first[0]["miou_all"] and second[0]["trial_id"] == "b"
    # a rerun of run a finds its rows and artifacts: nothing is built, the same rows come back
    again = run_steps(cfg, build, a, store, ids={"trial_id": "a"}, log=lambda m: None)
    assert len(built) == 3 and [r["miou_all"] for r in again] == [r["miou_all"] for r in first]


def test_run_step_matches_the_in_process_protocol(small_synthetic, tmp_path):
    from wilss.protocol import run_protocol

    cfg = override(preset("synthetic"), {**FAST, "data.root": str(small_synthetic)})
    rows = run_protocol(cfg, tmp_path / "p", progress=False, log=lambda m: None)
    c0 = run_step(cfg, 0, tmp_path / "0.pt", log=lambda m: None)
    c1 = run_step(cfg, 1, tmp_path / "1.pt", previous=tmp_path / "0.pt", log=lambda m: None)
    assert [c0["miou_all"], c1["miou_all"]] == [r["miou_all"] for r in rows]
    with pytest.raises(WilssError, match="needs the checkpoint"):
        run_step(cfg, 1, None, log=lambda m: None)


def test_experiment_script_refuses_a_bad_space_before_ray(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "sweep.py"), "--storage", str(tmp_path),
                          "--space", "pseudo.fusion=union,sum"], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 2 and "pseudo.fusion" in out.stderr and "sum" in out.stderr
    assert "Ray" not in out.stdout and not any(tmp_path.iterdir())
