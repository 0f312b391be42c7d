"""Where real data comes from, and the on-disk cache of processed tensors.

Every real-data task resolves its data the same way, in this order:

1. **the data directory** (``--data-dir`` or env ``RNNBENCH_DATA``) holding the
   standard files of the data set (MNIST IDX files, plain text, parquet/CSV/JSONL
   tables) — for clusters and offline machines;
2. **the Hugging Face hub** through ``datasets.load_dataset`` (cached the usual
   way in ``~/.cache/huggingface``; ``HF_DATASETS_OFFLINE=1`` reuses that cache);
3. otherwise **one line** (``UserError``) naming the task, the hub id it tried
   and the files it would accept in the data directory. Never fake data.

The processed tensors (normalised pixels, token ids, vocabularies) are saved under
``RNNBENCH_CACHE`` (default ``~/.cache/rnnbench``), keyed by the source (file
names, sizes and modification times, or hub id and revision) and the processing
options, so a second run does not re-process anything. ``datasets`` is imported
only when the hub is actually needed (it costs about a second).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from suite.errors import UserError, one_line

ENV_DATA = "RNNBENCH_DATA"
ENV_CACHE = "RNNBENCH_CACHE"

_memo: dict[Path, dict[str, Any]] = {}
_hub_failures: dict[tuple, str] = {}


def data_dir() -> Path | None:
    """The data directory from ``RNNBENCH_DATA`` (set by ``--data-dir``), or None."""
    value = os.environ.get(ENV_DATA)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise UserError(f"data directory {path} (--data-dir / {ENV_DATA}) does not exist or is not a folder")
    return path


def cache_dir() -> Path:
    """Where processed tensors are cached: ``RNNBENCH_CACHE`` or ``~/.cache/rnnbench``."""
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "rnnbench").expanduser()


def find(names: Sequence[str], subdirs: Sequence[str] = ()) -> Path | None:
    """The first of ``names`` present in the data directory or one of its ``subdirs``."""
    root = data_dir()
    if root is None:
        return None
    for folder in (root, *(root / s for s in subdirs)):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def find_all(groups: Sequence[Sequence[str]], subdirs: Sequence[str] = ()) -> list[Path] | None:
    """One file per group of alternative names, all from the same folder; None if any is missing."""
    root = data_dir()
    if root is None:
        return None
    for folder in (root, *(root / s for s in subdirs)):
        found = [next((folder / n for n in names if (folder / n).is_file()), None) for names in groups]
        if all(found):
            return found  # type: ignore[return-value]
    return None


def local_path(path: str, task: str) -> Path:
    """A user-given file or folder: as given (relative to the working directory), else
    relative to the data directory; a one-line error if it is in neither."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    root = data_dir()
    if root is not None and (root / p).exists():
        return root / p
    where = f" or in the data directory {root}" if root else ""
    raise UserError(f"task '{task}': path '{path}' not found in the working directory{where}")


