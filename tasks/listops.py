"""ListOps: nested prefix expressions over digits, 10-way classification of the value.

Nangia & Bowman 2018, "ListOps: A Diagnostic Dataset for Latent Tree Learning";
the generator follows the Long Range Arena version (Tay et al. 2021, "Long Range
Arena: A Benchmark for Efficient Transformers"): operators ``[MIN``, ``[MAX``,
``[MED``, ``[SM`` (sum mod 10) closed by ``]``, each with 2..``max_args``
arguments; an argument is a nested operator with probability 0.25 while its own
depth (the root's is 1) is below ``max_depth``, else a digit 0-9, so operators
nest at most ``max_depth - 1`` deep, as LRA's ``generate_tree`` (which tests a
node's own depth) makes them; expressions whose token count lies
outside [``min_length``, ``max_length``] are rejected and drawn again. MED of an
even number of values is the floor of the mean of the two middle ones (LRA's
``int(np.median(...))``). Unlike LRA, the root is always an operator, so
``min_length`` below LRA's 500 never yields a bare digit. Parentheses are not
tokens (LRA's tokenizer drops them too).

Generated from ``data_seed`` (per split), so it runs offline; the fixed train /
validation / test sets (LRA sizes 96k / 2k / 2k by default) are cached on disk.
Tokens: digits 0-9 are ids 0-9, the operators 10-13, ``]`` 14, padding 15.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from suite.errors import UserError
from suite.registry import param
from tasks.base import split_seed
from tasks.data import cached, memo
from tasks.padded import Padded, PaddedTokens, pad
from tasks.registry import register

OPS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
TOKENS = tuple(str(d) for d in range(10)) + OPS + (END, "<pad>")
ID = {t: i for i, t in enumerate(TOKENS)}
PAD = ID["<pad>"]
NON_LEAF_P = 0.25  # LRA's probability that an argument is itself an operator
MAX_TRIES = 1000  # draws per sample before the length range is declared impossible


class _TooLong(Exception):
    pass


def _tree(rng: random.Random, depth: int, max_depth: int, max_args: int, out: list[str],
          limit: int) -> None:
    """Append one operator expression's tokens to ``out``; stop early past ``limit`` tokens."""
    out.append(rng.choice(OPS))
    for _ in range(rng.randint(2, max_args)):
        if depth + 1 < max_depth and rng.random() < NON_LEAF_P:  # the argument's own depth, as LRA's
            _tree(rng, depth + 1, max_depth, max_args, out, limit)
        else:
            out.append(str(rng.randrange(10)))
        if len(out) > limit:
            raise _TooLong
    out.append(END)


def generate(rng: random.Random, *, min_length: int, max_length: int, max_depth: int,
             max_args: int) -> list[str]:
    """One expression with min_length <= tokens <= max_length (rejection sampling)."""
    for _ in range(MAX_TRIES):
        out: list[str] = []
        try:
            _tree(rng, 1, max_depth, max_args, out, max_length)
        except _TooLong:
            continue
        if min_length <= len(out) <= max_length:
            return out
    raise UserError(f"task 'listops': {MAX_TRIES} draws gave no expression of {min_length}-{max_length} "
                    f"tokens with max_depth={max_depth}, max_args={max_args}; widen the length range")


def apply_op(op: str, args: list[int]) -> int:
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[SM":
        return sum(args) % 10
    s = sorted(args)  # [MED
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) // 2


def evaluate_tokens(tokens: list[str]) -> int:
    """The value of an expression, by a left-to-right scan with a stack of open operators."""
    stack: list[tuple[str, list[int]]] = []
    value = None
    for tok in tokens:
        if tok in OPS:
            stack.append((tok, []))
        elif tok == END:
            op, args = stack.pop()
            value = apply_op(op, args)
            if stack:
                stack[-1][1].append(value)
        else:
            stack[-1][1].append(int(tok))
    if stack or value is None:
        raise ValueError(f"unbalanced expression: {' '.join(tokens)}")
    return value


@register("listops")
@dataclass
class ListOps(PaddedTokens):
    """Generated ListOps, padded with lengths; the value (0-9) is read at the last token."""

    max_length: int = param(2000, "longest expression in tokens (LRA: 2000)", min=4, max=100_000)
    min_length: int = param(500, "shortest expression in tokens (LRA: 500)", min=4, max=100_000)
    max_depth: int = param(10, "operators nest at most max_depth - 1 deep (LRA's max_depth: 10)", min=2, max=100)
    max_args: int = param(10, "most arguments per operator (LRA: 10)", min=2, max=100)
    n_train: int = param(96_000, "training expressions (LRA: 96k)", min=1)
    n_val: int = param(2000, "validation expressions", min=1)
    n_test: int = param(2000, "test expressions", min=1)
    data_seed: int = param(0, "seed of the generated sets", min=0)

    description = "ListOps: nested MAX/MIN/MED/SUM_MOD over digits, 10-way (acc; generated)"
    vocab_size = len(TOKENS)
    output_size = 10
    solved = None

    def __post_init__(self) -> None:
        if self.min_length > self.max_length:
            raise UserError(f"task 'listops': min_length={self.min_length} exceeds max_length={self.max_length}")

    @property
    def seq_len(self) -> int:  # type: ignore[override]
        return self.max_length

    def make_split(self, split: str) -> dict[str, Any]:
        """Generate ``split`` (seeded by data_seed and the split name): padded ids, lengths, labels."""
        rng = random.Random(split_seed(self.data_seed, split))
        exprs = [generate(rng, min_length=self.min_length, max_length=self.max_length,
                          max_depth=self.max_depth, max_args=self.max_args) for _ in range(self.sizes[split])]
        ids, lengths = pad([[ID[t] for t in e] for e in exprs], PAD)
        labels = torch.tensor([evaluate_tokens(e) for e in exprs], dtype=torch.long)
        return {"ids": ids.to(torch.uint8), "lengths": lengths, "labels": labels}

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}

    def token_splits(self) -> dict[str, Padded]:
        shape = {k: getattr(self, k) for k in ("max_length", "min_length", "max_depth", "max_args", "data_seed")}

        def build() -> dict[str, Padded]:
            out = {}
            for split in ("train", "val", "test"):
                key = {"generator": 2, "split": split, "n": self.sizes[split], **shape}
                d = cached("listops", key, lambda: self.make_split(split))
                out[split] = (d["ids"], d["lengths"], d["labels"])
            return out

        return memo(self, "splits", build)
