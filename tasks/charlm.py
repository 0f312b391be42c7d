"""char-lm: character-level language modelling, scored in bits per character.

After Cooijmans et al. 2017, "Recurrent Batch Normalization": training on
length-``window`` windows, hidden state starting at zero, evaluation over the whole
split carrying the hidden state from window to window; bpc = cross-entropy / ln 2.
One difference: each sample of each step takes its own random offset, where their
code cut the training text into non-overlapping windows once and shuffled those
each epoch.

Corpora and their splits:
  ``ptb``          Penn Treebank, Mikolov's split (Mikolov et al. 2012, "Subword
                   Language Modeling with Neural Networks"): one sentence per line,
                   words separated by spaces. Files ``ptb.char.{train,valid,test}.txt``
                   (characters separated by spaces, ``_`` between words) or the word-
                   level ``ptb.{train,valid,test}.txt``; both become the same text.
                   Hub: ``ptb-text-only/ptb_text_only`` (script-based, so its parquet
                   conversion: ``revision="refs/convert/parquet"``, folder ``penn_treebank``).
  ``text8``        first 90M characters train, next 5M valid, last 5M test. File
                   ``text8`` (or ``text8.zip``). Hub: ``afmck/text8`` (parquet, one row
                   per split, the same 90M/5M/5M cut).
  ``shakespeare``  tiny-shakespeare (Karpathy 2015, char-rnn), 90% / 5% / 5% in order,
                   as TFDS and the hub script cut it. File ``input.txt`` in
                   ``shakespeare/`` or ``tinyshakespeare.txt``. Hub:
                   ``karpathy/tiny_shakespeare`` (script-based: ``refs/convert/parquet``,
                   folder ``default``).
  ``local``        ``path``: one text file (cut 90/5/5 in order) or a folder with
                   ``train.txt``, ``valid.txt`` (or ``val.txt``/``validation.txt``), ``test.txt``.

The vocabulary is the set of characters of the training split, sorted by code
point; characters seen only in valid/test map to one extra ``<unk>`` entry.

Whole-split evaluation: the N - 1 next-character targets of a split are cut into
B contiguous streams (B = the evaluation batch size, fewer if the split is short),
each processed window by window with its state carried over; the last stream is
padded, and padded targets are ignored, so every character after the first is
predicted exactly once. Only each stream's first step starts from a zero state, so
more streams score a little worse: ``test_streams=1`` scores the test split as one
stream, as Cooijmans et al.'s evaluation did (their ``penntreebank_evaluate.py``), at
the cost of one window per call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from suite.errors import UserError
from suite.registry import param
from tasks.base import Batch, Task
from tasks.data import data_dir, fetch, find, find_all, fraction_split, local_path, memo, read_text
from tasks.registry import register

IGNORE = -100  # F.cross_entropy's default ignore_index
UNK = "<unk>"
SPLITS = ("train", "val", "test")


def ptb_from_files(paths: list[Path]) -> dict[str, str]:
    """PTB text, one sentence per line, from Mikolov's char files or the word-level files."""
    out = {}
    for split, p in zip(SPLITS, paths):
        lines = read_text(p).splitlines()
        if ".char." in p.name:  # "a e r _ b a n k" -> "aer bank"
            lines = ["".join(line.split()).replace("_", " ") for line in lines]
        out[split] = "".join(line.strip() + "\n" for line in lines if line.strip())
    return out


def ptb_from_hub(ds: Any) -> dict[str, str]:
    return {s: "".join(line.strip() + "\n" for line in ds[h]["sentence"] if line.strip())
            for s, h in zip(SPLITS, ("train", "validation", "test"))}


def one_row_per_split(ds: Any) -> dict[str, str]:
    """Hub layouts with the whole split as one ``text`` row (text8, tiny-shakespeare)."""
    return {s: "".join(ds[h]["text"]) for s, h in zip(SPLITS, ("train", "validation", "test"))}


def split_file(paths: list[Path]) -> dict[str, str]:
    return fraction_split(read_text(paths[0]))


def split_files(paths: list[Path]) -> dict[str, str]:
    return {s: read_text(p) for s, p in zip(SPLITS, paths)}


def encode(texts: dict[str, str]) -> dict[str, Any]:
    """Character ids per split (uint8 when the vocabulary fits) and the vocabulary."""
    chars = sorted(set(texts["train"]))
    if not chars:
        raise UserError("char-lm: the training split is empty")
    codes = np.array([ord(c) for c in chars], dtype=np.uint32)
    unseen = (set(texts["val"]) | set(texts["test"])) - set(chars)
    vocab = chars + ([UNK] if unseen else [])
    dtype = torch.uint8 if len(vocab) <= 256 else torch.int32
    out: dict[str, Any] = {"vocab": vocab}
    step = 1 << 22  # encode in chunks: a 100M-character split would need GBs at once
    for split, text in texts.items():
        parts = []
        for i in range(0, len(text), step):
            cps = np.frombuffer(text[i:i + step].encode("utf-32-le"), dtype="<u4")
            idx = np.minimum(np.searchsorted(codes, cps), len(codes) - 1)
            ids = np.where(codes[idx] == cps, idx, len(chars))  # len(chars) is <unk>
            parts.append(torch.from_numpy(ids).to(dtype))
        out[split] = torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)
    return out


