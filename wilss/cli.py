"""The ``wilss`` command line: ``tasks``, ``splits``, ``config``, ``run`` and ``cache build``.

Bad input (a ``WilssError``) prints one line ``wilss: error: <problem and fix>`` to stderr and exits
with status 2; nothing is left half-written.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

from wilss.atomic import check_writable_dir, write_text
from wilss.errors import WilssError
from wilss.presets import PRESETS

PRESET_HELP = f"a named config: {', '.join(PRESETS)} (default synthetic)"


def _cmd_tasks(args: argparse.Namespace) -> None:
    from wilss.data.tasks import TASKS

    print(f"{'dataset':<10} {'task':<12} {'steps':>5}  classes per step (settings: disjoint, overlap)")
    for (dataset, name), task in TASKS.items():
        if args.dataset and dataset != args.dataset:
            continue
        note = f"  [{task.note}]" if task.note else ""
        print(f"{dataset:<10} {name:<12} {task.n_steps:>5}  {task.describe()}{note}")


def _cmd_splits(args: argparse.Namespace) -> None:
    from wilss.config import override
    from wilss.data.datasets import default_cache_dir, prepare
    from wilss.presets import preset

    cfg = override(preset("synthetic"), {"data.dataset": args.dataset, "data.root": args.root or "",
                                         "data.task": args.task, "data.overlap": args.overlap,
                                         "data.layout": args.layout}).data
    data = prepare(cfg, args.cache_dir or default_cache_dir(), progress=not args.quiet)
    steps = [{"step": t, "classes": list(data.task.new(t)), "n_images": len(idx),
              "ids": [data.train.ids[i] for i in idx]} for t, idx in enumerate(data.train_splits)]
    doc = {"dataset": cfg.dataset, "task": cfg.task, "overlap": cfg.overlap, "steps": steps}
    if args.json:
        write_text(Path(args.json), json.dumps(doc, indent=1))
        sizes = ", ".join(str(s["n_images"]) for s in steps)
        print(f"wrote {args.json}: {len(steps)} steps, images per step {sizes}")
        return
    for s in steps:
        print(f"# step {s['step']}: classes {s['classes']}, {s['n_images']} images")
        print("\n".join(s["ids"]))


def _build_config(args: argparse.Namespace):
    from wilss.config import override, parse_assignments
    from wilss.presets import preset

    updates = {}
    if getattr(args, "method", None):
        updates["method"] = args.method
    if getattr(args, "data_root", None):
        updates["data.root"] = args.data_root
    updates.update(parse_assignments(args.set or []))
    return override(preset(args.preset), updates)


def _cmd_config(args: argparse.Namespace) -> None:
    from wilss.config import flatten

    for key, value in flatten(_build_config(args)).items():
        print(f"{key} = {value!r}")


def _cmd_run(args: argparse.Namespace) -> None:
    from wilss.config import to_json

    cfg = _build_config(args)
    if args.workers < 0:
        raise WilssError(f"--workers must be >= 0, got {args.workers}")
    out = Path(args.out)
    config_file = out / "config.json"
    if config_file.is_file() and config_file.read_text() != to_json(cfg):
        raise WilssError(f"{out} holds a run with another config ({config_file}): choose a new --out, "
                         f"or rerun with the same preset and --set values to resume it")
    check_writable_dir(out, "--out")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_text(config_file, to_json(cfg))
        log = (lambda m: None) if args.quiet else print
        if args.workers > 0:  # each step on a Ray Train worker group (wilss.launch)
            from wilss.launch.train import run_distributed

            rows = run_distributed(cfg, out, args.workers, log=log)
        else:
            from wilss.protocol import run_protocol

            rows = run_protocol(cfg, out, progress=not args.quiet, log=log)
    except (WilssError, KeyboardInterrupt):
        if created:  # a run that failed on bad input leaves no folder behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    except PermissionError as e:
        raise WilssError(f"cannot write to {out} ({e.strerror}): choose an --out you can write to") from None
    _print_table(rows)
    print(f"results: {out / 'results'} (Parquet, one row per step)")


def _cmd_cache_build(args: argparse.Namespace) -> None:
    """Precompute the foundation evidence (and class-text embeddings) of every weak step's images."""
    from wilss.data.datasets import default_cache_dir
    from wilss.engine import resolve_device
    from wilss.foundation.evidence import ensure_task_evidence

    cfg = _build_config(args)
    cache_dir = Path(args.cache_dir or cfg.data.cache_dir or default_cache_dir())
    stats = ensure_task_evidence(cfg, cache_dir, resolve_device(cfg.train.device), progress=not args.quiet,
                                 verify=True)  # verify: a repair pass over existing entries
    weak = stats["steps"]
    print(f"foundation evidence of {stats['images']} images (steps {weak.start}-{weak.stop - 1}): "
          f"{stats['hits']} hits, {stats['misses']} misses, {stats['seconds']:.1f}s -> {stats['root']}")


