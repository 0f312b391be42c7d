"""The results store: one SQLite file (WAL mode), read back as tidy DataFrames.

Tables: ``runs`` (spec, status, owner, times, environment, summary), ``metrics``
in long form (run, step, split, name, value), ``diagnostics`` (run, step, kind,
index, value; e.g. the gradient-flow profile ‖∂L/∂h_t‖ per t) and ``meta``
(schema version). Status moves pending -> running -> done | failed | diverged. A
run is claimed in one write transaction, so two suite processes never run the
same spec; a run whose owner died is reclaimed and its partial rows are deleted
in the same transaction, so a killed run is never recorded as done or twice.

Every write of a run's rows and its final status is conditional on the writer
still owning the run (``ClaimLost`` otherwise), so a process that lost its claim
(stale heartbeat taken over by another host) cannot mix its rows into the new
attempt. Opening checks the file first: garbage, a truncated file, a foreign
SQLite database or another schema version raise a one-line ``UserError``, and
corruption found later by a query does too.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sqlite3
import struct
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TypeVar

from suite.errors import UserError, make_folder
from suite.spec import RunSpec

if TYPE_CHECKING:  # pandas is imported where frames are read: worker processes only write
    import pandas as pd

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


class ClaimLost(RuntimeError):
    """This process no longer owns the run it is writing (another one took it over)."""


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state first), or None where /proc is unavailable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # the command name may hold spaces and ')'


def _start_ticks(pid: int) -> str:
    stat = _proc_stat(pid)
    return stat[19] if stat else ""  # field 22: start time in clock ticks since boot


def owner_id() -> str:
    """``host:pid:start``; the process start time makes a reused pid a different owner."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def _pid_alive(pid: int, start: str = "") -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return True
    # A zombie (killed, not yet reaped: PID 1 in a container may never reap it) is dead.
    return stat[0] != "Z" and (not start or stat[19] == start)


def owner_dead(owner: str | None, heartbeat: float | None, now: float) -> bool:
    """Whether a ``running`` run's owner is gone (same host: process check; else heartbeat age)."""
    if not owner:
        return True
    parts = owner.split(":")  # host:pid:start (older stores: host:pid)
    host, pid, start = (parts + [""])[:3] if len(parts) in (2, 3) else ("", "", "")
    if host == socket.gethostname() and pid.isdigit():
        if int(pid) == os.getpid() and (not start or start == _start_ticks(os.getpid())):
            return False
        return not _pid_alive(int(pid), start)
    return heartbeat is None or now - heartbeat > STALE_AFTER_S


F = TypeVar("F", bound=Callable[..., Any])


def _corruption(store: "Store", exc: BaseException) -> UserError | None:
    """A one-line UserError when ``exc`` says the file is damaged (not e.g. 'locked')."""
    cause = exc if isinstance(exc, sqlite3.DatabaseError) else exc.__cause__  # pandas wraps it
    if type(cause) is sqlite3.DatabaseError:  # SQLITE_CORRUPT, SQLITE_NOTADB: not its subclasses
        return UserError(f"{store.path} is damaged ({cause}); restore it from a backup or pass "
                         "--store with another path")
    return None


def _locked(store: "Store", exc: BaseException) -> UserError | None:
    """A one-line UserError when SQLite gave up waiting for another writer's lock."""
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return UserError(f"{store.path} stayed locked by another process for over a minute (another 'rnnbench "
                         "run', or a tool holding it open to write); let it finish or pass --store with another path")
    return None


