"""The ``rnnbench`` command line.

User mistakes (``UserError``) print one line and exit with code 2; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from suite.errors import UserError, make_folder

DEFAULT_STORE = "results/rnnbench.sqlite"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def cmd_list(args: argparse.Namespace) -> int:
    import fnmatch

    import baselines
    import tasks
    from suite.profiles import profile_names

    every = {"tasks": tasks.names, "models": baselines.names,
             "profiles": lambda p: [n for n in profile_names() if fnmatch.fnmatchcase(n, p)]}[args.what]
    if args.pattern and not every(args.pattern):
        raise UserError(f"no {args.what[:-1]} matches '{args.pattern}'; choose from: {', '.join(every('*'))} "
                        "(patterns take * and ?)")
    if args.what == "tasks":
        for name in every(args.pattern or "*"):
            desc, params = tasks.describe(name)
            print(f"{name:<16} {desc}")
            if args.verbose or args.pattern:
                for pname, tp, default, help_ in params:
                    print(f"    {pname}: {tp} = {default!r}  {help_}")
    elif args.what == "models":
        for name in every(args.pattern or "*"):
            desc, values, params = baselines.describe(name)
            sw = ", ".join(f"{k}={v}" for k, v in values.items())
            print(f"{name:<16} {desc}  [{sw}]")
            if args.verbose or args.pattern:
                for pname, tp, default, help_ in params:
                    print(f"    {pname}: {tp} = {values.get(pname, default)!r}  {help_}")
    else:
        from suite.profiles import load_profile

        for name in every(args.pattern or "*"):
            data = load_profile(name)
            print(f"{name:<16} {data.get('description', '')}")
            if args.verbose or args.pattern:
                print(f"    seeds = {data.get('seeds', '0')!r}, device = {data.get('device', 'auto')!r}")
                for entry in data["runs"]:
                    print(f"    {entry['task']} {entry.get('task_args', {})}: {', '.join(entry['models'])}")
    return 0


def _specs_from_args(args: argparse.Namespace):
    from suite.profiles import build_specs, parse_assignments, parse_sets

    if getattr(args, "data_dir", None):  # read by tasks/data.py, inherited by worker processes
        if not Path(args.data_dir).expanduser().is_dir():
            raise UserError(f"--data-dir {args.data_dir} does not exist or is not a folder")
        os.environ["RNNBENCH_DATA"] = str(Path(args.data_dir).expanduser().resolve())
    return build_specs(
        profile=args.profile, task=args.task, model=args.model,
        task_args=parse_assignments(args.task_arg, "--task-arg"),
        model_args=parse_assignments(args.model_arg, "--model-arg"),
        train=parse_assignments(args.train, "--train"),
        sets=parse_sets(args.set), seeds=args.seeds, device=args.device)


def _out_file(path: str | Path, flag: str, store: str | None = None) -> Path:
    """``path`` as a file a command may write, checked before any work: not a folder, not
    the store (nor any SQLite file: a results store is never overwritten by an export),
    in a folder that exists or can be made."""
    try:
        out = Path(path).expanduser()
    except RuntimeError as e:  # '~nouser/x'
        raise UserError(f"{flag} {path}: {e}") from None
    if out.is_dir():
        raise UserError(f"{flag} {out} is a folder; give a file path")
    if store is not None and out.exists() and out.resolve() == Path(store).expanduser().resolve():
        raise UserError(f"{flag} {out} is the store itself; give another file")
    if out.is_file():
        with open(out, "rb") as f:
            if f.read(16) == b"SQLite format 3\x00":
                raise UserError(f"{flag} {out} is an SQLite file (a store?) that this would overwrite; "
                                "give another file")
    make_folder(out.parent, f"{flag} {out}: its folder", "give another path")
    if not os.access(out.parent, os.W_OK) or out.exists() and not os.access(out, os.W_OK):
        raise UserError(f"{flag} {out} cannot be written here (permission denied)")
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from suite.checkpoint import parse_policy
    from suite.executors import RunOptions, run_local
    from suite.preflight import require_data
    from suite.store import Store

    specs = _specs_from_args(args)
    require_data(specs)
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs {args.jobs} must be >= 1")
    if args.stack_seeds < 1:
        raise UserError(f"--stack-seeds {args.stack_seeds} must be >= 1")
    if args.gpus_per_run is not None and not 0 <= args.gpus_per_run < float("inf"):
        raise UserError(f"--gpus-per-run {args.gpus_per_run} must be 0 or more (a fraction shares a GPU)")
    if not 0 < args.cpus_per_run < float("inf"):
        raise UserError(f"--cpus-per-run {args.cpus_per_run} must be more than 0")
    options = RunOptions(retry_failed=args.retry_failed, checkpoint=parse_policy(args.checkpoint_every),
                         checkpoint_dir=args.checkpoint_dir, stack_seeds=args.stack_seeds)
    if args.checkpoint_dir and options.checkpoint is not None and not args.dry_run:  # now, not as each run fails
        folder = Path(args.checkpoint_dir).expanduser()
        make_folder(folder, f"--checkpoint-dir {folder}", "pass another folder")
        if not os.access(folder, os.W_OK):
            raise UserError(f"--checkpoint-dir {folder} cannot be written (permission denied)")
    if args.dry_run:  # reads the store where there is one (an empty file is none yet); writes nothing
        known: dict[str, str] = {}
        if Path(args.store).is_file() and Path(args.store).stat().st_size > 0:
            store = Store(args.store, create=False)
            known = store.statuses()
            store.close()
        added = sum(s.run_id not in known for s in specs)
    else:
        store = Store(args.store)
        added = store.add_runs(specs)
        known = store.statuses()
        store.close()
    done = {r for r, status in known.items() if status == "done"}
    todo = [s for s in specs if s.run_id not in done]
    print(f"{len(specs)} runs in grid ({added} new), {len(specs) - len(todo)} already done, "
          f"{len(todo)} to run -> {args.store}", file=sys.stderr)
    if args.dry_run:
        for s in todo:
            print(f"{s.run_id}  {s.label()}")
        return 0
    counts: dict[str, int] = {}
    with tqdm(total=len(todo), unit="run", disable=args.quiet) as bar:
        def progress(spec, status, summary):
            counts[status] = counts.get(status, 0) + 1
            key = next((k for k in summary if k.startswith("test_") and k != "test_loss"), None)
            bar.set_postfix_str(f"{spec.model} {spec.task} s{spec.seed}: {status}"
                                + (f" {key}={summary[key]:.4g}" if key else ""))
            bar.update(1)

        if args.executor == "ray":
            from suite.ray_executor import run_ray
            run_ray(todo, args.store, address=args.address, jobs=args.jobs, gpus_per_run=args.gpus_per_run,
                    cpus_per_run=args.cpus_per_run, options=options, progress=progress, grid=specs)
        else:  # the grid: seed stacks keep the seeds they first trained with (executors.units_to_run)
            run_local(todo, args.store, jobs=args.jobs or 1, options=options, progress=progress, grid=specs)
    print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "nothing to run", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from suite.store import Store

    store = Store(args.store, create=False)
    counts = store.status_counts()
    print("  ".join(f"{k}: {v}" for k, v in counts.items()))
    if args.verbose:
        df = store.runs()
        for _, r in df.iterrows():
            print(f"{r.run_id}  {r.status:<9} {r.task:<12} {r.model:<12} seed={r.seed}"
                  + (f"  ({r.reason})" if isinstance(r.reason, str) and r.reason else ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from suite.store import Store

    store = Store(args.store, create=False)
    frame = {"metrics": lambda: store.metrics(settings=True), "summary": store.summaries,
             "diagnostics": lambda: store.diagnostics(settings=True), "runs": store.runs}[args.what]()
    out = _out_file(args.out or f"results/{args.what}.{args.format}", "--out", args.store)
    if args.what == "runs":
        frame = frame.astype({c: str for c in ("task_args", "model_args", "train", "env", "summary")
                              if c in frame})
    if args.format == "csv":
        frame.to_csv(out, index=False)
    else:
        frame.to_parquet(out, index=False)
    print(f"wrote {len(frame)} rows to {out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    import baselines
    from suite.bench import HEADER, SHAPES, bench, footer, format_row
    from suite.spec import model_names, resolve_device

    device = resolve_device(args.device)
    shapes = args.shapes.split(",") if args.shapes else (["small"] if device == "cpu" else
                                                         ["seq-mnist", "adding", "char-lm"])
    bad = [s for s in shapes if s not in SHAPES]
    if bad:
        raise UserError(f"unknown shape '{bad[0]}'; choose from: {', '.join(SHAPES)}")
    if args.models is not None and not args.models.strip(", "):
        raise UserError("--models '' names no model; give names or patterns, or leave it out for every model")
    # each name or pattern must match (spec.model_names, as run's --model), in the registry's order
    models = baselines.names(model_names([m for m in args.models.split(",") if m]) if args.models else "*")
    if args.seeds < 1:
        raise UserError(f"--seeds {args.seeds}: give 1 or more")
    cores = os.cpu_count() or 1
    if args.threads is not None and not 1 <= args.threads <= cores:
        raise UserError(f"--threads {args.threads}: give 1 to {cores} (this machine's cores)")
    if args.repeats < 1:
        raise UserError(f"--repeats {args.repeats}: give 1 or more")
    if args.json is not None and not args.json.strip():
        raise UserError("--json '' names no file; give a path, or leave it out")
    json_out = _out_file(args.json, "--json") if args.json else None  # before the timing, not after it
    print(HEADER, flush=True)
    rows = bench(models, shapes, device, fast_path=not args.reference, repeats=args.repeats, seeds=args.seeds,
                 threads=args.threads, on_row=lambda r: print(format_row(r), flush=True))
    if rows:
        print(footer(rows[0]))
    if json_out is not None:
        try:
            json_out.write_text(json.dumps(rows, indent=1))
        except OSError as e:  # a full disk: the rows above are on the screen
            raise UserError(f"--json {json_out} could not be written ({e.strerror or e}); the table above has "
                            "the rows") from None
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from reports.build import build_report

    html, md, regressions = build_report(args.store, args.out, tasks=args.tasks, models=args.models,
                                         since=args.since, baseline=args.baseline)
    print(f"wrote {html} and {md}")
    for line in regressions:
        print(f"regressed: {line}", file=sys.stderr)
    return 0


def cmd_nightly(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from suite.nightly import nightly

    if args.stack_seeds is not None and args.stack_seeds < 1:
        raise UserError(f"--stack-seeds {args.stack_seeds} must be >= 1")
    bars: list = []  # opened at the first run's end, so that a refusal before training prints one line alone

    def progress(spec, status, summary):
        if not bars:
            bars.append(tqdm(unit="run", disable=args.quiet))
        bars[0].set_postfix_str(f"{spec.model} {spec.task} s{spec.seed}: {status}")
        bars[0].update(1)

    try:
        result = nightly(root=Path(args.root), date=args.date, profile=args.profile, device=args.device,
                         jobs=args.jobs, report_dir=Path(args.out) if args.out else None, asv=not args.no_asv,
                         stack_seeds=args.stack_seeds, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    for task, why in result.skipped_tasks.items():
        print(f"left out {task}: {why}", file=sys.stderr)
    stacked = f"; up to {result.stack_seeds} seeds of a spec stacked" if result.stack_seeds > 1 else ""
    print(f"store {result.store}; baseline {result.baseline or '(none: first night)'}{stacked}", file=sys.stderr)
    for line in result.report_regressions + result.asv_regressions:
        print(f"regressed: {line}", file=sys.stderr)
    return 1 if result.regressed else 0


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", help="profile name in suite/profiles or a .toml path")
    p.add_argument("--task", action="append", help="task name (repeatable); with --profile a name or pattern "
                   "that filters it")
    p.add_argument("--model", action="append", help="model name or pattern (repeatable)")
    p.add_argument("--task-arg", action="append", metavar="K=V", help="task parameter")
    p.add_argument("--model-arg", action="append", metavar="K=V", help="model switch")
    p.add_argument("--train", action="append", metavar="K=V", help="training setting")
    p.add_argument("--set", action="append", metavar="SECTION.K=V",
                   help="override for every run: train.K, model.K or task.K (lists sweep)")
    p.add_argument("--seeds", help="e.g. 0-4 or 0,3,7")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--data-dir", help="folder with local data files (MNIST IDX, text, tables); "
                   "sets RNNBENCH_DATA (see README, Local data)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rnnbench", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("list", help="list tasks, models or profiles")
    p.add_argument("what", choices=("tasks", "models", "profiles"))
    p.add_argument("pattern", nargs="?", help="wildcard filter; shows parameters")
    p.add_argument("-v", "--verbose", action="store_true", help="show parameters")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="run a profile or a grid given by flags (resumes)")
    _add_spec_args(p)
    p.add_argument("--store", default=DEFAULT_STORE)
    p.add_argument("--jobs", type=int, help="runs at once (local: worker processes, default 1; "
                   "ray: default as many as the cluster holds)")
    p.add_argument("--retry-failed", action="store_true", help="rerun failed and diverged runs")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: this machine; ray: one Ray task per run (pip install 'rnnbench[ray]')")
    p.add_argument("--address", help="ray: cluster to join, 'auto' or HOST:PORT (default: start one here)")
    p.add_argument("--gpus-per-run", type=float, help="ray: GPU share per run, fractions allowed "
                   "(default 1 for cuda runs, 0 for cpu runs)")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="ray: CPUs per run (default 1)")
    p.add_argument("--checkpoint-every", default="10m", metavar="N|DURATION",
                   help="save a run's state every N steps or every 30s/10m/2h; 0: off (default 10m)")
    p.add_argument("--checkpoint-dir", help="where checkpoints go (default: checkpoints/ beside the store)")
    p.add_argument("--stack-seeds", type=int, default=1, metavar="N",
                   help="train up to N seeds of one spec as one stack where the model allows it (custom "
                   "cells, unpadded batches): their recurrences share every op, and the group "
                   "checkpoints as one (default 1: one run at a time)")
    p.add_argument("--dry-run", action="store_true", help="list the runs, train nothing")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="runs by state")
    p.add_argument("--store", default=DEFAULT_STORE)
    p.add_argument("-v", "--verbose", action="store_true", help="one line per run")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("bench", help="ms per training step per model and shape, ratio to lstm")
    p.add_argument("--models", help="comma-separated names or patterns (default: all)")
    p.add_argument("--shapes", help="comma-separated: seq-mnist, adding, char-lm, small, tiny (tiny: a "
                   "check that every model runs) (default: small on CPU, the three others on CUDA)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--reference", action="store_true", help="time the eager reference step (no CUDA graph)")
    p.add_argument("--seeds", type=int, default=1, help="stack this many seeds per training step where a model "
                   "can be stacked; the ratio is then per seed (default 1)")
    p.add_argument("--threads", type=int, help="PyTorch CPU threads while timing (default: as set, one per "
                   "core); nn.LSTM uses them all, the custom cells' time loops run their steps on "
                   "one, splitting only layer-norm steps over them")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("nightly", help="nightly profile + report against last night + asv; exit 1 on regression")
    p.add_argument("--profile", default="nightly")
    p.add_argument("--root", default="results/nightly", help="folder of the nightly stores (one per date)")
    p.add_argument("--date", help="night to run or resume, YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--device", help="auto | cpu | cuda (default: the profile's)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (several small runs share a GPU)")
    p.add_argument("--stack-seeds", type=int, metavar="N", help="as for 'rnnbench run' (default: 8 where the runs "
                   "are on CUDA, 1 on the CPU; 1 trains one run at a time)")
    p.add_argument("--out", help="report folder (default ROOT/report)")
    p.add_argument("--no-asv", action="store_true", help="skip the asv benchmarks")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_nightly)

    p = sub.add_parser("export", help="write tidy long-form data for pandas users")
    p.add_argument("--format", choices=("csv", "parquet"), default="csv")
    p.add_argument("--what", choices=("metrics", "summary", "diagnostics", "runs"), default="metrics")
    p.add_argument("--store", default=DEFAULT_STORE)
    p.add_argument("--out", help="output file (default results/WHAT.FORMAT)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="statistical report: results/report/index.html and README.md")
    p.add_argument("--store", default=DEFAULT_STORE)
    p.add_argument("--out", default="results/report", help="output folder (default results/report)")
    p.add_argument("--tasks", nargs="+", action="extend", metavar="TASK",
                   help="only these tasks (names or patterns; repeatable)")
    p.add_argument("--models", nargs="+", action="extend", metavar="MODEL",
                   help="only these models (names or patterns; repeatable)")
    p.add_argument("--since", metavar="DATE", help="only runs created on or after DATE (YYYY-MM-DD, UTC)")
    p.add_argument("--baseline", metavar="PATH", help="a previous store: flag regressions beyond the CI")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"rnnbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rnnbench: interrupted; runs in flight were released, rerun to finish", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
