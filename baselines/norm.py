"""Normalization of one term of a recurrent cell, over a whole sequence or one step.

``SeqNorm`` is batch norm or layer norm for the terms a recurrent cell normalizes
(W_x x_t, W_h h_{t-1}, c_t, or the cell's output sequence), with the choices the
literature varies:

- batch statistics **per time step** (Cooijmans et al. 2017, "Recurrent Batch
  Normalization": separate statistics for every t, γ/β shared over time) or
  **shared** over time (Laurent et al. 2016, "Batch Normalized Recurrent Neural
  Networks", sequence-wise normalization: one mean/variance over batch and time);
- at evaluation, **population** statistics (an exponential moving average of the
  training batch statistics, as Cooijmans et al.'s code keeps during training; for
  their test numbers they re-estimated them with frozen weights, which
  ``NormModel.recalibrate`` does) or the evaluation batch's own statistics; steps
  beyond the longest training length reuse the last step's population statistics;
- layer norm (Ba et al. 2016, "Layer Normalization") normalizes every sample over
  its features: no batch statistics, the same at training and evaluation.

Running statistics are buffers with one row per time step seen in training (one
row when shared), so they are in the ``state_dict`` and follow ``.to(device)``; the
number of rows grows to the longest training length and a ``state_dict`` with a
different number of rows loads as it is. They are updated only in training mode.

Padded batches: ``mask`` (B, T) marks the valid steps; batch statistics are masked
means and variances over valid entries only, so padding never changes a result.

Terms outside the recurrence (the input term, the output sequence) are normalized
for all steps at once with ``seq``. The recurrent term and c_t exist one step at a
time, so ``step`` normalizes them inside the loop. The common case (no padding,
per-step statistics, batch of two or more) is one fused ``F.batch_norm`` call that
also updates that step's row of running statistics in place; the general case
(padding, shared statistics) is computed from masked moments, and its step
statistics wait in a list until ``flush`` folds them in with one update.
A recurrent term cannot see future steps, so with ``stats="shared"`` its training
batch statistics remain per step; what is shared is its population statistics
(one average over all steps: the time-averaged population statistics Cooijmans et
al. report to degrade performance).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KINDS = ("batch", "layer")
STATS = ("per_step", "shared")
EVAL_STATS = ("population", "batch")

Moments = tuple[Tensor, Tensor, Tensor]  # mean (R, F), biased variance (R, F), count (R, 1)


def add_optional(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """a + b, where either may be absent."""
    return b if a is None else a if b is None else a + b


def step_mask(lengths: Tensor | None, steps: int, device: torch.device) -> Tensor | None:
    """(B, T) bool, True where step t < length; None when there is no padding."""
    if lengths is None:
        return None
    return torch.arange(steps, device=device) < lengths.to(device).view(-1, 1)


def moments(a: Tensor, mask: Tensor | None, dims: tuple[int, ...]) -> Moments:
    """Mean, biased variance and count of ``a`` over ``dims``, valid entries only.

    ``a`` is (B, F), (B, T, F) or (N, F); ``mask`` has ``a``'s shape without F.
    The results have the reduced dimensions dropped, with a leading row dimension
    added when none is left (so a single set of statistics is one row).
    """
    if mask is None:
        var, mean = torch.var_mean(a, dim=dims, correction=0)
        count = 1
        for d in dims:
            count *= a.shape[d]
        n = a.new_full(mean.shape[:-1] + (1,), float(count))
    else:
        m = mask.unsqueeze(-1)
        n = m.sum(dims, dtype=a.dtype)
        denom = n.clamp(min=1.0)
        mean = torch.where(m, a, 0.0).sum(dims) / denom
        var = torch.where(m, a - mean, 0.0).pow(2).sum(dims) / denom
    if mean.dim() == 1:
        mean, var, n = mean.unsqueeze(0), var.unsqueeze(0), n.view(1, 1)
    return mean, var, n


def pool(mean: Tensor, var: Tensor, n: Tensor) -> Moments:
    """Combine per-step moments (R, F) into one row (law of total variance)."""
    total = n.sum(0, keepdim=True)
    denom = total.clamp(min=1.0)
    m = (n * mean).sum(0, keepdim=True) / denom
    v = (n * (var + (mean - m).pow(2))).sum(0, keepdim=True) / denom
    return m, v, total


class SeqNorm(nn.Module):
    """Batch or layer norm of a (B, T, F) sequence or a (B, F) step; see the module doc.

    ``weight`` is γ (initialised to ``gamma``), ``bias`` is β (zeros) or absent
    when ``beta=False`` (Cooijmans et al. drop the β of the W_x x and W_h h terms:
    the cell's one shared bias takes its place).
    """

    def __init__(self, features: int, kind: str = "batch", *, stats: str = "per_step",
                 eval_stats: str = "population", gamma: float = 1.0, beta: bool = True,
                 eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        if kind not in KINDS or stats not in STATS or eval_stats not in EVAL_STATS:
            raise ValueError(f"bad SeqNorm settings: kind={kind!r} stats={stats!r} eval_stats={eval_stats!r}")
        self.features, self.kind, self.stats, self.eval_stats = features, kind, stats, eval_stats
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.full((features,), float(gamma)))
        self.bias = nn.Parameter(torch.zeros(features)) if beta else None
        if kind == "batch":
            self.register_buffer("running_mean", torch.zeros(0, features))
            self.register_buffer("running_var", torch.ones(0, features))
        self._pending: list[Moments] = []
        self._sizes: set[int | None] = set()  # batch sizes of the pending rows (None: from a mask)
        self._padded = False
        # While averaging (``average``): how many batches each row's running statistics hold.
        self._seen: Tensor | None = None
        # Steps a call continues from (``offset``): its step t is step offset + t of the
        # sequence, whose population statistics it uses in evaluation.
        self.offset = 0

    def extra_repr(self) -> str:
        s = f"{self.features}, kind={self.kind}"
        if self.kind == "batch":
            s += f", stats={self.stats}, eval_stats={self.eval_stats}, momentum={self.momentum}"
        return s + f", eps={self.eps}, beta={self.bias is not None}"

    # -- public API -----------------------------------------------------------
    def seq(self, a: Tensor, mask: Tensor | None = None, affine: bool = True, shift: Tensor | None = None) -> Tensor:
        """Normalize a whole (B, T, F) sequence; per-step statistics over the batch for each t.
        ``shift`` (F,) is added after the norm (a cell's bias): inside the fused norm's β
        where there is one, which saves a pass over the sequence forward and backward."""
        if self.kind == "layer":
            return self._layer_norm(a, affine, shift)
        B, T, feats = a.shape
        shared = self.stats == "shared"
        if mask is None and self._fused(B, 0, 1 if shared else T):
            # One fused batch_norm call: with per-step statistics the T*F (step,
            # feature) pairs are its channels; shared, the B*T steps are its samples.
            flat = a.reshape(B * T, feats) if shared else a.reshape(B, T * feats)
            rm, rv = self._running(0, 1 if shared else T)
            w, b = (self.weight, add_optional(self.bias, shift)) if affine else (None, None)
            if affine and not shared:
                w, b = w.repeat(T), (b.repeat(T) if b is not None else None)
            out = F.batch_norm(flat, rm, rv, w, b, self._batch_stats(), self._momentum(0, 1 if shared else T),
                               self.eps).view(B, T, feats)
            return out if affine or shift is None else out + shift
        if self._batch_stats():
            mean, var, n = moments(a, mask, (0, 1) if shared else (0,))
            if self.training:
                self._update(mean.detach(), var.detach(), n, padded=mask is not None)
        else:
            mean, var = self._population(self.offset, T)
        out = self._affine((a - mean) * torch.rsqrt(var + self.eps), affine)
        return out if shift is None else out + shift

    def step(self, a: Tensor, t: int, mask_t: Tensor | None = None) -> Tensor:
        """Normalize step ``t`` (B, F) of a term computed inside the recurrence."""
        if self.kind == "layer":
            return self._layer_norm(a, True)
        if mask_t is None and self.stats == "per_step" and self._fused(a.shape[0], t, 1):
            rm, rv = self._running(t, 1)  # training: updates row t in place
            return F.batch_norm(a, rm, rv, self.weight, self.bias, self._batch_stats(),
                                self._momentum(t, 1), self.eps)
        if self._batch_stats():
            mean, var, n = moments(a, mask_t, (0,))
            if self.training:
                self._pending.append((mean.detach(), var.detach(), n))
                self._sizes.add(a.shape[0] if mask_t is None else None)
                self._padded = self._padded or mask_t is not None
        else:
            mean, var = self._population(self.offset + t, 1)
        return self._affine((a - mean) * torch.rsqrt(var + self.eps), True)

    def uses_batch_stats(self) -> bool:
        """Whether this pass normalizes with batch statistics (training, or norm_eval=batch)."""
        return self.kind == "batch" and self._batch_stats()

    def population(self, steps: int) -> tuple[Tensor, Tensor]:
        """Population mean and variance (steps, F) of a call's steps 0..steps-1 (see
        ``_population``; steps offset.. of the sequence)."""
        return self._population(self.offset, steps)

    def average(self, on: bool) -> None:
        """Switch the running statistics from an exponential moving average to the plain
        average of the batches that follow (``NormModel.recalibrate``), each row over the
        batches that reached it: a row no batch reaches keeps its value."""
        self._seen = self.running_mean.new_zeros(0, dtype=torch.long) if on and self.kind == "batch" else None

    def add_step_stats(self, mean: Tensor, var: Tensor, count: int) -> None:
        """Per-step batch statistics (T, F) computed elsewhere (the fused kernel), folded
        into the running statistics at the next ``flush`` like those of ``step``."""
        if self.training:
            self._pending.append((mean.detach(), var.detach(), mean.new_full((mean.shape[0], 1), float(count))))
            self._sizes.add(count)

    def apply_affine(self, z: Tensor) -> Tensor:
        """γ·z + β on an already normalized ``z`` (for the seed formula γ·ReLU(ẑ) + β)."""
        return self._affine(z, True)

    def reset(self) -> None:
        """Drop step statistics of an unfinished forward pass (call before a new one)."""
        self._pending, self._sizes, self._padded = [], set(), False

    def flush(self) -> None:
        """Fold the statistics gathered by ``step`` since the last flush into the running ones."""
        if self._pending:
            pending, sizes, padded = self._pending, self._sizes, self._padded
            self.reset()
            size = next(iter(sizes)) if len(sizes) == 1 else None
            if self.stats == "per_step" and size is not None and size >= 2:  # every row from a full batch
                self._update_rows(torch.cat([p[0] for p in pending]), torch.cat([p[1] for p in pending]), size)
                return
            mean, var, n = (torch.cat(parts) for parts in zip(*pending))
            if self.stats == "shared":
                mean, var, n = pool(mean, var, n)
            self._update(mean, var, n, padded=padded)

    # -- internals --------------------------------------------------------------
    def _batch_stats(self) -> bool:
        return self.training or self.eval_stats == "batch"

    def _affine(self, z: Tensor, affine: bool) -> Tensor:
        if not affine:
            return z
        return z * self.weight + self.bias if self.bias is not None else z * self.weight

    def _layer_norm(self, a: Tensor, affine: bool, shift: Tensor | None = None) -> Tensor:
        if not affine:
            out = F.layer_norm(a, (self.features,), None, None, self.eps)
            return out if shift is None else out + shift
        return F.layer_norm(a, (self.features,), self.weight, add_optional(self.bias, shift), self.eps)

    def _fused(self, batch: int, first: int, rows: int) -> bool:
        """Whether ``F.batch_norm`` computes this case of rows first..: it cannot take batch
        statistics of one sample (in training, or in evaluation with eval_stats="batch"),
        and its one momentum cannot average rows that earlier batches reached unevenly."""
        if self._batch_stats() and batch < 2:
            return False
        return not (self.training and self._seen is not None and self._uneven(first, rows))

    def _uneven(self, first: int, rows: int) -> bool:
        seen = self._seen[first:first + rows]
        if len(seen) < rows:  # rows no batch has reached yet
            seen = torch.cat([seen, seen.new_zeros(rows - len(seen))])
        return bool((seen != seen[0]).any())

    def _momentum(self, first: int, rows: int) -> float:
        """The fused update's weight of this batch for rows first.. (seen alike): the EMA's
        momentum, or while averaging 1 / (batches that reached them, this one included)."""
        if not (self.training and self._seen is not None):
            return self.momentum
        self._see(first + rows)
        self._seen[first:first + rows] += 1
        return 1.0 / float(self._seen[first])

    def _weights(self, rows: int, ok: Tensor) -> float | Tensor:
        """``_update``'s weight of this batch for rows 0..rows-1 (those ``ok`` take it): the
        EMA's momentum, or while averaging 1 / (batches that reached each row), one number
        where the rows agree (the same update as the fused one's)."""
        if self._seen is None:
            return self.momentum
        self._see(rows)
        took = ok.view(-1).to(self._seen.device)
        self._seen[:rows] += took.long()
        seen = self._seen[:rows]
        if bool(took.all()) and bool((seen == seen[0]).all()):
            return 1.0 / float(seen[0])
        return (took / seen.clamp(min=1)).view(-1, 1).to(self.running_mean.device, self.running_mean.dtype)

    def _see(self, rows: int) -> None:
        if self._seen.shape[0] < rows:
            self._seen = torch.cat([self._seen, self._seen.new_zeros(rows - self._seen.shape[0])])

    def _running(self, first: int, steps: int) -> tuple[Tensor | None, Tensor | None]:
        """Running statistics for ``F.batch_norm``, flattened to (steps*F,).

        Training: views of rows first.. (updated in place, grown if needed);
        evaluation: population rows, or None to use the batch's own statistics.
        """
        if self.training:
            end = first + steps
            self._grow(end)
            return self.running_mean[first:end].view(-1), self.running_var[first:end].view(-1)
        if self.eval_stats == "batch":
            return None, None
        mean, var = self._population(self.offset + first, steps)
        return mean.reshape(-1), var.reshape(-1)

    def _population(self, first: int, steps: int) -> tuple[Tensor, Tensor]:
        """Population statistics of steps first..first+steps-1, (steps, F) or (1, F) shared."""
        rows = self.running_mean.shape[0]
        n = 1 if self.stats == "shared" else steps
        if rows == 0:  # never trained: the identity statistics of a fresh BatchNorm
            return (self.running_mean.new_zeros(n, self.features),
                    self.running_var.new_ones(n, self.features))
        if n == 1:
            r = 0 if self.stats == "shared" else min(first, rows - 1)  # past the training length: last row
            return self.running_mean[r:r + 1], self.running_var[r:r + 1]
        idx = torch.arange(first, first + n, device=self.running_mean.device).clamp(max=rows - 1)
        return self.running_mean[idx], self.running_var[idx]

    @torch.no_grad()
    def _update(self, mean: Tensor, var: Tensor, n: Tensor, padded: bool = False) -> None:
        """EMA of the batch moments into rows 0..R-1 (unbiased variance, as BatchNorm).

        Rows (steps) with fewer than two valid samples keep their old value. A padded
        batch's statistics end at its longest valid length, which costs one host sync.
        """
        rows = mean.shape[0]
        if padded and rows > 1:
            # Valid steps form a prefix, and n falls along it: rows end where fewer than two
            # samples are left (a row grown there would keep the identity statistics, which
            # evaluation would use instead of the last estimated row's).
            rows = int((n.view(-1) >= 2).sum())
            mean, var, n = mean[:rows], var[:rows], n[:rows]
            if rows == 0:
                return
        self._grow(rows)
        ok = n >= 2
        weight = self._weights(rows, ok)
        unbiased = var * n / (n - 1).clamp(min=1.0)
        for buf, new in ((self.running_mean, mean), (self.running_var, unbiased)):
            cur = buf[:rows]
            cur.copy_(torch.where(ok, torch.lerp(cur, new.to(cur.dtype), weight), cur))

    @torch.no_grad()
    def _update_rows(self, mean: Tensor, var: Tensor, size: int) -> None:
        """``_update`` where every row has the statistics of ``size`` >= 2 samples: the
        same values, from two in-place ops instead of a dozen small ones per pass."""
        rows = mean.shape[0]
        self._grow(rows)
        weight = self._weights(rows, mean.new_ones(rows, dtype=torch.bool))
        self.running_mean[:rows].lerp_(mean.to(self.running_mean.dtype), weight)
        self.running_var[:rows].lerp_((var * float(size) / float(size - 1)).to(self.running_var.dtype), weight)

    def _grow(self, rows: int) -> None:
        have = self.running_mean.shape[0]
        if rows > have:
            extra = rows - have
            self.running_mean = torch.cat([self.running_mean, self.running_mean.new_zeros(extra, self.features)])
            self.running_var = torch.cat([self.running_var, self.running_var.new_ones(extra, self.features)])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[override]
        # Rows = the longest training length seen, which may differ from this module's.
        for name in ("running_mean", "running_var"):
            src = state_dict.get(prefix + name)
            buf = getattr(self, name, None)
            if src is not None and buf is not None and src.dim() == 2 and src.shape != buf.shape:
                setattr(self, name, buf.new_empty(src.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