def _guarded(method: F) -> F:
    """Turn corruption found by a query into a one-line UserError."""
    @functools.wraps(method)
    def wrapper(self: "Store", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            err = _corruption(self, exc)
            if err is None:
                raise
            raise err from None
    return wrapper  # type: ignore[return-value]


def check_file(path: Path) -> None:
    """Cheap checks before SQLite opens ``path``: SQLite header, size not truncated.

    SQLite only notices a truncated file when a query reaches a missing page, so the
    page count recorded in the header is compared with the file size here (skipped
    while a write-ahead log holds pages not yet copied into the file).
    """
    size = path.stat().st_size
    if size == 0:
        return  # SQLite treats an empty file as a new database
    with open(path, "rb") as f:
        head = f.read(100)
    if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
        raise UserError(f"{path} is not a usable rnnbench store (not an SQLite file); "
                        "pass --store with another path or move the file away")
    page_size = struct.unpack(">H", head[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    change, pages, valid_for = (struct.unpack(">I", head[o:o + 4])[0] for o in (24, 28, 92))
    wal = path.with_name(path.name + "-wal")
    wal_pending = wal.exists() and wal.stat().st_size > 0
    if pages and change == valid_for and not wal_pending and size < pages * page_size:
        raise UserError(f"{path} is truncated ({size} bytes, its header says {pages * page_size}); "
                        "restore it from a backup or pass --store with another path")


class Store:
    """Read and write one results file. Cheap to open; one per process."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise UserError(f"store {self.path} does not exist; run 'rnnbench run' first or pass --store")
            make_folder(self.path.parent, f"store {self.path}: its folder", "pass --store with another path")
        elif not self.path.is_file():
            raise UserError(f"store {self.path} is not a file; pass --store with a file path")
        else:
            check_file(self.path)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
            self._retry_locked(lambda: self.db.execute("PRAGMA journal_mode=WAL"))
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._retry_locked(self._init_schema)
        except sqlite3.DatabaseError as e:
            raise (_locked(self, e) or UserError(f"{self.path} is not a usable rnnbench store ({e}); "
                                                 "pass --store with another path or move the file away")) from None

    @staticmethod
    def _retry_locked(fn, seconds: float = 60.0) -> None:
        """Run ``fn``, retrying while SQLite says "database is locked". Switching a new
        file to WAL can fail at once without waiting on the busy timeout while another
        process creates or recovers it (seen with six processes opening one new store)."""
        deadline = time.monotonic() + seconds
        delay = 0.005
        while True:
            try:
                fn()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def _init_schema(self) -> None:
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise UserError(f"{self.path} is an SQLite file but not an rnnbench store "
                            f"(tables: {', '.join(sorted(tables))}); pass --store with another path")
        if not tables:  # one transaction, so a process racing here never sees half a schema
            self.db.executescript(f"BEGIN IMMEDIATE; {SCHEMA} INSERT OR IGNORE INTO meta "
                                  f"VALUES ('schema_version', '{SCHEMA_VERSION}'); COMMIT;")
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            raise UserError(f"{self.path} has no schema version; it is not an rnnbench store")
        version = int(row[0]) if str(row[0]).isdigit() else None
        if version != SCHEMA_VERSION:
            why = ("a newer rnnbench wrote it; upgrade rnnbench" if version and version > SCHEMA_VERSION
                   else "an older rnnbench wrote it and there is no migration; use that rnnbench "
                        "or a new --store" if version is not None else "not a version rnnbench knows")
            raise UserError(f"{self.path} has store schema version {row[0]!s:.20}, this rnnbench reads "
                            f"version {SCHEMA_VERSION} ({why})")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise (_corruption(self, exc) or _locked(self, exc) or exc) from None
        try:
            yield self.db
        except BaseException as exc:
            self.db.execute("ROLLBACK")
            err = _corruption(self, exc) if isinstance(exc, Exception) else None
            if err is not None:
                raise err from None
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
            _clear_rows(db, run_id)
            db.execute("UPDATE runs SET status='running', owner=?, started=?, heartbeat=?, ended=NULL, "
                       "reason=NULL, summary=NULL, attempts=attempts+1 WHERE run_id=?",
                       (owner, now, now, run_id))
            return True

    def write(self, run_id: str, metrics: list[tuple] = (), diagnostics: list[tuple] = (),
              *, owner: str | None = None) -> None:
        """Append metric rows (step, split, name, value) and diagnostic rows
        (step, kind, idx, value) for a run, in one transaction, with a heartbeat.
        With ``owner``, raise ``ClaimLost`` (writing nothing) unless it still owns the run."""
        with self.transaction() as db:
            self._touch(db, [run_id], owner)
            if metrics:
                db.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)",
                               [(run_id, int(s), sp, n, _num(v)) for s, sp, n, v in metrics])
            if diagnostics:
                db.executemany("INSERT INTO diagnostics VALUES (?, ?, ?, ?, ?)",
                               [(run_id, int(s), k, int(i), _num(v)) for s, k, i, v in diagnostics])

    def heartbeat(self, run_ids: Iterable[str], owner: str) -> None:
        """Mark runs this owner is still working on as alive (a driver waiting on remote runs)."""
        with self.transaction() as db:
            self._touch(db, list(run_ids), owner, strict=False)

    @staticmethod
    def _touch(db: sqlite3.Connection, run_ids: list[str], owner: str | None, strict: bool = True) -> None:
        now = time.time()
        for run_id in run_ids:
            if owner is None:
                db.execute("UPDATE runs SET heartbeat=? WHERE run_id=?", (now, run_id))
            elif db.execute("UPDATE runs SET heartbeat=? WHERE run_id=? AND owner=? AND status='running'",
                            (now, run_id, owner)).rowcount == 0 and strict:
                raise ClaimLost(f"run {run_id} is no longer owned by {owner}")

    def finish(self, run_id: str, status: str, summary: dict[str, Any] | None = None,
               reason: str | None = None, *, env: dict | None = None, owner: str | None = None) -> None:
        """Record a run's final status (and the environment it ran in), in one transaction.
        With ``owner``, raise ``ClaimLost`` unless it owns the run."""
        assert status in FINISHED or status == "pending", status
        with self.transaction() as db:
            if owner is not None:
                self._touch(db, [run_id], owner)
            if env is not None:
                db.execute("UPDATE runs SET env=? WHERE run_id=?", (json.dumps(env), run_id))
            db.execute("UPDATE runs SET status=?, summary=?, reason=?, ended=?, owner=NULL WHERE run_id=?",
                       (status, json.dumps(summary) if summary is not None else None, reason,
                        time.time(), run_id))

    def fail_orphan(self, run_id: str, reason: str) -> bool:
        """Mark a run failed if it is still ``running`` under a dead owner (a crashed
        worker process); False when it is not (finished, or its owner is alive)."""
        with self.transaction() as db:
            row = db.execute("SELECT status, owner, heartbeat FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is None or row[0] != "running" or not owner_dead(row[1], row[2], time.time()):
                return False
            db.execute("UPDATE runs SET status='failed', reason=?, ended=?, owner=NULL WHERE run_id=?",
                       (reason, time.time(), run_id))
            return True

    def release(self, run_id: str, owner: str | None = None) -> None:
        """Give a run back (interrupted): pending again, its partial rows removed.
        With ``owner``, only a run that owner still holds."""
        with self.transaction() as db:
            if owner is not None and db.execute("SELECT 1 FROM runs WHERE run_id=? AND owner=?",
                                                (run_id, owner)).fetchone() is None:
                return
            _clear_rows(db, run_id)
            db.execute("UPDATE runs SET status='pending', owner=NULL, started=NULL, heartbeat=NULL "
                       "WHERE run_id=?", (run_id,))

    # -- reading ------------------------------------------------------------
    @_guarded
    def status_of(self, run_id: str) -> str | None:
        row = self.db.execute("SELECT status FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return row[0] if row else None

    @_guarded
    def summary_of(self, run_id: str) -> dict[str, Any]:
        row = self.db.execute("SELECT summary FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else {}

    @_guarded
    def statuses(self) -> dict[str, str]:
        """Every run's status, by run id."""
        return dict(self.db.execute("SELECT run_id, status FROM runs").fetchall())

    @_guarded
    def status_counts(self) -> dict[str, int]:
        counts = dict(self.db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
        return {s: counts.get(s, 0) for s in STATUSES}

    @_guarded
    def runs(self) -> pd.DataFrame:
        """One row per run: ids, status, times, the spec's fields flattened, env and summary."""
        import pandas as pd

        df = pd.read_sql_query("SELECT * FROM runs ORDER BY created, run_id", self.db)
        if df.empty:
            return df
        specs = df["spec"].map(json.loads)
        df["task_args"] = specs.map(lambda s: s["task_args"])
        df["model_args"] = specs.map(lambda s: s["model_args"])
        df["train"] = specs.map(lambda s: s["train"])
        df["device"] = specs.map(lambda s: s["device"].split(":")[0])  # the type: a run's identity (RunSpec.identity)
        # NULL reads back as None or NaN depending on the column's other values
        df["env"] = df["env"].map(lambda e: json.loads(e) if isinstance(e, str) else {})
        df["summary"] = df["summary"].map(lambda e: json.loads(e) if isinstance(e, str) else {})
        return df

    def metrics(self, run_ids: Iterable[str] | None = None, settings: bool = False) -> pd.DataFrame:
        """Long-form metrics: run_id, step, split, name, value (plus task, model, seed;
        with ``settings`` also the settings that tell the runs apart, ``settings()``)."""
        return self._long("metrics", run_ids, settings)

    def diagnostics(self, run_ids: Iterable[str] | None = None, settings: bool = False) -> pd.DataFrame:
        """Long-form diagnostics: run_id, step, kind, idx, value (plus task, model, seed;
        with ``settings`` as ``metrics``)."""
        return self._long("diagnostics", run_ids, settings)

    @_guarded
    def _long(self, table: str, run_ids: Iterable[str] | None, settings: bool = False) -> pd.DataFrame:
        q = (f"SELECT m.*, r.task, r.model, r.seed, r.status FROM {table} m "
             "JOIN runs r USING (run_id)")
        params: list = []
        if run_ids is not None:
            ids = list(run_ids)
            q += f" WHERE m.run_id IN ({','.join('?' * len(ids))})"
            params = ids
        import pandas as pd

        frame = pd.read_sql_query(q, self.db, params=params)
        return frame.merge(self.settings(), on="run_id", how="left") if settings else frame

    def settings(self, runs: pd.DataFrame | None = None) -> pd.DataFrame:
        """run_id and, one column each, the settings whose values differ among the store's
        runs ('task.T', 'model.hidden_size', 'train.lr', 'device'): what tells the runs of a
        sweep apart, where task, model and seed alone do not. (``runs``: a ``runs()`` frame
        already read.)"""
        import pandas as pd

        runs = self.runs() if runs is None else runs
        if runs.empty:
            return pd.DataFrame(columns=["run_id"])
        flat = pd.DataFrame([{**{f"task.{k}": v for k, v in r.task_args.items()},
                              **{f"model.{k}": v for k, v in r.model_args.items()},
                              **{f"train.{k}": v for k, v in r.train.items()}, "device": r.device}
                             for r in runs.itertuples()])
        keys = [c for c in flat.columns
                if flat[c].map(lambda v: json.dumps(v, sort_keys=True)).nunique(dropna=False) > 1]
        return pd.concat([runs[["run_id"]].reset_index(drop=True), flat[keys]], axis=1)

    def summaries(self) -> pd.DataFrame:
        """One row per finished run: task, model, seed, status, reason, the settings that
        tell the runs apart (``settings()``) and every summary value."""
        import pandas as pd

        runs = self.runs()
        if runs.empty:
            return pd.DataFrame(columns=["run_id", "task", "model", "seed", "status"])
        flat = pd.json_normalize(runs["summary"].tolist())
        base = runs[["run_id", "task", "model", "seed", "status", "reason", "device"]].reset_index(drop=True)
        extra = self.settings(runs).drop(columns=["run_id", "device"], errors="ignore")
        return pd.concat([base, extra, flat], axis=1)


def _clear_rows(db: sqlite3.Connection, run_id: str) -> None:
    db.execute("DELETE FROM metrics WHERE run_id=?", (run_id,))
    db.execute("DELETE FROM diagnostics WHERE run_id=?", (run_id,))


def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
