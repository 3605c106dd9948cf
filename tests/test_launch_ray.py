"""The sweep runner on a real Ray: Optuna + Ray Train (2 gloo workers), a two-node cluster, a driver
killed mid-sweep and resumed, a Train worker killed mid-step, and the default ablation's shared step 0.
Each test starts its own Ray (HOME in a temp folder for Ray's auth token, loopback only) and stops it,
and kills what is left of a driver it killed by its session id."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import wilss.launch  # noqa: F401  (sets Ray's loopback switch before ray is imported)
from wilss.config import override
from wilss.launch.experiment import SMOKE
from wilss.launch.space import PAPER_SPACE
from wilss.launch.storage import Storage, read_rows
from wilss.launch.sweep import Search, run_sweep
from wilss.launch.trial import SweepSpec
from wilss.presets import preset

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
METHOD = "finetune"  # where the method does not matter (restore, placement): the fastest
TINY = SMOKE | {"data.synthetic_train": 120, "method": METHOD}
# FMWISS with the tiny foundation architectures at random init: the real code path, no weight files
FMWISS = TINY | {"method": "fmwiss", "foundation.clip_model": "wilss-tiny-clip", "foundation.clip_pretrained": "",
                 "foundation.vit_model": "wilss_tiny_vit", "foundation.vit_pretrained": "", "foundation.resolution": 64}


@pytest.fixture(scope="module")
def _home(tmp_path_factory):
    """Ray writes its auth token under HOME: one temp HOME for the module (Ray caches the token it
    found in-process, so every Ray started here must find the same file)."""
    home = tmp_path_factory.mktemp("home")
    old = {k: os.environ.get(k) for k in ("HOME", "RAY_ADDRESS")}
    os.environ["HOME"] = str(home)
    os.environ.pop("RAY_ADDRESS", None)
    yield home
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def ray_home(_home):
    yield _home
    import ray

    ray.shutdown()


def spec(tmp_path, name, **kw) -> SweepSpec:
    storage = Storage.of(tmp_path / "sweeps")
    cfg = override(preset("synthetic"), TINY | kw.pop("cfg", {}))
    return SweepSpec(name=name, base=cfg, storage=storage.uri, artifacts=storage.path("artifacts"), **kw)


def test_optuna_sweep_with_two_train_workers_on_two_tasks(ray_home, tmp_path):
    s = spec(tmp_path, "opt", workers=2, objective="mean", cfg=FMWISS)
    space = (*PAPER_SPACE, "train.lr_next=1e-4:1e-3:log")  # a knob outside FMWISS too
    result = run_sweep(s, Search(kind="optuna", space=space, num_samples=2, seed=3), tasks=("10-5", "14-1"))
    df = result.rows
    assert not result.failed and len(df) == 2 * 2 * 2  # trials x tasks x steps
    assert df.groupby(["trial_id", "task", "step"]).size().eq(1).all()
    assert (df["ray.workers"] == 2).all() and set(df["task"]) == {"10-5", "14-1"}
    # the paper defaults (the preset's values) are one of the two trials: the first point
    knobs = ["fmwiss.lambda_dcl", "fmwiss.alpha", "fmwiss.beta", "pseudo.fusion", "pseudo.n_seeds", "train.lr_next"]
    points = df.drop_duplicates("trial_id").set_index("trial_id")[knobs]
    paper = points.apply(lambda r: tuple(r) == (0.1, 0.5, 0.9, "union", 9, 5e-4), axis=1)
    assert paper.sum() == 1
    first = df[df["trial_id"] == paper.idxmax()].iloc[0]
    assert df["fmwiss.alpha"].between(0, 1).all() and df["train.lr_next"].between(1e-4, 1e-3).all()
    # step 0 of each task was trained once, by Ray Train under a deterministic run name
    step0 = df[df["step"] == 0]
    assert step0.groupby("task")["cache.step_hit"].apply(sorted).tolist() == [[False, True], [False, True]]
    runs = tmp_path / "sweeps" / "ray" / "opt-train"
    assert (runs / first["trial_id"] / "10-5" / "step0").is_dir()
    # the Tune objective is the mean over the tasks of their final mIoU
    from ray import tune

    tune_df = tune.ExperimentAnalysis(str(tmp_path / "sweeps" / "ray" / "opt")).dataframe()
    last = df[df["step"] == 1].groupby("trial_id")["miou_all"].mean()
    for _, r in tune_df.iterrows():
        assert r["objective"] == pytest.approx(last[r["trial_id"]])


def test_two_node_cluster_runs_trials_on_both_nodes(ray_home, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"TRAIN_DRIVER": 10}})
    try:
        cluster.add_node(num_cpus=1, resources={"TRAIN_DRIVER": 10})
        ray.init(address=cluster.address)
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert len(nodes) == 2
        s = spec(tmp_path, "two-nodes")
        # a knob of step 0: each trial trains both its steps, so the two run side by side (with a shared
        # step 0, built before the trials, one short trial may end before the other starts and Tune
        # reuses its actor on the same node)
        result = run_sweep(s, Search(grid={"train.lr": [1e-3, 3e-3]}))
        df = result.rows
        assert not result.failed and len(df) == 4 and df.groupby(["trial_id", "step"]).size().eq(1).all()
        assert set(df["ray.trial_node_id"]) == nodes  # one trial on each node, all rows arrived
    finally:
        ray.shutdown()
        cluster.shutdown()


def _session_pids(sid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[3]) == sid:
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _rows(folder: Path) -> dict[str, int]:
    return {str(f.relative_to(folder)): f.stat().st_mtime_ns for f in folder.rglob("*.parquet")}


def _terminated(experiment: Path) -> set[str]:
    """Trials the Tune experiment state (as last saved) records as finished."""
    done = set()
    for f in experiment.glob("experiment_state-*.json"):
        try:
            for trial, _ in json.loads(f.read_text())["trial_data"]:
                trial = json.loads(trial)
                if trial.get("status") == "TERMINATED":
                    done.add(trial["trial_id"])
        except (OSError, ValueError, KeyError):
            pass  # being rewritten
    return done


@pytest.mark.faults
def test_killed_driver_resumes_without_duplicates_or_reruns(ray_home, tmp_path):
    storage = tmp_path / "sweeps"
    lrs = ["1e-4", "2e-4", "3e-4", "4e-4", "5e-4", "6e-4"]
    cmd = [sys.executable, str(ROOT / "experiments" / "ablate_lambda.py"), "--smoke-test", "--storage", str(storage),
           # a step 1 of a few seconds (156 images, 4 epochs): longer than Tune's 5-s state saves, so the
           # kill below lands while a trial trains and after Tune recorded a finished one
           "--set", f"method={METHOD}", "--set", "data.synthetic_train=400", "--set", "train.epochs_next=4",
           "--grid", "fmwiss.lambda_dcl=0.1", "--grid", f"train.lr_next={','.join(lrs)}", "--concurrency", "1"]
    env = os.environ | {"HOME": str(ray_home)}
    results, experiment = storage / "results", storage / "ray" / "ablate_lambda-smoke"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:  # kill once Tune has recorded a finished trial, while a later trial trains its step 1 (odd rows)
        deadline = time.time() + 240
        while time.time() < deadline and not (len(_rows(results) if results.exists() else {}) % 2
                                              and _terminated(experiment)):
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.05)
        recorded = _terminated(experiment)
    finally:  # kill the driver and everything it started (its session: Ray's processes too), as a crash would
        for _ in range(3):
            for pid in _session_pids(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        proc.wait()
    before = _rows(results)
    assert recorded and len(before) < 12
    logs = storage / "logs" / "ablate_lambda-smoke"

    out = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    after = _rows(results)
    df = read_rows(Storage.of(storage), "ablate_lambda-smoke")
    assert len(after) == len(df) == 12 and df.groupby(["trial_id", "step"]).size().eq(1).all()
    assert sorted(df["train.lr_next"].unique()) == [float(v) for v in lrs]
    assert all(after[p] == t for p, t in before.items())  # rows written before the kill were not redone
    # no step was trained to the end twice: 7 trainings (the shared step 0, built before the trials, and
    # six steps 1) over both runs (the step in flight at the kill starts again); a trial Tune had not yet
    # recorded as finished may start again, but then skips the steps it had finished
    text = "".join(f.read_text() for f in logs.glob("*.log"))
    assert len(re.findall(r"step \d: mIoU all", text)) == 7 and text.count("reused the shared artifact") == 6
    assert len(list(logs.glob("shared-*.log"))) == 1  # the resumed sweep did not build it again
    for trial in recorded:  # finished trials did not start again
        assert (logs / f"{trial}.log").read_text().count(" of ablate_lambda-smoke") == 1
    assert "train.lr_next" in out.stdout  # the closing table
    # no half-written file: no temp row file, no temp artifact folder of a builder killed mid-publish
    assert not list(results.rglob("*.tmp")) and not list((storage / "artifacts").glob(".*"))


def test_ablate_seeds_trains_step0_once(ray_home, tmp_path):
    cmd = [sys.executable, str(ROOT / "experiments" / "ablate_seeds.py"), "--smoke-test", "--storage",
           str(tmp_path / "sweeps")] + [a for k, v in FMWISS.items() if k in (
               "data.synthetic_train", "foundation.clip_model", "foundation.clip_pretrained", "foundation.vit_model",
               "foundation.vit_pretrained", "foundation.resolution") for a in ("--set", f"{k}={v}")]
    out = subprocess.run(cmd, env=os.environ | {"HOME": str(ray_home)}, capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    df = read_rows(Storage.of(tmp_path / "sweeps"), "ablate_seeds-smoke")
    step0 = df[df["step"] == 0]
    # built once before the trials, with both CPUs; both trials reuse it
    assert "building step 0 of 10-5 (seed 0), shared by 2 trials, before the trials, with 2 CPU" in out.stdout
    assert "building the foundation evidence of 10-5 (" in out.stdout  # before step 0
    assert out.stdout.index("building the foundation evidence") < out.stdout.index("building step 0")
    assert len(step0) == 2 and step0["cache.step_hit"].all() and (step0["time.build_s"] > 0).all()
    assert step0["cache.step_key"].nunique() == 1 and (df["method"] == "fmwiss").all()
    step1 = df[df["step"] == 1]  # N changes step 1: each trial trained its own, from cached evidence
    assert sorted(step1["pseudo.n_seeds"]) == [1, 3] and not step1["cache.step_hit"].any()
    assert step1["cache.step_key"].nunique() == 2
    assert (step1["cache.evidence_hits"] == step1["n_train_images"]).all()  # all built before the trials
    assert (step1["cache.evidence_misses"] == 0).all()
    assert "step 0: trained 1 time(s) for 2 run(s), 1 reused" in out.stdout and "pseudo.n_seeds" in out.stdout
    # the script ends with the analysis report (run as a script: the analysis package comes from the install)
    report = tmp_path / "sweeps" / "reports" / "ablate_seeds-smoke" / "report.md"
    assert f"report: {report}" in out.stdout and report.is_file() and "report failed" not in out.stderr


def test_wilss_run_with_train_workers_writes_the_run_layout_and_resumes(ray_home, small_synthetic, tmp_path):
    from wilss.cli import main

    args = ["run", "--workers", "2", "--quiet", "--out", str(tmp_path / "run"), "--set", f"data.root={small_synthetic}"]
    args += [a for k, v in TINY.items() if not k.startswith("data.synthetic") for a in ("--set", f"{k}={v}")]
    assert main(args) == 0
    df = read_rows(Storage.of(tmp_path / "run"))
    assert list(df["step"]) == [0, 1] and (df["ray.workers"] == 2).all()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0.pt", "step-1.pt"]
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "results").iterdir()}
    assert main(args) == 0  # a rerun trains nothing
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def _train_worker_pids() -> list[int]:
    """PIDs of live Ray Train worker processes (Ray titles them ``ray::RayTrainWorker...``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"RayTrainWorker" in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.mark.faults
def test_a_killed_train_worker_is_replaced_and_the_run_matches_an_uninterrupted_one(ray_home, small_synthetic,
                                                                                   tmp_path):
    """kill -9 one of 2 gloo workers in the middle of step 1: Ray Train restarts the worker group from the
    last checkpoint (the end of step 0), the run finishes, and on CPU with fixed seeds its metrics equal
    those of a run that was never interrupted."""
    import ray

    from wilss.cli import main

    sets = TINY | {"data.root": str(small_synthetic), "train.epochs_next": 6}
    args = [a for k, v in sets.items() if not k.startswith("data.synthetic") for a in ("--set", f"{k}={v}")]
    assert main(["run", "--workers", "2", "--quiet", "--out", str(tmp_path / "clean"), *args]) == 0
    ray.shutdown()  # the interrupted run starts its own Ray: its workers are the only ones alive

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "wilss.cli", "run", "--workers", "2", "--out", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    killed, lines = None, []
    try:
        for line in proc.stdout:  # epoch lines of rank 0 arrive through Ray's log forwarding
            lines.append(line)
            if killed is None and "step 1 epoch 2/6" in line:
                killed = _train_worker_pids()[-1]
                os.kill(killed, signal.SIGKILL)
        assert proc.wait(timeout=300) == 0, "".join(lines[-30:])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert killed is not None, "".join(lines[-30:])
    text = "".join(lines)
    assert text.count("step 1 epoch 1/6") >= 2  # step 1 ran again from its start after the failure
    clean, again = read_rows(Storage.of(tmp_path / "clean")), read_rows(Storage.of(out))
    assert list(again["step"]) == [0, 1]
    for col in ("miou_all", "miou_old", "miou_new"):
        assert again[col].tolist() == pytest.approx(clean[col].tolist(), abs=1e-6, nan_ok=True), col


def test_progress_elapsed_counts_from_the_sweep_start_and_eta_from_the_trials(capsys):
    """The stages built before the trials count in "elapsed" (the sweep's time so far), not in the ETA
    (which extrapolates the trials' own pace)."""
    import time as _time

    from wilss.launch.progress import Progress

    p = Progress("s", total=3, metric="miou_all", mode="max", started=_time.monotonic() - 100)
    p.t0 = _time.monotonic() - 10  # the trials started 10 s ago, 90 s after the sweep
    p.finished_here = 1
    p._line([], "event")
    line = capsys.readouterr().out
    assert "1m40s elapsed" in line and "ETA 0m30s" in line, line