@dataclass(frozen=True)
class Corpus:
    """How one corpus is found locally and on the hub."""

    what: str
    find: Callable[[], list[Path] | None]
    read_local: Callable[[list[Path]], dict[str, str]]
    accepted: str
    hub_id: str | None = None
    read_hub: Callable[[Any], dict[str, str]] | None = None
    hub_kwargs: dict | None = None


def _find_ptb() -> list[Path] | None:
    sub = ("ptb", "penn", "pennchar", "PTB")
    return (find_all([(f"ptb.char.{s}.txt",) for s in ("train", "valid", "test")], sub)
            or find_all([(f"ptb.{s}.txt",) for s in ("train", "valid", "test")], sub))


def _find_one(*names: str, sub: tuple[str, ...] = ()) -> Callable[[], list[Path] | None]:
    def go() -> list[Path] | None:
        p = find(names, sub)
        return [p] if p else None
    return go


SHAKESPEARE_DIRS = ("shakespeare", "tinyshakespeare", "tiny_shakespeare")


def _find_shakespeare() -> list[Path] | None:
    """tinyshakespeare.txt (top level or a shakespeare folder), or char-rnn's input.txt in such a folder."""
    p = find(("tinyshakespeare.txt", "tiny_shakespeare.txt", "shakespeare.txt"), SHAKESPEARE_DIRS)
    root = data_dir()
    if p is None and root is not None:
        p = next((root / d / "input.txt" for d in SHAKESPEARE_DIRS if (root / d / "input.txt").is_file()), None)
    return [p] if p else None


CORPORA = {
    "ptb": Corpus("Penn Treebank (Mikolov's split)", _find_ptb, ptb_from_files,
                  "ptb.char.{train,valid,test}.txt or ptb.{train,valid,test}.txt (top level or ptb/)",
                  "ptb-text-only/ptb_text_only", ptb_from_hub,
                  {"revision": "refs/convert/parquet", "data_dir": "penn_treebank"}),
    "text8": Corpus("text8", _find_one("text8", "text8.txt", "text8.zip", sub=("text8",)), split_file,
                    "text8 or text8.zip (top level or text8/)", "afmck/text8", one_row_per_split),
    "shakespeare": Corpus("tiny-shakespeare", _find_shakespeare,
                          split_file, "tinyshakespeare.txt or shakespeare/input.txt",
                          "karpathy/tiny_shakespeare", one_row_per_split,
                          {"revision": "refs/convert/parquet", "data_dir": "default"}),
}


def _local_corpus(path: str) -> Corpus:
    p = local_path(path, "char-lm")
    if p.is_file():
        return Corpus(str(p), lambda: [p], split_file, str(p))
    names = [("train.txt",), ("valid.txt", "val.txt", "validation.txt"), ("test.txt",)]
    found = [next((p / n for n in group if (p / n).is_file()), None) for group in names]
    if not all(found):
        raise UserError(f"task 'char-lm': folder {p} needs train.txt, valid.txt (or val.txt, "
                        "validation.txt) and test.txt")
    return Corpus(str(p), lambda: found, split_files, str(p))  # type: ignore[arg-type, return-value]


def _detach(state: Any) -> Any:
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, (tuple, list)):
        return type(state)(_detach(s) for s in state)
    return state


