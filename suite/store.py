"""The results store: one SQLite file (WAL mode), read back as tidy DataFrames.

Tables: ``runs`` (spec, status, owner, times, environment, summary), ``metrics``
in long form (run, step, split, name, value), ``diagnostics`` (run, step, kind,
index, value; e.g. the gradient-flow profile ‖∂L/∂h_t‖ per t) and ``meta``
(schema version). Status moves pending -> running -> done | failed | diverged. A
run is claimed with one conditional UPDATE, so two suite processes never run the
same spec; a run whose owner died is reclaimed and its partial rows are deleted
in the same transaction, so a killed run is never recorded as done or twice.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd

from suite.errors import UserError
from suite.spec import RunSpec

SCHEMA_VERSION = 1
STATUSES = ("pending", "running", "done", "failed", "diverged")
FINISHED = ("done", "failed", "diverged")
# A running run on another host is taken over only when its heartbeat is this old.
STALE_AFTER_S = 3600.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, spec TEXT NOT NULL, task TEXT NOT NULL, model TEXT NOT NULL,
    seed INTEGER NOT NULL, status TEXT NOT NULL, reason TEXT, owner TEXT,
    created REAL NOT NULL, started REAL, ended REAL, heartbeat REAL,
    env TEXT, summary TEXT, attempts INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL, step INTEGER NOT NULL, split TEXT NOT NULL, name TEXT NOT NULL,
    value REAL);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics (run_id);
CREATE TABLE IF NOT EXISTS diagnostics (
    run_id TEXT NOT NULL, step INTEGER NOT NULL, kind TEXT NOT NULL, idx INTEGER NOT NULL,
    value REAL);
CREATE INDEX IF NOT EXISTS diagnostics_run ON diagnostics (run_id);
"""


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_dead(owner: str | None, heartbeat: float | None, now: float) -> bool:
    """Whether a ``running`` run's owner is gone (same host: pid check; else heartbeat age)."""
    if not owner:
        return True
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        return int(pid) != os.getpid() and not _pid_alive(int(pid))
    return heartbeat is None or now - heartbeat > STALE_AFTER_S


