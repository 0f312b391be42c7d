"""Read the store into the frames every report section uses.

The report is a pure function of the store, so this module is the only place
that reads it. It filters runs (``--tasks``, ``--models``, ``--since``), names
what is being compared, and looks up what each task declares:

* a **task setting** is a task name plus the task arguments that differ between
  its runs in the store (``adding(T=100)``); leaderboards are per task setting,
  since numbers at different T are not comparable;
* a **variant** is a model name plus the model/training switches that differ
  between its runs on one task (``lstm [hidden_size=64]``), named alike on every
  task; seeds of one variant are the sample every statistic is computed over;
* an **ablation axis** is any such differing switch, task arguments included.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import functools
import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import seaborn as sns

import baselines
import tasks as task_registry
from suite.errors import UserError
from suite.store import Store

FINISHED = ("done", "diverged", "failed")


@dataclass(frozen=True)
class TaskInfo:
    """What a task setting declares: primary metric, its direction, chance and solved levels."""

    name: str
    label: str
    args: dict
    primary: str
    higher_is_better: bool
    chance: float | None = None
    solved: float | None = None
    note: str | None = None
    target: str = "last"
    padded: bool = False  # sequences of several lengths in a batch

    @property
    def metric(self) -> str:
        """Column of the primary test metric in ``ReportData.runs``."""
        return f"test_{self.primary}"

    def better(self, a: float, b: float) -> bool:
        return a > b if self.higher_is_better else a < b

    def describe(self) -> str:
        arrow = "higher is better" if self.higher_is_better else "lower is better"
        bits = [f"primary metric: test {self.primary} ({arrow})"]
        if self.chance is not None:
            bits.append(f"chance {self.chance:.4g}")
        if self.solved is not None:
            bits.append(f"solved at {'≥' if self.higher_is_better else '≤'} {self.solved:.4g}")
        args = ", ".join(f"{k}={v}" for k, v in sorted(self.args.items()))
        return f"{self.label} — {args or 'default arguments'}; " + "; ".join(bits)


@dataclass
class ReportData:
    """Everything the sections read. ``runs``: one row per finished run (status done,
    diverged or failed) with its summary flattened; ``metrics``/``diagnostics``: long
    form, restricted to those runs, with ``task_label`` and ``variant`` columns."""

    runs: pd.DataFrame
    metrics: pd.DataFrame
    diagnostics: pd.DataFrame
    tasks: dict[str, TaskInfo]
    notes: list[str] = field(default_factory=list)
    unfinished: int = 0
    colors: dict[str, Any] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.runs.empty

    def done(self, task_label: str | None = None) -> pd.DataFrame:
        r = self.runs[self.runs["status"] == "done"]
        return r if task_label is None else r[r["task_label"] == task_label]

    def of_task(self, task_label: str) -> pd.DataFrame:
        return self.runs[self.runs["task_label"] == task_label]

    def variants(self, task_label: str) -> list[str]:
        return sorted(self.of_task(task_label)["variant"].unique())


def parse_since(text: str | None) -> float | None:
    """'2026-01-31' or an ISO date-time (UTC unless it says otherwise) -> epoch seconds."""
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--since '{text}' is not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def numeric(frame: pd.DataFrame, col: str) -> pd.Series:
    """Column ``col`` of ``frame`` as numbers (NaN where a value is not one, or the column
    is missing: a summary key a store's runs did not record)."""
    return pd.to_numeric(frame[col], errors="coerce") if col in frame else pd.Series(np.nan, index=frame.index)


def start_up(runs: pd.DataFrame, steps: pd.Series) -> pd.Series:
    """The start-up time (``warmup_s``) in each run's training time at ``steps`` (a value
    per row of ``runs``): all of it from the step its start-up ended (``warmup_end_step``,
    counted from the run's start), none before. A resumed run recorded its last process's
    start-up only, so an earlier process's stays in its times; a store from before
    ``warmup_end_step`` counts the start-up from step 0."""
    end = numeric(runs, "warmup_end_step").fillna(numeric(runs, "warmup_steps")).fillna(0.0)
    return numeric(runs, "warmup_s").fillna(0.0).where(pd.Series(np.asarray(steps), index=runs.index) > end, 0.0)


def settings(row: pd.Series) -> dict[str, Any]:
    """A run's configuration as flat ``section.key`` entries (seed excluded)."""
    out: dict[str, Any] = {f"task.{k}": v for k, v in row["task_args"].items()}
    out.update({f"model.{k}": v for k, v in row["model_args"].items()})
    out.update({f"train.{k}": v for k, v in row["train"].items()})
    out["device"] = row["device"]
    out["version"] = json.loads(row["spec"]).get("version")
    return out


def full_settings(row: pd.Series) -> dict[str, Any]:
    """``settings(row)`` with the settings its store did not know (written before a switch
    existed) at this rnnbench's defaults, which is what those runs trained with."""
    out = dict(row["settings"])
    for prefix, section, name in (("task", "task_args", row["task"]), ("model", "model_args", row["model"]),
                                  ("train", "train", "")):
        for key, value in _defaults(section, str(name)).items():
            out.setdefault(f"{prefix}.{key}", value)
    return out


@functools.lru_cache(maxsize=None)
def _defaults(section: str, name: str) -> dict[str, Any]:
    """This rnnbench's default values of a task's parameters, a model's switches or the
    training settings, as the store's JSON holds them ({} for a name it no longer has)."""
    from suite.spec import TrainConfig  # the runner's, which imports every model

    try:
        values = (task_registry.create(name).params() if section == "task_args" else
                  baselines.resolve(name) if section == "model_args" else dataclasses.asdict(TrainConfig()))
    except Exception:  # a task or model this rnnbench no longer has, or whose parameters changed
        return {}
    return json.loads(json.dumps(values))


def config_key(row: pd.Series) -> str:
    """Identity of a run's configuration without its seed and code version, so a run
    can be matched with the same configuration in another (baseline) store: settings at
    today's defaults are left out, so a store written before a switch existed (its specs
    lack the key) matches one written after, where the switch is at its default."""
    spec = json.loads(row["spec"])
    spec.pop("seed", None)
    spec.pop("version", None)
    spec["device"] = str(spec.get("device", "")).split(":")[0]  # cuda:1 trains what cuda does
    for section, name in (("task_args", spec.get("task")), ("model_args", spec.get("model")), ("train", "")):
        defaults = _defaults(section, str(name))
        spec[section] = {k: v for k, v in (spec.get(section) or {}).items() if k not in defaults or defaults[k] != v}
    return json.dumps(spec, sort_keys=True)


def varying(frames: Iterable[dict[str, Any]]) -> list[str]:
    """Keys whose values are not all equal across ``frames`` (missing counts as a value)."""
    frames = list(frames)
    keys = sorted({k for f in frames for k in f})
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in frames}) > 1]