@register("char-lm")
@dataclass
class CharLM(Task):
    """Next-character prediction at every step; bits per character over whole splits."""

    corpus: str = param("ptb", "ptb, text8, shakespeare, or local (a text file or folder in 'path')",
                        choices=("ptb", "text8", "shakespeare", "local"))
    path: str | None = param(None, "corpus=local: a text file (cut 90/5/5) or a folder with "
                             "train.txt, valid.txt, test.txt")
    window: int = param(100, "training (and evaluation) window length; Cooijmans: 100 PTB, 180 text8",
                        min=1, max=100_000)
    max_chars: int = param(0, "use only the first N characters of each split (0: all); for quick runs",
                           min=0)
    test_streams: int = param(0, "contiguous streams the test split is scored in (0: the evaluation batch "
                              "size); Cooijmans et al. score it as one", min=0)

    description = "character-level language modelling: bits per character (ptb, text8, shakespeare, local)"
    target = "every"
    loss_kind = "ce"
    primary = "bpc"
    higher_is_better = False
    solved = None

    def __post_init__(self) -> None:
        if (self.corpus == "local") != (self.path is not None):
            raise UserError("task 'char-lm': give path=... exactly when corpus='local'")

    # -- data ---------------------------------------------------------------
    def data(self) -> dict[str, Any]:
        """{"train"/"val"/"test": ids, "vocab": list of characters}, loaded once."""
        return memo(self, "data", self._load)

    def _load(self) -> dict[str, Any]:
        c = CORPORA[self.corpus] if self.path is None else _local_corpus(self.path)
        d = fetch("char-lm", c.what, options={"corpus": self.corpus, "format": 1}, local=c.find(),
                  read_local=lambda ps: encode(c.read_local(ps)), hub_id=c.hub_id,
                  read_hub=(lambda ds: encode(c.read_hub(ds))) if c.read_hub else None,  # type: ignore[misc]
                  accepted=c.accepted, hub_kwargs=c.hub_kwargs)
        if self.max_chars:
            d = {**d, **{s: d[s][:self.max_chars] for s in SPLITS}}
        for s in SPLITS:
            if len(d[s]) < 2:
                raise UserError(f"task 'char-lm': the {s} split of {c.what} has fewer than 2 characters")
        if len(d["train"]) <= self.window:
            raise UserError(f"task 'char-lm': window={self.window} must be shorter than the "
                            f"{len(d['train'])}-character training split")
        return d

    def _on(self, split: str, device: torch.device) -> Tensor:
        return memo(self, (split, str(device)), lambda: self.data()[split].to(device))

    @property
    def vocab(self) -> list[str]:
        return self.data()["vocab"]

    @property
    def vocab_size(self) -> int:  # type: ignore[override]
        return len(self.vocab)

    @property
    def output_size(self) -> int:  # type: ignore[override]
        return len(self.vocab)

    @property
    def seq_len(self) -> int:  # type: ignore[override]
        return self.window

    @property
    def chance(self) -> float:  # type: ignore[override]
        """bpc of a memoryless (unigram) model: test characters under add-one train frequencies."""
        d = self.data()
        V = len(d["vocab"])
        counts = torch.bincount(d["train"].long(), minlength=V).double() + 1.0
        logp = (counts / counts.sum()).log2()
        return float(-logp[d["test"].long()].mean())

    def train_batch(self, batch_size: int, gen: torch.Generator, device: torch.device) -> Batch:
        data = self._on("train", device)
        start = torch.randint(0, len(data) - self.window, (batch_size, 1), generator=gen, device=device)
        pos = start + torch.arange(self.window + 1, device=device)
        chunk = data[pos].long()
        return Batch(chunk[:, :-1], chunk[:, 1:])

    def eval_batches(self, split: str, batch_size: int, device: torch.device) -> Iterator[Batch]:
        """Consecutive windows of B contiguous streams (see the module docstring).

        Feed them in order carrying the state (as ``evaluate`` does); targets past
        the end of the split are ``IGNORE``.
        """
        data = self._on(split, device)
        n = len(data) - 1  # next-character targets
        if split == "test" and self.test_streams:
            batch_size = self.test_streams
        streams = max(1, min(batch_size, n // self.window))
        S = math.ceil(n / streams)
        streams = math.ceil(n / S)
        starts = torch.arange(streams, device=device).view(-1, 1) * S
        for k in range(0, S, self.window):
            pos = starts + k + torch.arange(min(self.window, S - k), device=device)
            valid = pos < n
            x = data[pos.clamp(max=n - 1)].long()
            y = torch.where(valid, data[(pos + 1).clamp(max=n)].long(), IGNORE)
            yield Batch(x, y)

    # -- scoring ------------------------------------------------------------
    def metric_sums(self, out: Tensor, batch: Batch) -> dict[str, tuple[float, float]]:
        logits = out.float().reshape(-1, out.shape[-1])
        y = batch.y.reshape(-1)
        keep = y != IGNORE
        logits, y = logits[keep], y[keep]
        ce = F.cross_entropy(logits, y, reduction="sum").item()
        n = y.numel()
        return {"loss": (ce, n), "bpc": (ce / math.log(2), n),
                "acc": ((logits.argmax(-1) == y).sum().item(), n)}

    @torch.no_grad()
    def evaluate(self, model: Any, split: str, device: torch.device,
                 batch_size: int = 500) -> dict[str, float]:
        """Mean metrics over the whole split, carrying state across windows via ``model.run``."""
        totals: dict[str, list[float]] = {}
        state, offset = None, 0
        for batch in self.eval_batches(split, batch_size, device):
            # each window continues its streams: its steps are steps offset.. of them
            res = model.run(batch.x, None, state=state, offset=offset)
            state, offset = _detach(res.state), offset + batch.x.shape[1]
            for name, (s, n) in self.metric_sums(res.y, batch).items():
                acc = totals.setdefault(name, [0.0, 0.0])
                acc[0] += s
                acc[1] += n
        return {name: s / n for name, (s, n) in totals.items() if n > 0}