class Store:
    """Read and write one results file. Cheap to open; one per process."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise UserError(f"store {self.path} does not exist; run 'rnnbench run' first or pass --store")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._init_schema()
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path} is not a usable rnnbench store ({e}); "
                            "pass --store with another path or move the file away") from None

    def _init_schema(self) -> None:
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise UserError(f"{self.path} is an SQLite file but not an rnnbench store "
                            f"(tables: {', '.join(sorted(tables))}); pass --store with another path")
        if not tables:
            self.db.executescript(SCHEMA)  # idempotent: safe when two processes race here
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            raise UserError(f"{self.path} has no schema version; it is not an rnnbench store")
        if int(row[0]) != SCHEMA_VERSION:
            raise UserError(f"{self.path} has store schema version {row[0]}, this rnnbench reads "
                            f"version {SCHEMA_VERSION}; use a matching rnnbench or a new --store")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- writing ------------------------------------------------------------
    def add_runs(self, specs: Iterable[RunSpec]) -> int:
        """Register specs as pending (existing runs are left as they are)."""
        now = time.time()
        rows = [(s.run_id, s.to_json(), s.task, s.model, s.seed, "pending", now) for s in specs]
        with self.transaction() as db:
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO runs (run_id, spec, task, model, seed, status, created) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            return db.total_changes - before

    def claim(self, run_id: str, owner: str | None = None, *, retry_failed: bool = False) -> bool:
        """Atomically take a run for this process; False if it is done or owned by a live process."""
        owner = owner or owner_id()
        now = time.time()
        with self.transaction() as db:
            row = db.execute("SELECT status, owner, heartbeat FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is None:
                return False
            status, old_owner, hb = row
            takeable = status == "pending" or (
                status == "running" and owner_dead(old_owner, hb, now)) or (
                retry_failed and status in ("failed", "diverged"))
            if not takeable:
                return False
            db.execute("DELETE FROM metrics WHERE run_id=?", (run_id,))
            db.execute("DELETE FROM diagnostics WHERE run_id=?", (run_id,))
            db.execute("UPDATE runs SET status='running', owner=?, started=?, heartbeat=?, ended=NULL, "
                       "reason=NULL, summary=NULL, attempts=attempts+1 WHERE run_id=?",
                       (owner, now, now, run_id))
            return True

    def write(self, run_id: str, metrics: list[tuple] = (), diagnostics: list[tuple] = (),
              env: dict | None = None) -> None:
        """Append metric rows (step, split, name, value) and diagnostic rows
        (step, kind, idx, value) for a run, in one transaction, with a heartbeat."""
        with self.transaction() as db:
            if metrics:
                db.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)",
                               [(run_id, int(s), sp, n, _num(v)) for s, sp, n, v in metrics])
            if diagnostics:
                db.executemany("INSERT INTO diagnostics VALUES (?, ?, ?, ?, ?)",
                               [(run_id, int(s), k, int(i), _num(v)) for s, k, i, v in diagnostics])
            if env is not None:
                db.execute("UPDATE runs SET env=? WHERE run_id=?", (json.dumps(env), run_id))
            db.execute("UPDATE runs SET heartbeat=? WHERE run_id=?", (time.time(), run_id))

    def finish(self, run_id: str, status: str, summary: dict[str, Any] | None = None,
               reason: str | None = None) -> None:
        assert status in FINISHED or status == "pending", status
        with self.transaction() as db:
            db.execute("UPDATE runs SET status=?, summary=?, reason=?, ended=?, owner=NULL WHERE run_id=?",
                       (status, json.dumps(summary) if summary is not None else None, reason,
                        time.time(), run_id))

    def release(self, run_id: str) -> None:
        """Give a run back (interrupted): pending again, its partial rows removed."""
        with self.transaction() as db:
            db.execute("DELETE FROM metrics WHERE run_id=?", (run_id,))
            db.execute("DELETE FROM diagnostics WHERE run_id=?", (run_id,))
            db.execute("UPDATE runs SET status='pending', owner=NULL, started=NULL, heartbeat=NULL "
                       "WHERE run_id=?", (run_id,))

    # -- reading ------------------------------------------------------------
    def status_of(self, run_id: str) -> str | None:
        row = self.db.execute("SELECT status FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return row[0] if row else None

    def status_counts(self) -> dict[str, int]:
        counts = dict(self.db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
        return {s: counts.get(s, 0) for s in STATUSES}

    def runs(self) -> pd.DataFrame:
        """One row per run: ids, status, times, the spec's fields flattened, env and summary."""
        df = pd.read_sql_query("SELECT * FROM runs ORDER BY created, run_id", self.db)
        if df.empty:
            return df
        specs = df["spec"].map(json.loads)
        df["task_args"] = specs.map(lambda s: s["task_args"])
        df["model_args"] = specs.map(lambda s: s["model_args"])
        df["train"] = specs.map(lambda s: s["train"])
        df["device"] = specs.map(lambda s: s["device"])
        df["env"] = df["env"].map(lambda e: json.loads(e) if e else {})
        df["summary"] = df["summary"].map(lambda e: json.loads(e) if e else {})
        return df

    def metrics(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Long-form metrics: run_id, step, split, name, value (plus task, model, seed)."""
        return self._long("metrics", run_ids)

    def diagnostics(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Long-form diagnostics: run_id, step, kind, idx, value (plus task, model, seed)."""
        return self._long("diagnostics", run_ids)

    def _long(self, table: str, run_ids: Iterable[str] | None) -> pd.DataFrame:
        q = (f"SELECT m.*, r.task, r.model, r.seed, r.status FROM {table} m "
             "JOIN runs r USING (run_id)")
        params: list = []
        if run_ids is not None:
            ids = list(run_ids)
            q += f" WHERE m.run_id IN ({','.join('?' * len(ids))})"
            params = ids
        return pd.read_sql_query(q, self.db, params=params)

    def summaries(self) -> pd.DataFrame:
        """One row per finished run: task, model, seed, status, reason and every summary value."""
        runs = self.runs()
        if runs.empty:
            return pd.DataFrame(columns=["run_id", "task", "model", "seed", "status"])
        flat = pd.json_normalize(runs["summary"].tolist())
        base = runs[["run_id", "task", "model", "seed", "status", "reason", "device"]].reset_index(drop=True)
        return pd.concat([base, flat], axis=1)


def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
