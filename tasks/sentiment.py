"""sentiment: binary classification of sentences or documents, read token by token.

Data sets:
  ``imdb``   Maas et al. 2011, "Learning Word Vectors for Sentiment Analysis": 25k
             train / 25k test reviews. Hub ``stanfordnlp/imdb``; local tables
             ``imdb/train*`` and ``imdb/test*``.
  ``sst2``   Socher et al. 2013, "Recursive Deep Models for Semantic Compositionality
             Over a Sentiment Treebank" (GLUE's SST-2): the hub's test labels are
             hidden (-1), so its validation split (872) is the test set. Hub
             ``stanfordnlp/sst2``; local tables ``sst2/train*``, ``sst2/validation*``.
  ``local``  ``path``: a folder with ``train*`` and ``test*`` tables (and optionally
             ``validation*``/``val*``/``dev*``).
Tables are parquet, CSV, TSV or JSON lines, with a text column (``text``,
``sentence`` or ``review``) and a label column (``label`` or ``sentiment``) holding
0/1 or negative/positive.

Validation: a labelled validation split is used when the source has one besides
its test split; otherwise ``n_val`` examples are held out of the training split by
``data_seed``. Tokens: lower-cased words and punctuation (``<br />`` removed) or
characters; the vocabulary (``max_vocab`` most frequent, ties by token) is built
on the training examples only, with ``<pad>`` = 0 and ``<unk>`` = 1. Sequences
keep their first ``max_len`` tokens and are right-padded with lengths (see
``tasks/padded.py``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from suite.errors import UserError
from suite.registry import param
from tasks.data import data_dir, fetch, local_path, memo, split_indices
from tasks.padded import Padded, PaddedTokens, pad
from tasks.registry import register

PAD, UNK = 0, 1
EXTS = (".parquet", ".csv", ".tsv", ".jsonl", ".json")
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "dev"), "test": ("test",)}
HUB = {"imdb": "stanfordnlp/imdb", "sst2": "stanfordnlp/sst2"}
TEXT_COLUMNS = ("text", "sentence", "review")
LABEL_COLUMNS = ("label", "sentiment")
LABEL_WORDS = {"negative": 0, "positive": 1, "neg": 0, "pos": 1}
Raw = dict[str, tuple[list[str], list[int]]]  # split -> (texts, labels)


def find_tables(folder: Path) -> dict[str, list[Path]]:
    """``{split: files}`` for the tables in ``folder`` named after their split (shards in name order)."""
    found = {}
    for split, names in SPLIT_NAMES.items():
        for name in names:
            hits = sorted(p for p in folder.glob(f"{name}*") if p.suffix in EXTS and p.is_file())
            if hits:
                found[split] = hits
                break
    return found


def read_tables(paths: list[Path]) -> tuple[list[str], list[int]]:
    texts: list[str] = []
    labels: list[int] = []
    for p in paths:
        t, y = read_table(p)
        texts += t
        labels += y
    return texts, labels


def read_table(path: Path) -> tuple[list[str], list[int]]:
    """(texts, labels) from a parquet/CSV/TSV/JSON-lines table; labels 0/1 (-1: hidden)."""
    import pandas as pd

    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        elif path.suffix in (".csv", ".tsv"):
            df = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
        else:
            df = pd.read_json(path, lines=True)
    except Exception as e:  # pandas/pyarrow raise many types for a broken file
        raise UserError(f"cannot read table {path}: {type(e).__name__}: {str(e).splitlines()[0][:120]}") from None
    text = next((c for c in TEXT_COLUMNS if c in df.columns), None)
    label = next((c for c in LABEL_COLUMNS if c in df.columns), None)
    if text is None or label is None:
        raise UserError(f"table {path} needs a text column ({', '.join(TEXT_COLUMNS)}) and a label column "
                        f"({', '.join(LABEL_COLUMNS)}); it has: {', '.join(map(str, df.columns))}")
    labels = [LABEL_WORDS.get(str(v).lower(), v) for v in df[label].tolist()]
    try:
        labels = [int(v) for v in labels]
    except (TypeError, ValueError):
        raise UserError(f"table {path}: labels must be 0/1 or negative/positive") from None
    if not set(labels) <= {-1, 0, 1}:
        raise UserError(f"table {path}: labels must be 0/1 (or -1 for hidden), found {sorted(set(labels))[:5]}")
    return [str(t) for t in df[text].tolist()], labels


def raw_from_hub(ds: Any) -> Raw:
    out = {}
    for split, names in SPLIT_NAMES.items():
        name = next((n for n in names if n in ds), None)
        if name is not None:
            cols = ds[name].column_names
            text = next(c for c in TEXT_COLUMNS if c in cols)
            out[split] = (list(ds[name][text]), [int(v) for v in ds[name]["label"]])
    return out


def tokenize(text: str, tokens: str, lowercase: bool) -> list[str]:
    text = re.sub(r"<br\s*/?>", " ", text)
    if lowercase:
        text = text.lower()
    return list(text) if tokens == "char" else re.findall(r"[\w']+|[^\w\s]", text)


@register("sentiment")
@dataclass
class Sentiment(PaddedTokens):
    """Positive/negative from the last valid token of a right-padded sequence."""

    dataset: str = param("imdb", "imdb, sst2, or local (tables in the folder 'path')",
                         choices=("imdb", "sst2", "local"))
    path: str | None = param(None, "dataset=local: a folder with train* and test* tables")
    tokens: str = param("word", "word (words and punctuation) or char tokens", choices=("word", "char"))
    lowercase: bool = param(True, "lower-case the text before tokenizing")
    max_len: int = param(400, "keep the first N tokens of each example", min=1, max=1_000_000)
    max_vocab: int = param(20_000, "vocabulary size including <pad> and <unk>", min=3)
    n_val: int = param(2000, "validation examples held out of train when the source has no "
                       "separate labelled validation split", min=1)
    n_train: int = param(0, "training examples used (0: all); a random subset for quick runs", min=0)
    data_seed: int = param(0, "seed of the validation hold-out and the training subset", min=0)

    description = "binary sentiment (imdb, sst2, local tables), word or char tokens, padded (acc)"
    output_size = 2
    solved = None

    def __post_init__(self) -> None:
        if (self.dataset == "local") != (self.path is not None):
            raise UserError("task 'sentiment': give path=... exactly when dataset='local'")

    @property
    def seq_len(self) -> int:  # type: ignore[override]
        return self.max_len

    @property
    def vocab_size(self) -> int:  # type: ignore[override]
        return len(self.data()["vocab"])

    # -- data ---------------------------------------------------------------
    def data(self) -> dict[str, Any]:
        """Padded ids, lengths and labels per split, and the vocabulary; loaded once."""
        return memo(self, "data", self._load)

    def _load(self) -> dict[str, Any]:
        if self.dataset == "local":
            folder = local_path(self.path, "sentiment")  # type: ignore[arg-type]
            what, hub_id = f"tables in {folder}", None
        else:
            root = data_dir()
            folder = root / self.dataset if root is not None else None
            what, hub_id = f"the {self.dataset} data set", HUB[self.dataset]
        tables = find_tables(folder) if folder is not None and folder.is_dir() else {}
        local = [p for s in SPLIT_NAMES for p in tables.get(s, [])] if {"train", "test"} <= set(tables) else None
        if self.dataset == "local" and local is None:
            raise UserError(f"task 'sentiment': folder {folder} needs train* and test* tables ({', '.join(EXTS)})")
        options = {k: getattr(self, k) for k in ("dataset", "tokens", "lowercase", "max_len", "max_vocab",
                                                 "n_val", "data_seed")}
        accepted = f"{self.dataset}/train*, {self.dataset}/test* (optional {self.dataset}/validation*) " \
                   f"as {'/'.join(e[1:] for e in EXTS)} tables with text and label columns"
        return fetch("sentiment", what, options={**options, "format": 1}, local=local,
                     read_local=lambda ps: self.process({s: read_tables(tables[s]) for s in tables}),
                     hub_id=hub_id, read_hub=lambda ds: self.process(raw_from_hub(ds)), accepted=accepted)

    def process(self, raw: Raw) -> dict[str, Any]:
        """Choose the splits, build the vocabulary on train, encode and pad."""
        if "test" in raw and min(raw["test"][1], default=0) < 0:  # hidden test labels (GLUE)
            if "val" not in raw:
                raise UserError("task 'sentiment': the test labels are hidden and there is no validation split")
            raw = {"train": raw["train"], "test": raw.pop("val")}
        if "val" not in raw:
            texts, labels = raw["train"]
            if self.n_val >= len(labels):
                raise UserError(f"task 'sentiment': n_val={self.n_val} must be below the "
                                f"{len(labels)} training examples")
            val_idx, train_idx = split_indices(len(labels), [self.n_val], self.data_seed)
            raw = {**raw, "val": ([texts[i] for i in val_idx], [labels[i] for i in val_idx]),
                   "train": ([texts[i] for i in train_idx], [labels[i] for i in train_idx])}
        toks = {s: [tokenize(t, self.tokens, self.lowercase)[:self.max_len] for t in raw[s][0]]
                for s in ("train", "val", "test")}
        counts = Counter(t for seq in toks["train"] for t in seq)
        ranked = sorted(counts, key=lambda t: (-counts[t], t))[:self.max_vocab - 2]
        vocab = ["<pad>", "<unk>"] + ranked
        ids = {t: i for i, t in enumerate(vocab)}
        out: dict[str, Any] = {"vocab": vocab}
        for s, seqs in toks.items():
            enc = [[ids.get(t, UNK) for t in seq] or [UNK] for seq in seqs]  # an empty text reads one <unk>
            x, lengths = pad(enc, PAD)
            out[s] = (x, lengths, torch.tensor(raw[s][1], dtype=torch.long))
        return out

    def token_splits(self) -> dict[str, Padded]:
        def build() -> dict[str, Padded]:
            d = self.data()
            out = {s: d[s] for s in ("train", "val", "test")}
            if self.n_train:
                ids, lengths, labels = out["train"]
                (sub,) = split_indices(len(labels), [min(self.n_train, len(labels))], self.data_seed + 1)[:1]
                out["train"] = (ids[sub], lengths[sub], labels[sub])
            return out

        return memo(self, "splits", build)