def short_key(key: str) -> str:
    """'model.hidden_size' -> 'hidden_size', 'task.T' -> 'T'; train keys keep their prefix."""
    section, _, name = key.partition(".")
    return name if section in ("model", "task") else key


def _label(name: str, cfg: dict[str, Any], keys: list[str], template: str) -> str:
    """``name`` alone, or ``template`` filled with the name and ``key=value`` of ``keys``."""
    if not keys:
        return name
    return template.format(name=name, args=", ".join(f"{short_key(k)}={cfg.get(k)}" for k in keys))


def task_info(name: str, label: str, args: dict, recorded_chance: float | None = None) -> TaskInfo:
    """Look up a task's declarations; a task this rnnbench no longer has falls back to test loss.

    Chance and solved levels are read only where the task defines them without
    data (a property such as char-lm's unigram bpc would load the corpus, and the
    report must stay a function of the store); such a chance level is the one its
    runs recorded (``recorded_chance``), where they did.
    """
    try:
        cls = task_registry.get(name)
    except UserError:
        return TaskInfo(name, label, args, "loss", False,
                        note=f"task '{name}' is not registered in this rnnbench; ranking by test loss")
    levels: dict[str, float | None] = {}
    try:
        inst = task_registry.create(name, **args)
    except UserError as e:
        inst, levels["note"] = None, f"task arguments no longer valid ({e}); chance and solved levels unknown"
    for attr in ("chance", "solved"):
        if inst is None or isinstance(inspect.getattr_static(inst, attr, None), property):
            levels[attr] = recorded_chance if attr == "chance" and inst is not None else None
            continue
        value = getattr(inst, attr, None)
        levels[attr] = float(value) if value is not None and not math.isnan(float(value)) else None
    from tasks.padded import PaddedTokens

    return TaskInfo(name, label, args, cls.primary, bool(cls.higher_is_better),
                    target=getattr(cls, "target", "last"), padded=issubclass(cls, PaddedTokens),
                    **levels)  # type: ignore[arg-type]


def _check_filter(kind: str, wanted: list[str] | None, known: set[str]) -> None:
    for pat in wanted or []:
        if not any(fnmatch.fnmatchcase(k, pat) for k in known):
            raise UserError(f"--{kind} '{pat}' matches no {kind[:-1]} in the registry or the store; "
                            f"choose from: {', '.join(sorted(known))}")