def read_bytes(path: Path) -> bytes:
    """A file's bytes; ``.gz`` files are decompressed, ``.zip`` files give their first member."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as z:
                return z.read(z.namelist()[0])
        return path.read_bytes()
    except (OSError, EOFError, zipfile.BadZipFile, IndexError) as e:
        raise UserError(f"cannot read data file {path}: {e}") from None


def read_text(path: Path) -> str:
    """A text file (optionally .gz/.zip) decoded as UTF-8."""
    try:
        return read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"data file {path} is not UTF-8 text: {e}") from None


def fingerprint(paths: Iterable[Path]) -> list[list]:
    """Name, size and modification time of each file: a cache key that notices edits."""
    out = []
    for p in paths:
        st = p.stat()
        out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out


def cached(tag: str, key: dict[str, Any], build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``build()``'s result, saved once under the cache folder and reused afterwards.

    ``key`` (JSON-serialisable) identifies the source and the processing options;
    the file is written atomically, so concurrent workers never read half a file.
    Values may be tensors, numbers, strings and lists of them.
    """
    text = json.dumps(key, sort_keys=True, default=str)
    path = cache_dir() / f"{tag}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.pt"
    if path in _memo:
        return _memo[path]
    data = None
    if path.exists():
        try:
            saved = torch.load(path, weights_only=True)
            if saved.get("key") == text:
                data = saved["data"]
        except Exception:  # a corrupt or foreign cache file is rebuilt, never trusted
            data = None
    if data is None:
        data = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            torch.save({"key": text, "data": data}, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    _memo[path] = data
    return data


class HubUnavailable(Exception):
    """The hub data set could not be loaded (no network, unknown id, ...)."""


def load_hub(hub_id: str, *, revision: str | None = None, data_dir: str | None = None,
             name: str | None = None) -> Any:
    """``datasets.load_dataset(hub_id, ...)`` (all splits), or ``HubUnavailable``.

    Script-based hub data sets no longer load in ``datasets`` >= 3; their parquet
    conversion does, with ``revision="refs/convert/parquet"`` and the config's
    folder as ``data_dir``. A failure is remembered for the rest of the process, so
    a grid of runs does not wait for the hub's retries once per run.
    """
    key = (hub_id, revision, data_dir, name)
    if key in _hub_failures:
        raise HubUnavailable(_hub_failures[key])
    try:
        import datasets

        # The hub client logs each retry of a failed request as a warning; the one
        # line the user needs comes from the caller (``missing``) instead.
        for name in ("huggingface_hub", "datasets"):
            logging.getLogger(name).setLevel(logging.ERROR)
        return datasets.load_dataset(hub_id, name, revision=revision, data_dir=data_dir)
    except Exception as e:  # network, auth, unknown id: all mean "not available from the hub"
        _hub_failures[key] = one_line(e, 160)
        raise HubUnavailable(_hub_failures[key]) from None


def fetch(task: str, what: str, *, options: dict[str, Any], local: list[Path] | None,
          read_local: Callable[[list[Path]], dict[str, Any]], hub_id: str | None,
          read_hub: Callable[[Any], dict[str, Any]], accepted: str,
          hub_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Processed data from local files if found, else from the hub, cached on disk.

    ``local``: the files found in the data directory (None: not there).
    ``read_local`` / ``read_hub``: turn files / a ``DatasetDict`` into tensors.
    ``what`` and ``accepted`` describe the data set and the files the data
    directory may hold, for the one-line error when neither source works.
    """
    hub_kwargs = hub_kwargs or {}
    if local is not None:
        key = {"task": task, "source": "files", "files": fingerprint(local), **options}
        return cached(task, key, lambda: read_local(local))
    if hub_id is None:
        raise missing(task, what, None, "no hub data set", accepted)
    key = {"task": task, "source": "hub", "id": hub_id, **hub_kwargs, **options}

    def build() -> dict[str, Any]:
        try:
            ds = load_hub(hub_id, **hub_kwargs)
        except HubUnavailable as e:
            raise missing(task, what, hub_id, str(e), accepted) from None
        return read_hub(ds)

    return cached(task, key, build)


def missing(task: str, what: str, hub_id: str | None, reason: str, accepted: str) -> UserError:
    """The one-line error for data that is neither in the data directory nor on the hub."""
    root = os.environ.get(ENV_DATA)
    where = f"data directory {root}" if root else f"no data directory is set (--data-dir or {ENV_DATA})"
    tried = f"hub data set '{hub_id}' failed ({reason})" if hub_id else reason
    msg = f"task '{task}' needs {what}: {tried}; {where}; accepted files there: {accepted}"
    return UserError(" ".join(msg.split()))


def split_indices(n: int, sizes: Sequence[int], seed: int) -> list[torch.Tensor]:
    """Consecutive chunks of a seeded permutation of ``range(n)``: one per size, then the rest.

    Each chunk is sorted, so a split keeps the source's order.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    bounds = [0]
    for s in sizes:
        bounds.append(bounds[-1] + s)
    chunks = [perm[a:b] for a, b in zip(bounds, bounds[1:])] + [perm[bounds[-1]:]]
    return [c.sort().values for c in chunks]


def fraction_split(text: str, fracs: tuple[float, float] = (0.9, 0.95)) -> dict[str, str]:
    """First 90% train, next 5% valid, last 5% test (text8's 90M/5M/5M at 100M chars)."""
    a, b = int(len(text) * fracs[0]), int(len(text) * fracs[1])
    return {"train": text[:a], "val": text[a:b], "test": text[b:]}


def memo(obj: object, key: Any, make: Callable[[], Any]) -> Any:
    """Per-instance cache for lazily loaded data (task dataclass fields stay the parameters)."""
    store = obj.__dict__.setdefault("_data_memo", {})
    if key not in store:
        store[key] = make()
    return store[key]