def _print_table(rows: list[dict]) -> None:
    def fmt(v: float) -> str:
        return "   -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.1f}"

    print(f"\n{'step':>4} {'old':>6} {'old-bg':>6} {'new':>6} {'all':>6} {'hIoU':>6}   (mIoU %)")
    for r in rows:
        print(f"{r['step']:>4} {fmt(r['miou_old']):>6} {fmt(r['miou_old_nobg']):>6} {fmt(r['miou_new']):>6} "
              f"{fmt(r['miou_all']):>6} {fmt(r['hiou']):>6}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wilss", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tasks", help="list the incremental tasks and their steps")
    t.add_argument("--dataset", help="only this dataset")
    t.set_defaults(fn=_cmd_tasks)

    s = sub.add_parser("splits", help="print or write the training image ids of every step")
    s.add_argument("--dataset", required=True)
    s.add_argument("--root", help="dataset folder (not needed for the synthetic benchmark)")
    s.add_argument("--task", required=True)
    s.add_argument("--overlap", action="store_true", help="overlap setting (default: disjoint)")
    s.add_argument("--layout", default="auto", help="VOC layout: auto, aug or plain")
    s.add_argument("--json", help="write the splits to this JSON file instead of printing ids")
    s.add_argument("--cache-dir", help="where per-image class sets are cached (default ~/.cache/wilss)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=_cmd_splits)

    for name, fn, help_ in [("run", _cmd_run, ("run the whole incremental protocol (in-process, or on Ray "
                                                "Train workers with --workers N)")),
                            ("config", _cmd_config, "print the flat config of a preset with overrides")]:
        r = sub.add_parser(name, help=help_)
        r.add_argument("--preset", default="synthetic", help=PRESET_HELP)
        r.add_argument("--method", help="finetune, joint, fmwiss, dkd, dkd-m, mib or wilson (default: the preset's)")
        r.add_argument("--data-root", help="dataset folder (same as --set data.root=DIR)")
        r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
        if name == "run":
            r.add_argument("--out", required=True, help="output folder (results, checkpoints, cache)")
            r.add_argument("--quiet", action="store_true", help="only the final table")
            r.add_argument("--workers", type=int, default=0,
                           help="run each step on N Ray Train workers (DDP: gloo on CPU, nccl on GPU); "
                                "0 = in this process (default). Attaches to $RAY_ADDRESS, else a local Ray")
        r.set_defaults(fn=fn)

    c = sub.add_parser("cache", help="precompute cached inputs")
    c_sub = c.add_subparsers(dest="cache_command", required=True)
    b = c_sub.add_parser("build", help="compute the foundation evidence of every weak step's training images")
    b.add_argument("--preset", default="synthetic", help=PRESET_HELP)
    b.add_argument("--data-root", help="dataset folder (same as --set data.root=DIR)")
    b.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    b.add_argument("--cache-dir", help="cache folder (default: data.cache_dir, else $WILSS_CACHE_DIR or "
                                       "~/.cache/wilss: where `wilss run` looks for the evidence)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(fn=_cmd_cache_build)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except WilssError as e:
        print(f"wilss: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wilss: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