def _matches(name: str, patterns: list[str] | None) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def load(store: str | Path | Store, *, tasks: list[str] | None = None, models: list[str] | None = None,
         since: str | None = None) -> ReportData:
    """Read and label the runs of ``store``; see the module docstring."""
    import baselines

    db = store if isinstance(store, Store) else Store(store, create=False)
    runs = db.runs()
    notes: list[str] = []
    all_tasks = set(task_registry.names()) | (set(runs["task"]) if not runs.empty else set())
    all_models = set(baselines.names()) | (set(runs["model"]) if not runs.empty else set())
    _check_filter("tasks", tasks, all_tasks)
    _check_filter("models", models, all_models)
    t_since = parse_since(since)
    if runs.empty:
        return _empty(notes)
    keep = runs["task"].map(lambda t: _matches(t, tasks)) & runs["model"].map(lambda m: _matches(m, models))
    if t_since is not None:
        keep &= runs["created"] >= t_since
    runs = runs[keep]
    for pat in tasks or []:
        if not any(fnmatch.fnmatchcase(t, pat) for t in runs["task"]):
            notes.append(f"Task '{pat}' was asked for but the store has no runs of it"
                         + (f" since {since}" if since else "") + ".")
    unfinished = int((~runs["status"].isin(FINISHED)).sum())
    runs = runs[runs["status"].isin(FINISHED)].reset_index(drop=True)
    if runs.empty:
        return _empty(notes, unfinished)
    runs = _label_runs(runs)
    infos = {}
    for label, grp in runs.groupby("task_label", sort=True):
        first = grp.iloc[0]
        chances = {c for c in (r.get("chance") for r in grp["summary"]) if c is not None and math.isfinite(c)}
        infos[label] = task_info(first["task"], label, first["task_args"], chances.pop() if len(chances) == 1 else None)
    flat = pd.json_normalize(runs["summary"].tolist())
    runs = pd.concat([runs, flat.drop(columns=[c for c in flat.columns if c in runs])], axis=1)
    runs["primary"] = [runs.at[i, infos[t].metric] if infos[t].metric in runs else float("nan")
                       for i, t in zip(runs.index, runs["task_label"])]
    runs["primary"] = pd.to_numeric(runs["primary"], errors="coerce")
    cols = ["run_id", "task_label", "variant"]
    # Read everything and keep the selected runs by joining: a list of run ids in the
    # query would hit SQLite's limit on bound variables in a large store.
    metrics = db.metrics().merge(runs[cols], on="run_id")
    diags = db.diagnostics().merge(runs[cols], on="run_id")
    # One value per (run, step, kind, index): an end-of-training probe may repeat a scheduled one.
    diags = diags.drop_duplicates(["run_id", "step", "kind", "idx"], keep="last")
    variants = sorted(runs["variant"].unique())
    palette = sns.color_palette("tab10" if len(variants) <= 10 else "husl", len(variants))
    return ReportData(runs.sort_values(["task_label", "variant", "seed"]).reset_index(drop=True),
                      metrics, diags.reset_index(drop=True), infos, notes, unfinished,
                      dict(zip(variants, palette)))


def _label_runs(runs: pd.DataFrame) -> pd.DataFrame:
    runs = runs.copy()
    cfgs = [settings(r) for _, r in runs.iterrows()]
    runs["settings"] = cfgs
    runs["config_key"] = [config_key(r) for _, r in runs.iterrows()]
    task_labels, variants, axes = [""] * len(runs), [""] * len(runs), [[] for _ in range(len(runs))]
    # A model's label names the switches that vary among its runs on some task, on every
    # task: one configuration then has one label everywhere (the across-tasks test
    # matches models by label), while a setting that differs only between tasks (hidden
    # size 100 on MNIST, 128 on adding) stays out of it.
    model_keys: dict[str, set[str]] = {}
    for _, idx in runs.groupby("task").groups.items():
        idx = list(idx)
        task_keys = [k for k in varying(cfgs[i] for i in idx) if k.startswith("task.")]
        for i in idx:
            task_labels[i] = _label(runs.at[i, "task"], cfgs[i], task_keys, "{name}({args})")
        for model, sub in runs.loc[idx].groupby("model").groups.items():
            keys = varying(cfgs[i] for i in sub)
            model_keys.setdefault(model, set()).update(k for k in keys if not k.startswith("task."))
            for i in sub:
                axes[i] = keys
    for model, idx in runs.groupby("model").groups.items():
        for i in idx:
            variants[i] = _label(model, cfgs[i], sorted(model_keys[model]), "{name} [{args}]")
    runs["task_label"], runs["variant"], runs["axes"] = task_labels, variants, axes
    return runs


def _empty(notes: list[str], unfinished: int = 0) -> ReportData:
    cols = ["run_id", "task", "model", "seed", "status", "task_label", "variant", "primary"]
    return ReportData(pd.DataFrame(columns=cols), pd.DataFrame(), pd.DataFrame(), {}, notes, unfinished)
