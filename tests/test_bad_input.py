"""Bad input, part 2: checkpoints, output and storage folders, Ray addresses, experiment-script flags,
and the safe defaults (weights-only loads, a local Ray on 127.0.0.1, verified cache entries).

Every bad input gets one line naming the problem and the fix, exit status 2, no traceback, and
leaves nothing written. The README's bad-input table lists the same cases with these message fragments.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wilss.artifacts import StepStore
from wilss.cli import main as wilss_main
from wilss.config import override, to_json
from wilss.launch.experiment import main as experiment_main
from wilss.presets import preset
from wilss.protocol import RunPaths, step_meta

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[1]
UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1: the connection is refused at once


def experiment(name: str):
    spec = importlib.util.spec_from_file_location(f"_exp_{name}", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EXPERIMENT


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def one_line_error(err: str, prog: str, words: str) -> None:
    err = err.strip()
    assert err.startswith(f"{prog}: error: ") and words in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err


@pytest.fixture
def no_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


# --------------------------------------------------------------------------------------------------
# wilss run: checkpoints of a run folder (a resumed run loads them)


def resumable_run(tmp_path: Path, small_synthetic: Path, checkpoint: bytes | None = None, *,
                  meta: dict | None = None, model: torch.nn.Module | None = None) -> tuple[Path, list[str]]:
    """A run folder whose step 0 is 'done' (its row exists), with the given step-0 checkpoint."""
    args = ["--set", f"data.root={small_synthetic}", "--set", "data.task=10-5",
            "--set", f"data.cache_dir={tmp_path / 'cache'}", "--method", "finetune"]
    cfg = override(preset("synthetic"), {"data.root": str(small_synthetic), "data.task": "10-5",
                                         "data.cache_dir": str(tmp_path / "cache"), "method": "finetune"})
    out = tmp_path / "run"
    paths = RunPaths(out)
    out.mkdir()
    (out / "config.json").write_text(to_json(cfg))
    paths.result(0).parent.mkdir()
    import pandas as pd

    pd.DataFrame([{"step": 0, "miou_all": 0.5}]).to_parquet(paths.result(0))
    paths.checkpoint(0).parent.mkdir()
    if checkpoint is not None:
        paths.checkpoint(0).write_bytes(checkpoint)
    else:
        torch.save({"model": (model or torch.nn.Linear(2, 2)).state_dict(),
                    "meta": meta or step_meta(cfg, 0, 11), "extra": {}}, paths.checkpoint(0))
    return out, args


def other_meta(**changes) -> dict:
    cfg = override(preset("synthetic"), {"data.task": "10-5", "method": "finetune"})
    return step_meta(cfg, 0, 11) | changes


@pytest.mark.parametrize("kind, words", [
    ("truncated", "cannot read checkpoint"),
    ("not a checkpoint", "cannot read checkpoint"),
    ("other task", "was made for task='5-5', not '10-5'"),
    ("other class count", "was made for n_classes=6, not 11"),
    ("other model", "does not fit the model (Missing key(s) in state_dict"),
])
def test_run_refuses_a_bad_checkpoint_and_writes_nothing(capsys, tmp_path, small_synthetic, kind, words):
    if kind == "truncated":
        buf = tmp_path / "full.pt"
        torch.save({"model": torch.nn.Linear(64, 64).state_dict(), "meta": {}, "extra": {}}, buf)
        out, args = resumable_run(tmp_path, small_synthetic, buf.read_bytes()[:500])
    elif kind == "not a checkpoint":
        out, args = resumable_run(tmp_path, small_synthetic, b"PK\x03\x04 something else")
    elif kind == "other task":
        out, args = resumable_run(tmp_path, small_synthetic, meta=other_meta(task="5-5"))
    elif kind == "other class count":
        out, args = resumable_run(tmp_path, small_synthetic, meta=other_meta(n_classes=6))
    else:
        out, args = resumable_run(tmp_path, small_synthetic, meta=other_meta())
    before = files_under(out)
    code = wilss_main(["run", "--out", str(out), "--quiet", *args])
    one_line_error(capsys.readouterr().err, "wilss", words)
    assert code == 2 and files_under(out) == before


def test_run_checks_foundation_weights_before_training(capsys, tmp_path):
    out = tmp_path / "out"
    code = wilss_main(["run", "--out", str(out), "--quiet", "--method", "fmwiss",
                       "--set", f"foundation.clip_pretrained={tmp_path / 'missing' / 'clip.pt'}"])
    one_line_error(capsys.readouterr().err, "wilss", "foundation.clip_pretrained: checkpoint file")
    assert code == 2 and not out.exists()


def test_run_refuses_a_pretrained_file_that_is_not_a_checkpoint(capsys, tmp_path, small_synthetic):
    junk = tmp_path / "backbone.pt"
    junk.write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    code = wilss_main(["run", "--out", str(out), "--quiet", "--method", "finetune", "--set", f"model.pretrained={junk}",
                       "--set", f"data.root={small_synthetic}", "--set", "data.task=10-5"])
    one_line_error(capsys.readouterr().err, "wilss", "model.pretrained")
    assert code == 2 and not out.exists()


# --------------------------------------------------------------------------------------------------
# wilss run: where it writes, and where Ray is


@pytest.mark.parametrize("where, words", [("file", "is a file: give a folder"),
                                          ("under a file", "is under the file")])
def test_run_refuses_an_out_it_cannot_create(capsys, tmp_path, where, words):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = blocker if where == "file" else blocker / "sub" / "out"
    code = wilss_main(["run", "--out", str(out), "--quiet"])
    one_line_error(capsys.readouterr().err, "wilss", f"--out {out} {words}")
    assert code == 2 and blocker.read_text() == "x"


@pytest.mark.parametrize("address, words", [
    (UNREACHABLE, f"cannot reach the Ray cluster at RAY_ADDRESS={UNREACHABLE}"),
    ("head-node:port", "RAY_ADDRESS=head-node:port is not a cluster address"),
])
def test_run_with_workers_fails_fast_on_a_bad_ray_address(capsys, tmp_path, monkeypatch, address, words):
    monkeypatch.setenv("RAY_ADDRESS", address)
    out = tmp_path / "out"
    code = wilss_main(["run", "--out", str(out), "--quiet", "--workers", "2"])
    err = capsys.readouterr().err
    one_line_error(err, "wilss", words)
    assert code == 2 and "unset RAY_ADDRESS" in err and not out.exists()


def test_unreachable_address_times_out_quickly(monkeypatch):
    import socket

    from wilss.errors import WilssError
    from wilss.launch import cluster

    seen = {}

    def blackhole(addr, timeout):
        seen.update(addr=addr, timeout=timeout)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", blackhole)
    monkeypatch.setenv("WILSS_RAY_CONNECT_TIMEOUT", "2")
    with pytest.raises(WilssError, match=r"RAY_ADDRESS=ray://head:10001 \(head:10001: timed out\)"):
        cluster.check_reachable("ray://head:10001")
    assert seen == {"addr": ("head", 10001), "timeout": 2.0}
    with pytest.raises(WilssError, match=r"\(head:6379: timed out\)"):  # a bare host: the GCS port
        cluster.check_reachable("head")
    cluster.check_reachable("auto")  # left to Ray


# --------------------------------------------------------------------------------------------------
# the experiment scripts (in-process; one subprocess checks the console)


def run_experiment(capsys, name: str, argv: list[str]) -> tuple[int, str]:
    code = experiment_main(experiment(name), argv)
    return code, capsys.readouterr().err


EXPERIMENT_CASES = [
    ("ablate_seeds", ["--grid", "pseudo.n_seeds"], "--grid takes key=a,b,c, got 'pseudo.n_seeds'"),
    ("ablate_seeds", ["--grid", "pseudo.nseeds=1,2"], "unknown config key 'pseudo.nseeds'"),
    ("ablate_seeds", ["--grid", "pseudo.n_seeds=1,x"], "config key 'pseudo.n_seeds' takes an integer, got 'x'"),
    ("ablate_seeds", ["--tasks", "15-6"], "unknown task '15-6'"),
    ("ablate_seeds", ["--set", "fmwiss.alpha=2"], "config key 'fmwiss.alpha' must be <= 1"),
    ("ablate_seeds", ["--workers", "-1"], "--workers must be >= 0 (0 = train inside the trial), got -1"),
    ("ablate_seeds", ["--repeats", "0"], "--repeats must be >= 1, got 0"),
    ("ablate_seeds", ["--concurrency", "0"], "--concurrency must be >= 1, got 0"),
    ("ablate_seeds", ["--gpus-per-trial", "-1"], "--gpus-per-trial must be >= 0, got -1"),
    ("ablate_seeds", ["--cpus-per-worker", "0"], "--cpus-per-worker must be > 0, got 0"),
    ("ablate_seeds", ["--metric", "accuracy"], "metric 'accuracy' is not a result metric"),
    ("ablate_seeds", ["--name", "a/b"], "sweep name 'a/b' may hold only letters"),
    ("sweep", ["--space", "fmwiss.lambdaa=0:1"], "unknown config key 'fmwiss.lambdaa'"),
    ("sweep", ["--space", "fmwiss.alpha=1:0"], "low (1.0) must be below high (0.0)"),
    ("sweep", ["--space", "pseudo.fusion=0:1"], "a range needs a number knob"),
    ("sweep", ["--trials", "0"], "--trials must be >= 1, got 0"),
    ("compare_methods", ["--methods", "finetune,magic"], "unknown method 'magic'"),
]


@pytest.mark.parametrize("name, argv, words", EXPERIMENT_CASES, ids=[" ".join(c[1]) for c in EXPERIMENT_CASES])
def test_experiment_flags_are_checked_before_anything_is_written(capsys, tmp_path, no_ray_address, name, argv,
                                                                 words):
    storage = tmp_path / "storage"
    code, err = run_experiment(capsys, name, ["--storage", str(storage), *argv])
    one_line_error(err, name, words)
    assert code == 2 and not storage.exists()


@pytest.mark.parametrize("flag, where, words", [
    ("--storage", "file", "is a file: give a folder"),
    ("--storage", "under a file", "is under the file"),
    ("--artifacts", "under a file", "is under the file"),
])
def test_experiment_refuses_storage_it_cannot_write(capsys, tmp_path, no_ray_address, flag, where, words):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    bad = blocker if where == "file" else blocker / "sub"
    argv = ["--storage", str(tmp_path / "st"), flag, str(bad)] if flag == "--artifacts" else [flag, str(bad)]
    code, err = run_experiment(capsys, "ablate_seeds", argv)
    one_line_error(err, "ablate_seeds", f"{flag} {bad} {words}")
    assert code == 2 and blocker.read_text() == "x" and not (tmp_path / "st").exists()


def test_experiment_refuses_a_read_only_storage(capsys, tmp_path, no_ray_address):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes to any folder (the cases above cover an unwritable path for root)")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    try:
        code, err = run_experiment(capsys, "ablate_seeds", ["--storage", str(ro / "st")])
    finally:
        ro.chmod(0o700)
    one_line_error(err, "ablate_seeds", "cannot write to")
    assert code == 2 and not any(ro.iterdir())


def test_experiment_fails_fast_on_an_unreachable_cluster(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", UNREACHABLE)
    storage = tmp_path / "storage"
    code, err = run_experiment(capsys, "ablate_seeds", ["--storage", str(storage)])
    one_line_error(err, "ablate_seeds", f"cannot reach the Ray cluster at RAY_ADDRESS={UNREACHABLE}")
    assert code == 2 and not storage.exists()  # no sweep record either


def test_experiment_script_prints_one_line_and_no_traceback(tmp_path):
    import os

    env = os.environ | {"RAY_ADDRESS": UNREACHABLE, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "ablate_seeds.py"), "--storage",
                           str(tmp_path / "st")], capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ablate_seeds: error: cannot reach the Ray cluster"), proc.stderr
    assert not (tmp_path / "st").exists()


# --------------------------------------------------------------------------------------------------
# safe defaults


def test_every_torch_load_is_weights_only():
    calls = []
    for path in (ROOT / "wilss").rglob("*.py"):
        for m in re.finditer(r"torch\.load\(([^)]*)\)", path.read_text()):
            calls.append((path.name, m.group(1)))
    assert calls and all("weights_only=True" in args for _, args in calls), calls


def test_local_ray_binds_to_localhost(monkeypatch, no_ray_address):
    ray = pytest.importorskip("ray")
    from wilss.launch import cluster

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setattr(ray, "shutdown", lambda: seen.update(shutdown=True))
    with cluster.ray_session(num_cpus=1):
        pass
    assert seen["dashboard_host"] == "127.0.0.1" and seen["_node_ip_address"] == "127.0.0.1"
    assert seen["include_dashboard"] and "address" not in seen and seen["shutdown"]
    import os

    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0"  # set by wilss.launch on import


def _publish(store: StepStore, key: str, payload: bytes = b"weights" * 100) -> Path:
    with store.publish(key) as tmp:
        (tmp / "checkpoint.pt").write_bytes(payload)
        (tmp / "row.json").write_text(json.dumps({"miou_all": 0.5}))
    return store.path(key)


@pytest.mark.parametrize("damage, words", [
    ("truncate", "checkpoint.pt is 350 bytes, its manifest says 700"),
    ("flip", "checkpoint.pt does not match the sha256"),
    ("row", "row.json is"),
    ("no manifest", "has no manifest.json"),
])
def test_step_store_verifies_entries_before_use(tmp_path, damage, words):
    warnings = []
    store = StepStore(tmp_path, warn=warnings.append)
    entry = _publish(store, "k")
    assert store.get("k") == entry and json.loads((entry / "manifest.json").read_text())["checkpoint.pt"]["size"] == 700
    ckpt = entry / "checkpoint.pt"
    if damage == "truncate":
        ckpt.write_bytes(ckpt.read_bytes()[:350])
    elif damage == "flip":
        ckpt.write_bytes(b"W" + ckpt.read_bytes()[1:])
    elif damage == "row":
        (entry / "row.json").write_text("{}")
    else:
        (entry / "manifest.json").unlink()
    fresh = StepStore(tmp_path, warn=warnings.append)  # another process: nothing checked yet
    for s in (store, fresh):
        assert s.get("k") is None and s.get("k") is None
    assert len(warnings) == 2 and words in warnings[0] and "the step is rebuilt" in warnings[0]
    assert _publish(fresh, "k") == entry and fresh.get("k") == entry  # rebuilt: replaced, trusted again


def test_step_walker_rebuilds_a_damaged_artifact(tmp_path):
    from wilss.launch.steps import RowSink, run_steps

    cfg = override(preset("synthetic"), {"data.task": "10-5", "method": "finetune"})
    built, warnings = [], []
    store = StepStore(tmp_path / "art", warn=warnings.append)

    def build(cfg, step, previous, checkpoint):
        built.append(step)
        checkpoint.write_bytes(b"step %d" % step)
        return {"miou_all": 0.1 * step}

    def sink():
        files = {}
        return RowSink(read=lambda t: files.get(t), write=lambda t, row: files.__setitem__(t, row))

    first = run_steps(cfg, build, sink(), store, log=lambda m: None)
    (store.path(first[0]["cache.step_key"]) / "checkpoint.pt").write_bytes(b"step")  # truncated
    second = run_steps(cfg, build, sink(), store, log=lambda m: None)
    assert built == [0, 1, 0] and [r["cache.step_hit"] for r in second] == [False, True]
    assert len(warnings) == 1 and "checkpoint.pt is 4 bytes" in warnings[0]


def test_class_set_cache_entries_are_verified(tmp_path, small_synthetic, monkeypatch):
    from wilss.data import classsets
    from wilss.data.datasets import DATASETS

    scans = []
    real_scan = classsets._scan
    monkeypatch.setattr(classsets, "_scan", lambda *a, **k: scans.append(1) or real_scan(*a, **k))
    images = DATASETS["synthetic"].read(small_synthetic, "val")
    cache = tmp_path / "c"
    first = classsets.class_presence(images, 21, cache, workers=1, progress=False)
    (entry,) = (cache / "classsets").glob("*.npy")
    assert (entry.parent / (entry.name + ".sha256")).is_file()
    assert np.array_equal(classsets.class_presence(images, 21, cache, workers=1, progress=False), first)
    assert len(scans) == 1  # a verified hit
    data = bytearray(entry.read_bytes())
    data[-1] ^= 1  # same size, same shape, one class flipped
    entry.write_bytes(bytes(data))
    assert np.array_equal(classsets.class_presence(images, 21, cache, workers=1, progress=False), first)
    assert len(scans) == 2  # not trusted: scanned again
    assert np.array_equal(np.load(entry), first)  # and replaced

