"""Batch and layer norm in the step kernels with the batch's rows split over programs.

The step kernels of ``baselines/scan_triton.py`` give a program that takes batch
statistics every row of the batch, so that each unit's mean and variance stay within
one program: at B=100, H=100 that is 25 programs of 128 rows and 4 units, each step a
long chain of dependent work on few multiprocessors (bn-lstm on an H100: ~11 us a
forward step, ~14 us a backward one, against ~4 and ~6 for lstm-loop's 91 programs of
16 rows and 8 units; benchmarks/RESULTS.md, 2026-11-27). Here a batch-norm cell takes
lstm-loop's tiles, and the programs that share units exchange their rows' statistics:

- forward: each program sums its rows of z = h_{t-1} W^T per feature, and the squares
  about its rows' own mean, and stores both (``_bn_part``); after a barrier, every
  program of those units reads every row block's pair and combines them in one fixed
  order (``_stats``: the blocks' sums of squares about their own means plus each
  block's count times its mean's squared distance from the batch mean; the combination
  of Chan, Golub and LeVeque, "Updating Formulae and a Pairwise Algorithm for Computing
  Sample Variances", 1979, over all blocks at once, exact in exact arithmetic). So all
  of them normalize with the same mean and variance, and the first row block's program
  writes them to the step's tables. The LSTM's cell norm does the same for c_t.
- backward: the sums over the rows of dy and dy x̂ that the norm's backward pass needs,
  the same way (``_sums``); the first row block's program adds them to dγ and dβ.

Layer norm (``MODE`` 3; ``scan_triton.LN_SPLIT``) takes the same tiles in place of
the whole-sequence launches, whose programs hold every unit of 8 rows (13 programs at
the seq-MNIST shape): the programs of a row block exchange each row's statistics over
their units (every gate's), its sum and its sum of squares about their share's own
mean (``_ln_part``), combined as batch norm's (``_stats``, in ``_ln_norms``); the
backward pass's sums of γ dy and γ dy x̂ over a row the same way. γ's and β's gradients
are summed after the loop from the saved terms and statistics, as for the
whole-sequence launches.

A step is then two or three phases with a barrier between them: in a grid-synchronized
launch (``scan_triton.GRID_SYNC``) carrying what a phase computed in registers. Batch
norm's exchanges bind the programs of one unit block and its steps those of one row
block: with ``GRID_GROUPS`` each kind of barrier waits for those alone, on counters of
their own (``_sync``, ``_step``), and the shares alternate between two copies by the
step's parity (``_blocks``); else each barrier is one of every program of the launch,
on one counter. Layer norm's exchanges and steps both bind the programs of one row
block, so with ``GRID_GROUPS`` each row block (and seed) has all its barriers on a
counter of its own (``scan_triton._exchange_group``). In a launch per step each phase
is a launch of its own (``PHASE``) that reloads what the phases before it stored
(BN_SPLIT_STEPS: for tests). Triton's interpreter runs a launch's programs one after
another; the tests run the grid launches there with their programs as threads that take
turns between barriers (tests/interpreter_grid.py), each group of programs going as
far ahead as its barriers let it.

The sums are in a fixed order, so the results are the same from run to run; they are
not the whole-batch (or whole-row) programs' bits (another order of the same sums:
within float32 rounding of them). Which path runs: ``scan_triton.rows_split`` and
``_plan``.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from baselines import scan_triton as st

triton, tl = st.triton, None
if triton is not None:
    import triton.language as tl

    @triton.jit
    def _blocks(B0, H, S, F, PART, B, t, MODE: tl.constexpr, XGROUP: tl.constexpr, BB: tl.constexpr,
                BJ: tl.constexpr, NRB: tl.constexpr):
        """``scan_triton._tile``'s rows, units, masks and seed; this program's real rows and
        real units as float32 counts; its real units where its row block is their first
        (batch norm: whose program writes the step's statistics and sums dγ and dβ), else
        none, and its real rows where its unit block is their first (layer norm: whose
        program writes the rows' statistics), else none (masks of the units' and rows'
        shapes: the interpreter takes no scalar in one); the row stride RS = S F of batch
        norm's shares of F features a seed, and where the two arrays of shares of MODE's
        norm (NRB RS or, layer norm, NRB B values each) start in PART: in step t's copy of
        PART where the exchanges' barriers are column groups' (XGROUP 2), one for even
        steps and one for odd (``_sync``)."""
        rb, rj, mb, mj, m2, s = st._tile(B0, H, BB, BJ)
        i, j = tl.program_id(1), tl.program_id(0)
        RS = S * F
        if XGROUP == 2:  # scan_triton._start's PART: two copies of 4 NRB max(B, S F) values
            PART += (t % 2) * (4 * NRB) * tl.maximum(B, RS)
        n = tl.minimum(B0 - i * BB, BB).to(tl.float32)
        nu = tl.minimum(H - j * BJ, BJ).to(tl.float32)
        P2 = PART + NRB * RS
        if MODE == 3:
            P2 = PART + NRB * B
        return rb, rj, mb, mj, m2, s, n, nu, mj & (rj * 0 + i == 0), mb & (rb * 0 + j == 0), RS, PART, P2

    @triton.jit
    def _put(P1, P2, off, H, a0, a1, a2, a3, b0, b1, b2, b3, mj, NG: tl.constexpr):
        """a_k to P1[off + k H] and b_k to P2[off + k H] for the NG terms (k < NG)."""
        tl.store(P1 + off, a0, mask=mj)
        tl.store(P2 + off, b0, mask=mj)
        if NG > 1:
            tl.store(P1 + off + H, a1, mask=mj)
            tl.store(P2 + off + H, b1, mask=mj)
            tl.store(P1 + off + 2 * H, a2, mask=mj)
            tl.store(P2 + off + 2 * H, b2, mask=mj)
        if NG == 4:
            tl.store(P1 + off + 3 * H, a3, mask=mj)
            tl.store(P2 + off + 3 * H, b3, mask=mj)

    @triton.jit
    def _bn_part(P1, P2, off, H, z0, z1, z2, z3, m2, mj, n, NG: tl.constexpr):
        """This program's share of the batch statistics of NG terms (term k's features at
        off + k H): over its n real rows, each feature's sum to P1 and its sum of squares
        about the rows' own mean to P2 (``_stats`` combines the shares); the terms'
        sums in one reduction (``scan_triton._bn_gates``)."""
        if NG == 1:
            s0 = tl.sum(tl.where(m2, z0, 0.0), axis=0)
            s1, s2, s3 = s0, s0, s0
        else:
            s0, s1, s2, s3 = tl.reduce((tl.where(m2, z0, 0.0), tl.where(m2, z1, 0.0), tl.where(m2, z2, 0.0),
                                        tl.where(m2, z3, 0.0)), 0, st._add4)
        d0 = tl.where(m2, z0 - (s0 / n)[None, :], 0.0)
        if NG == 1:
            v0 = tl.sum(d0 * d0, axis=0)
            v1, v2, v3 = v0, v0, v0
        else:
            d1 = tl.where(m2, z1 - (s1 / n)[None, :], 0.0)
            d2 = tl.where(m2, z2 - (s2 / n)[None, :], 0.0)
            d3 = tl.where(m2, z3 - (s3 / n)[None, :], 0.0)
            v0, v1, v2, v3 = tl.reduce((d0 * d0, d1 * d1, d2 * d2, d3 * d3), 0, st._add4)
        _put(P1, P2, off, H, s0, s1, s2, s3, v0, v1, v2, v3, mj, NG)

    @triton.jit
    def _shares(P1, P2, at, m, stride, total, NG: tl.constexpr, BLK: tl.constexpr, NRB: tl.constexpr):
        """Every block's pair of shares for the places ``at`` (masked by m): (NRB, places)
        tiles, block i's at P[i stride + at], the blocks past ``total`` zeros; each block's
        count, NG times its real part of ``total`` (BLK a block); which blocks are real. Batch
        norm: row blocks, per feature (at: features, total: B0 rows, BLK: BB); layer norm:
        unit blocks, per row (at: rows, total: H units, BLK: BJ, NG terms a unit)."""
        ri = tl.arange(0, NRB)
        mi = ri * BLK < total
        mm = mi[:, None] & m[None, :]
        off = ri[:, None] * stride + at[None, :]
        a = tl.load(P1 + off, mask=mm, other=0.0)
        b = tl.load(P2 + off, mask=mm, other=0.0)
        n = tl.where(mi, NG * tl.minimum(total - ri * BLK, BLK), 1).to(tl.float32)
        return a, b, n, mm

    @triton.jit
    def _sums(P1, P2, at, m, stride, total, BLK: tl.constexpr, NRB: tl.constexpr):
        """The sums over all blocks of the two quantities whose per-block sums are in P1, P2
        (``_shares``)."""
        a, b, _, _ = _shares(P1, P2, at, m, stride, total, 1, BLK, NRB)
        return tl.sum(a, axis=0), tl.sum(b, axis=0)

    @triton.jit
    def _stats(P1, P2, at, m, stride, total, NG: tl.constexpr, BLK: tl.constexpr, NRB: tl.constexpr):
        """The mean and (biased) variance over all NG ``total`` values of the places ``at``
        from the blocks' shares (``_bn_part``, ``_ln_part``; as ``_shares``): mean = Σ s_i / N,
        and the sum of squares about it Σ M2_i + n_i (s_i / n_i - mean)² (block i: n_i
        values, sum s_i, squares M2_i)."""
        s, sq, n, mm = _shares(P1, P2, at, m, stride, total, NG, BLK, NRB)
        mean = tl.sum(s, axis=0) / (NG * total)
        dm = tl.where(mm, s / n[:, None] - mean[None, :], 0.0)
        return mean, tl.sum(sq + n[:, None] * dm * dm, axis=0) / (NG * total)

    @triton.jit
    def _bn_norm(p, z, ga, gb, P1, P2, fs, mj, m2, first, row, RS, B0, MEAN, RSTD, VAR, eps,
                 HAS_BETA: tl.constexpr, HAS_VAR: tl.constexpr, BB: tl.constexpr, NRB: tl.constexpr):
        """p + BN(z) of one term's block with the batch statistics from the shares; the
        first row block's program writes them at ``row`` of the step's tables."""
        mean, var = _stats(P1, P2, fs, mj, RS, B0, 1, BB, NRB)
        d = tl.where(m2, z - mean[None, :], 0.0)
        return p + st._bn_out(d, mean, var, ga, gb, first, row, MEAN, RSTD, VAR, eps, HAS_BETA, HAS_VAR)

    @triton.jit
    def _gate_norms(p0, p1, p2, p3, z0, z1, z2, z3, ga0, gb0, ga1, gb1, ga2, gb2, ga3, gb3, P1, P2, fs, H, mj, m2,
                    first, tab, RS, B0, MEAN, RSTD, VAR, eps, NG: tl.constexpr, HAS_BETA: tl.constexpr,
                    HAS_VAR: tl.constexpr, BB: tl.constexpr, NRB: tl.constexpr):
        """``_bn_norm`` of the NG gates (3 or 4; the fourth's result is z3 for the GRU)."""
        a0 = _bn_norm(p0, z0, ga0, gb0, P1, P2, fs, mj, m2, first, tab + fs, RS, B0, MEAN, RSTD, VAR, eps,
                      HAS_BETA, HAS_VAR, BB, NRB)
        a1 = _bn_norm(p1, z1, ga1, gb1, P1, P2, fs + H, mj, m2, first, tab + fs + H, RS, B0, MEAN, RSTD, VAR, eps,
                      HAS_BETA, HAS_VAR, BB, NRB)
        a2 = _bn_norm(p2, z2, ga2, gb2, P1, P2, fs + 2 * H, mj, m2, first, tab + fs + 2 * H, RS, B0, MEAN, RSTD,
                      VAR, eps, HAS_BETA, HAS_VAR, BB, NRB)
        a3 = z3
        if NG == 4:
            a3 = _bn_norm(p3, z3, ga3, gb3, P1, P2, fs + 3 * H, mj, m2, first, tab + fs + 3 * H, RS, B0, MEAN, RSTD,
                          VAR, eps, HAS_BETA, HAS_VAR, BB, NRB)
        return a0, a1, a2, a3

    @triton.jit
    def _sync(CNT, k, NPROG, PHASE: tl.constexpr, XGROUP: tl.constexpr, POLL: tl.constexpr, NB: tl.constexpr):
        """Between two phases of a step (k = NB t + 1 .. NB t + NB - 1, NB phases a step): in
        a grid-synchronized launch (PHASE 0) a barrier of the programs that exchange: with
        XGROUP 2 (batch norm, ``scan_triton._exchange_group``) the (k - t)-th of the column
        group's counter, which counts the exchanges alone; else the k-th of the counter the
        steps count on too (NPROG programs). In a launch per phase, the launch boundary.

        Batch norm's two kinds of barrier leave a step's exchange without one that keeps a
        program from writing the next step's shares while another of its unit block still
        reads this step's: a row group's barrier binds only programs of its own row block.
        So its shares alternate between two copies of PART by the step's parity
        (``_blocks``): the copy a program writes at step t + 2 it writes after the next
        step's first exchange barrier, which every program of its column group passes only
        after reading step t's shares."""
        if PHASE == 0:
            if XGROUP == 2:
                st._step_sync(CNT, k - k // NB, tl.num_programs(1), True, 2, POLL)
            else:
                st._step_sync(CNT, k, NPROG, True, XGROUP, POLL)

    @triton.jit
    def _step(CNT, k, NPROG, GROUP: tl.constexpr, XGROUP: tl.constexpr, POLL: tl.constexpr, NB: tl.constexpr):
        """The barrier before step t (k = NB t) of a grid-synchronized launch, NPROG programs:
        with XGROUP 2 the t-th of the row group's counter (GROUP), which counts the steps
        alone; else the k-th of the counter the exchanges count on too (``_sync``)."""
        if XGROUP == 2:
            st._step_sync(CNT, k // NB, NPROG, True, GROUP, POLL)
        else:
            st._step_sync(CNT, k, NPROG, True, GROUP, POLL)

    @triton.jit
    def _bwd_in(d0, d1, d2, d3, ZS, o0, fs, H, mj, m2, tab, MEAN, RSTD, G, DG, DB, NG: tl.constexpr):
        """``scan_triton._bn_bwd_in`` of the NG gates: (dy masked, x̂, γ, 1/std, dγ, dβ) each."""
        r0 = st._bn_bwd_in(d0, ZS, o0, fs, mj, m2, tab + fs, MEAN, RSTD, G, DG, DB)
        r1 = st._bn_bwd_in(d1, ZS, o0 + H, fs + H, mj, m2, tab + fs + H, MEAN, RSTD, G, DG, DB)
        r2 = st._bn_bwd_in(d2, ZS, o0 + 2 * H, fs + 2 * H, mj, m2, tab + fs + 2 * H, MEAN, RSTD, G, DG, DB)
        r3 = r2
        if NG == 4:
            r3 = st._bn_bwd_in(d3, ZS, o0 + 3 * H, fs + 3 * H, mj, m2, tab + fs + 3 * H, MEAN, RSTD, G, DG, DB)
        return r0, r1, r2, r3

    @triton.jit
    def _bwd_part(P1, P2, off, H, y0, x0, y1, x1, y2, x2, y3, x3, mj, NG: tl.constexpr):
        """This program's sums over its rows of dy and dy x̂ of the NG gates, to P1 and P2."""
        a0, b0, a1, b1, a2, b2, a3, b3 = tl.reduce((y0, y0 * x0, y1, y1 * x1, y2, y2 * x2, y3, y3 * x3), 0, st._add8)
        _put(P1, P2, off, H, a0, a1, a2, a3, b0, b1, b2, b3, mj, NG)

    @triton.jit
    def _bn_dx(r, P1, P2, fs, mj, first, RS, B0, DG, DB, BB: tl.constexpr, NRB: tl.constexpr):
        """∂L/∂z of one term's block from its ``_bn_bwd_in`` values r and the sums of every
        row block; the first row block's program adds them to dγ and dβ."""
        y, x, g, rstd, dg, db = r
        sdy, sdyx = _sums(P1, P2, fs, mj, RS, B0, BB, NRB)
        return st._bn_bwd_out(y, x, g, rstd, dg, db, sdy, sdyx, fs, first, B0, DG, DB)

    # -- layer norm: each row's statistics over all its units (and gates), the shares of a
    # row block's programs (its unit blocks) exchanged as batch norm's between row blocks

    @triton.jit
    def _ln_part(P1, P2, off, z0, z1, z2, z3, m2, mb, nu, NG: tl.constexpr):
        """This program's share of layer norm's statistics over the NG terms of each of its
        rows: the sum over its nu real units (of every term) to P1[off], and the sum of
        squares about that share's own mean to P2[off]; each term's sums in one reduction."""
        if NG == 1:
            tot = tl.sum(tl.where(m2, z0, 0.0), axis=1)
        else:
            t0, t1, t2, t3 = tl.reduce((tl.where(m2, z0, 0.0), tl.where(m2, z1, 0.0), tl.where(m2, z2, 0.0),
                                        tl.where(m2, z3, 0.0)), 1, st._add4)
            tot = t0 + t1 + t2
            if NG == 4:
                tot += t3
        mloc = (tot / (nu * NG))[:, None]
        d0 = tl.where(m2, z0 - mloc, 0.0)
        if NG == 1:
            ss = tl.sum(d0 * d0, axis=1)
        else:
            d1 = tl.where(m2, z1 - mloc, 0.0)
            d2 = tl.where(m2, z2 - mloc, 0.0)
            d3 = tl.where(m2, z3 - mloc, 0.0)
            v0, v1, v2, v3 = tl.reduce((d0 * d0, d1 * d1, d2 * d2, d3 * d3), 1, st._add4)
            ss = v0 + v1 + v2
            if NG == 4:
                ss += v3
        tl.store(P1 + off, tot, mask=mb)
        tl.store(P2 + off, ss, mask=mb)

    @triton.jit
    def _ln_norms(p0, p1, p2, p3, z0, z1, z2, z3, ga0, gb0, ga1, gb1, ga2, gb2, ga3, gb3, P1, P2, rb, mb, m2,
                  firstr, row, B, H, MEAN, RSTD, eps, NG: tl.constexpr, HAS_BETA: tl.constexpr, BJ: tl.constexpr,
                  NRB: tl.constexpr):
        """p_k + LN(z)_k of the NG terms, each row's mean and variance over its NG H features
        combined from the unit blocks' shares (``_ln_part``) as batch norm's row blocks'
        (``_stats``); the first unit block's program writes them at ``row`` of the tables."""
        mean, var = _stats(P1, P2, rb, mb, B, H, NG, BJ, NRB)
        rstd = 1.0 / tl.sqrt_rn(var + eps)
        tl.store(MEAN + row, mean, mask=firstr)
        tl.store(RSTD + row, rstd, mask=firstr)
        a0 = p0 + _ln_out(z0, mean, rstd, ga0, gb0, m2, HAS_BETA)
        a1, a2, a3 = a0, a0, z3
        if NG > 1:
            a1 = p1 + _ln_out(z1, mean, rstd, ga1, gb1, m2, HAS_BETA)
            a2 = p2 + _ln_out(z2, mean, rstd, ga2, gb2, m2, HAS_BETA)
        if NG == 4:
            a3 = p3 + _ln_out(z3, mean, rstd, ga3, gb3, m2, HAS_BETA)
        return a0, a1, a2, a3

    @triton.jit
    def _ln_out(z, mean, rstd, ga, gb, m2, HAS_BETA: tl.constexpr):
        y = tl.where(m2, z - mean[:, None], 0.0) * rstd[:, None] * ga[None, :]
        if HAS_BETA:
            y += gb[None, :]
        return y

    @triton.jit
    def _ln_bwd_in(dy, X, xoff, fs, mj, m2, mb, rows, MEAN, RSTD, G):
        """What layer norm's backward pass of a block reads, in ``_bn_bwd_in``'s order: γ dy
        masked to the real entries, x̂, γ, each row's 1/std (twice more: unused)."""
        mean = tl.load(MEAN + rows, mask=mb, other=0.0)
        rstd = tl.load(RSTD + rows, mask=mb, other=0.0)
        x = tl.where(m2, (tl.load(X + xoff, mask=m2, other=0.0) - mean[:, None]) * rstd[:, None], 0.0)
        g = tl.load(G + fs, mask=mj, other=0.0)
        return tl.where(m2, dy * g[None, :], 0.0), x, g, rstd, rstd, rstd

    @triton.jit
    def _ln_dx(r, s1, s2, NF):
        """∂L/∂z of one term's block from its ``_ln_bwd_in`` values and each row's sums over
        all NF features of γ dy and γ dy x̂."""
        y, x, _, rstd, _, _ = r
        return rstd[:, None] * (y - (s1 / NF)[:, None] - x * (s2 / NF)[:, None])

    # -- batch or layer norm (MODE 1 or 3) ---------------------------------------------------

    @triton.jit
    def _part(P1, P2, H, B, RS, rb, fs, z0, z1, z2, z3, m2, mj, mb, n, nu, NG: tl.constexpr, MODE: tl.constexpr):
        """This program's share of the NG terms' statistics: batch norm's per feature
        (``_bn_part``), layer norm's per row (``_ln_part``)."""
        if MODE == 1:
            _bn_part(P1, P2, tl.program_id(1) * RS + fs, H, z0, z1, z2, z3, m2, mj, n, NG)
        else:
            _ln_part(P1, P2, tl.program_id(0) * B + rb, z0, z1, z2, z3, m2, mb, nu, NG)

    @triton.jit
    def _norms(p0, p1, p2, p3, z0, z1, z2, z3, ga0, gb0, ga1, gb1, ga2, gb2, ga3, gb3, P1, P2, fs, H, B, rb, mb, mj,
               m2, first, firstr, t, RS, B0, MEAN, RSTD, VAR, eps, NG: tl.constexpr, MODE: tl.constexpr,
               HAS_BETA: tl.constexpr, HAS_VAR: tl.constexpr, BB: tl.constexpr, BJ: tl.constexpr, NRB: tl.constexpr):
        """p_k + N(z_k) of the NG terms (1, 3 or 4; the fourth's result is z3 for the GRU)
        with the statistics combined from every block's share (``_part``), written by the
        first block's program: batch norm (``_gate_norms``) or layer norm (``_ln_norms``)."""
        if MODE == 3:
            a0, a1, a2, a3 = _ln_norms(p0, p1, p2, p3, z0, z1, z2, z3, ga0, gb0, ga1, gb1, ga2, gb2, ga3, gb3, P1, P2,
                                       rb, mb, m2, firstr, t * B + rb, B, H, MEAN, RSTD, eps, NG, HAS_BETA, BJ, NRB)
        elif NG == 1:
            a0 = _bn_norm(p0, z0, ga0, gb0, P1, P2, fs, mj, m2, first, t * RS + fs, RS, B0, MEAN, RSTD, VAR, eps,
                          HAS_BETA, HAS_VAR, BB, NRB)
            a1, a2, a3 = a0, a0, a0
        else:
            a0, a1, a2, a3 = _gate_norms(p0, p1, p2, p3, z0, z1, z2, z3, ga0, gb0, ga1, gb1, ga2, gb2, ga3, gb3, P1,
                                         P2, fs, H, mj, m2, first, t * RS, RS, B0, MEAN, RSTD, VAR, eps, NG, HAS_BETA,
                                         HAS_VAR, BB, NRB)
        return a0, a1, a2, a3

    @triton.jit
    def _bwd_ins(d0, d1, d2, d3, X, o0, fs, H, mj, m2, mb, rb, t, RS, B, MEAN, RSTD, G, DG, DB, NG: tl.constexpr,
                 MODE: tl.constexpr):
        """What the norm's backward pass reads for the NG terms (term k at X + o0 + k H):
        ``scan_triton._bn_bwd_in`` or ``_ln_bwd_in`` of each, d_k the incoming gradient."""
        if MODE == 3:
            rows = t * B + rb
            r0 = _ln_bwd_in(d0, X, o0, fs, mj, m2, mb, rows, MEAN, RSTD, G)
            r1, r2, r3 = r0, r0, r0
            if NG > 1:
                r1 = _ln_bwd_in(d1, X, o0 + H, fs + H, mj, m2, mb, rows, MEAN, RSTD, G)
                r2 = _ln_bwd_in(d2, X, o0 + 2 * H, fs + 2 * H, mj, m2, mb, rows, MEAN, RSTD, G)
            if NG == 4:
                r3 = _ln_bwd_in(d3, X, o0 + 3 * H, fs + 3 * H, mj, m2, mb, rows, MEAN, RSTD, G)
        elif NG == 1:
            r0 = st._bn_bwd_in(d0, X, o0, fs, mj, m2, t * RS + fs, MEAN, RSTD, G, DG, DB)
            r1, r2, r3 = r0, r0, r0
        else:
            r0, r1, r2, r3 = _bwd_in(d0, d1, d2, d3, X, o0, fs, H, mj, m2, t * RS, MEAN, RSTD, G, DG, DB, NG)
        return r0, r1, r2, r3

    @triton.jit
    def _dy(r, d, m2, MODE: tl.constexpr):
        """``_bwd_ins``' values r with the incoming gradient d in place of the one read
        before it was known (layer norm: γ d)."""
        _, x, g, rstd, dg, db = r
        if MODE == 3:
            y = tl.where(m2, d * g[None, :], 0.0)
        else:
            y = tl.where(m2, d, 0.0)
        return y, x, g, rstd, dg, db

    @triton.jit
    def _bwd_parts(P1, P2, H, B, RS, rb, fs, r0, r1, r2, r3, mj, mb, NG: tl.constexpr, MODE: tl.constexpr):
        """This program's sums of dy and dy x̂ (layer norm: of γ dy and γ dy x̂ over each row's
        units and terms) for the NG terms' backward pass."""
        y0, x0, _, _, _, _ = r0
        y1, x1, _, _, _, _ = r1
        y2, x2, _, _, _, _ = r2
        y3, x3, _, _, _, _ = r3
        if MODE == 1:
            _bwd_part(P1, P2, tl.program_id(1) * RS + fs, H, y0, x0, y1, x1, y2, x2, y3, x3, mj, NG)
        else:
            a0, b0, a1, b1, a2, b2, a3, b3 = tl.reduce((y0, y0 * x0, y1, y1 * x1, y2, y2 * x2, y3, y3 * x3), 1,
                                                       st._add8)
            if NG > 1:
                a0 += a1 + a2
                b0 += b1 + b2
            if NG == 4:
                a0 += a3
                b0 += b3
            off = tl.program_id(0) * B + rb
            tl.store(P1 + off, a0, mask=mb)
            tl.store(P2 + off, b0, mask=mb)

    @triton.jit
    def _dzs(DZ, o0, H, r0, r1, r2, r3, P1, P2, fs, mj, m2, first, RS, B0, DG, DB, rb, mb, B, NG: tl.constexpr,
             MODE: tl.constexpr, STORE: tl.constexpr, BB: tl.constexpr, BJ: tl.constexpr, NRB: tl.constexpr):
        """∂L/∂z of the NG terms from ``_bwd_ins``' values and every block's sums, stored at DZ
        + o0 + k H with STORE; returns the first term's."""
        if MODE == 3:
            s1, s2 = _sums(P1, P2, rb, mb, B, H, BJ, NRB)
            x0 = _ln_dx(r0, s1, s2, NG * H)
            x1, x2, x3 = x0, x0, x0
            if NG > 1:
                x1 = _ln_dx(r1, s1, s2, NG * H)
                x2 = _ln_dx(r2, s1, s2, NG * H)
            if NG == 4:
                x3 = _ln_dx(r3, s1, s2, NG * H)
        else:
            x0 = _bn_dx(r0, P1, P2, fs, mj, first, RS, B0, DG, DB, BB, NRB)
            x1, x2, x3 = x0, x0, x0
            if NG > 1:
                x1 = _bn_dx(r1, P1, P2, fs + H, mj, first, RS, B0, DG, DB, BB, NRB)
                x2 = _bn_dx(r2, P1, P2, fs + 2 * H, mj, first, RS, B0, DG, DB, BB, NRB)
            if NG == 4:
                x3 = _bn_dx(r3, P1, P2, fs + 3 * H, mj, first, RS, B0, DG, DB, BB, NRB)
        if STORE:
            tl.store(DZ + o0, x0, mask=m2)
            if NG > 1:
                tl.store(DZ + o0 + H, x1, mask=m2)
                tl.store(DZ + o0 + 2 * H, x2, mask=m2)
            if NG == 4:
                tl.store(DZ + o0 + 3 * H, x3, mask=m2)
        return x0

    # -- RNN: h_t = act(u_t + N(h_{t-1} W^T)); phases: the product and its shares | the rest

    @triton.jit(do_not_specialize=["t", "hoff", "k", "NPROG"])
    def _rnn_fwd(HS, ZS, HP, hoff, W, t, B, H, S, B0, G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                 PART, CNT, k, NPROG, MODE: tl.constexpr, HAS_BETA: tl.constexpr, HAS_VAR: tl.constexpr,
                 RELU: tl.constexpr, PHASE: tl.constexpr, XGROUP: tl.constexpr, POLL: tl.constexpr,
                 BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, NRB: tl.constexpr):
        rb, rj, mb, mj, m2, s, n, nu, first, firstr, RS, P1, P2 = _blocks(B0, H, S, H, PART, B, t, MODE, XGROUP,
                                                                          BB, BJ, NRB)
        off = t * B * H + rb[:, None] * H + rj[None, :]
        fs = s * H + rj
        if PHASE != 1:
            p, _, ga, gb = st._term_inputs(HS + off, t, B, H, S, rb, rj, mj, m2, s, G, BE, SC, SH, 1, HAS_BETA, False)
        if PHASE <= 1:
            z, _, _, _ = st._mm_gates(HP + hoff, rb, mb, H, W + s * H * H, H, rj, mj, 1, BB, BJ, BK, PREC)
            tl.store(ZS + off, z, mask=m2)
            _part(P1, P2, H, B, RS, rb, fs, z, z, z, z, m2, mj, mb, n, nu, 1, MODE)
        _sync(CNT, k + 1, NPROG, PHASE, XGROUP, POLL, 2)
        if PHASE == 2:
            z = tl.load(ZS + off, mask=m2, other=0.0)
        if PHASE != 1:
            a, _, _, _ = _norms(p, p, p, p, z, z, z, z, ga, gb, ga, gb, ga, gb, ga, gb, P1, P2, fs, H, B, rb, mb, mj,
                                m2, first, firstr, t, RS, B0, MEAN, RSTD, VAR, eps, 1, MODE, HAS_BETA, HAS_VAR, BB, BJ,
                                NRB)
            if RELU:
                h = tl.where((a > 0) | (a != a), a, 0.0)
            else:
                h = st._tanh(a)
            tl.store(HS + off, h, mask=m2)

    @triton.jit(do_not_specialize=["t", "k", "NPROG"])
    def _rnn_bwd(GH, HS, DA, DZ, ZS, W, t, B, H, S, B0, G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                 PART, CNT, k, NPROG, MODE: tl.constexpr, RELU: tl.constexpr, HAS_NEXT: tl.constexpr,
                 PHASE: tl.constexpr, XGROUP: tl.constexpr, POLL: tl.constexpr,
                 BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, NRB: tl.constexpr):
        rb, rj, mb, mj, m2, s, _, _, first, firstr, RS, P1, P2 = _blocks(B0, H, S, H, PART, B, t, MODE, XGROUP,
                                                                          BB, BJ, NRB)
        off = t * B * H + rb[:, None] * H + rj[None, :]
        fs = s * H + rj
        if PHASE <= 1:
            g = tl.load(GH + off, mask=m2, other=0.0)
            h = tl.load(HS + off, mask=m2, other=0.0)
            r, _, _, _ = _bwd_ins(g, g, g, g, ZS, off, fs, H, mj, m2, mb, rb, t, RS, B, MEAN, RSTD, G, DG, DB, 1,
                                  MODE)  # before the product
            if HAS_NEXT:
                g += st._mm_n(DZ + (t + 1) * B * H, rb, mb, H, W + s * H * H, H, rj, mj, BB, BJ, BK, PREC)
            tl.store(GH + off, g, mask=m2)
            if RELU:
                d = tl.where(h > 0, g, 0.0)
            else:
                d = g * (1 - h * h)
            tl.store(DA + off, d, mask=m2)
            r = _dy(r, d, m2, MODE)
            _bwd_parts(P1, P2, H, B, RS, rb, fs, r, r, r, r, mj, mb, 1, MODE)
        _sync(CNT, k + 1, NPROG, PHASE, XGROUP, POLL, 2)
        if PHASE == 2:
            d = tl.load(DA + off, mask=m2, other=0.0)
            r, _, _, _ = _bwd_ins(d, d, d, d, ZS, off, fs, H, mj, m2, mb, rb, t, RS, B, MEAN, RSTD, G, DG, DB, 1, MODE)
            r = _dy(r, d, m2, MODE)
        if PHASE != 1:
            _dzs(DZ, off, H, r, r, r, r, P1, P2, fs, mj, m2, first, RS, B0, DG, DB, rb, mb, B, 1, MODE, True, BB, BJ,
                 NRB)

    # -- LSTM: phases: the product and the gates' shares | the gates, c_t and its shares
    #    (cell batch or layer norm; without one h_t here) | h_t -------------------------------

    @triton.jit(do_not_specialize=["t", "hoff", "coff", "k", "NPROG"])
    def _lstm_fwd(SIG, TG, CS, TC, HS, ZS, HP, hoff, CP, coff, W, t, B, H, S, B0,
                  G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                  CG, CBE, CSC, CSH, CMEAN, CRSTD, CVAR, CDG, CDB, ceps,
                  PART, CNT, k, NPROG,
                  MODE: tl.constexpr, HAS_BETA: tl.constexpr, HAS_VAR: tl.constexpr,
                  CMODE: tl.constexpr, C_BETA: tl.constexpr, C_SHIFT: tl.constexpr, C_VAR: tl.constexpr,
                  PHASE: tl.constexpr, XGROUP: tl.constexpr, POLL: tl.constexpr,
                  BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, NRB: tl.constexpr):
        F = 4 * H
        rb, rj, mb, mj, m2, s, n, nu, first, firstr, RS, P1, P2 = _blocks(B0, H, S, F, PART, B, t, MODE, XGROUP, BB, BJ,
                                                                          NRB)  # the gates' shares
        CRS = S * H
        C1, C2 = _cell_shares(P1, B, RS, CRS, MODE, CMODE, NRB)  # the cell's
        o0 = t * B * F + rb[:, None] * F + rj[None, :]
        ob = rb[:, None] * H + rj[None, :]
        oh = t * B * H + ob
        fs, cf = s * F + rj, s * H + rj
        CELL: tl.constexpr = CMODE == 1 or CMODE == 3  # its statistics exchanged: a phase of its own
        if PHASE != 1:  # the loads that wait on nothing, before the product (``scan_triton._first``)
            p0, p1, p2, p3, ga0, gb0, ga1, gb1, ga2, gb2, ga3, gb3 = st._gate_inputs(
                SIG, o0, fs, t * RS, H, m2, mj, G, BE, SC, SH, 4, 1, HAS_BETA, False)
            cp, ctab, ca, cb = st._term_inputs(CP + coff + ob, t, B, H, S, rb, rj, mj, m2, s, CG, CBE, CSC, CSH,
                                               CMODE, C_BETA, C_SHIFT)
        if PHASE <= 1:
            z0, z1, z2, z3 = st._mm_gates(HP + hoff, rb, mb, H, W + s * F * H, H, rj, mj, 4, BB, BJ, BK, PREC)
            tl.store(ZS + o0, z0, mask=m2)
            tl.store(ZS + o0 + H, z1, mask=m2)
            tl.store(ZS + o0 + 2 * H, z2, mask=m2)
            tl.store(ZS + o0 + 3 * H, z3, mask=m2)
            _part(P1, P2, H, B, RS, rb, fs, z0, z1, z2, z3, m2, mj, mb, n, nu, 4, MODE)
        _sync(CNT, k + 1, NPROG, PHASE, XGROUP, POLL, 2 + CELL)
        if PHASE == 2:
            z0, z1, z2, z3 = st._first(ZS, o0, H, m2, 4)
        if PHASE == 0 or PHASE == 2:
            a0, a1, a2, a3 = _norms(p0, p1, p2, p3, z0, z1, z2, z3, ga0, gb0, ga1, gb1, ga2, gb2, ga3, gb3, P1, P2, fs,
                                    H, B, rb, mb, mj, m2, first, firstr, t, RS, B0, MEAN, RSTD, VAR, eps, 4, MODE,
                                    HAS_BETA, HAS_VAR, BB, BJ, NRB)
            i = st._sigmoid(a0)
            f = st._sigmoid(a1)
            g = st._tanh(a2)
            o = st._sigmoid(a3)
            tl.store(SIG + o0, i, mask=m2)
            tl.store(SIG + o0 + H, f, mask=m2)
            tl.store(SIG + o0 + 2 * H, a2, mask=m2)  # the g block keeps its pre-activation, as the CPU loops'
            tl.store(SIG + o0 + 3 * H, o, mask=m2)
            tl.store(TG + oh, g, mask=m2)
            c = f * cp + i * g
            tl.store(CS + oh, c, mask=m2)
            if CELL:
                _part(C1, C2, H, B, CRS, rb, cf, c, c, c, c, m2, mj, mb, n, nu, 1, CMODE)
            else:
                tc = st._tanh(st._nfwd(c, ca, cb, mj, m2, ctab, cf, B0, CMEAN, CRSTD, CVAR, ceps, CMODE, C_BETA,
                                       C_SHIFT, C_VAR))
        if CELL:
            _sync(CNT, k + 2, NPROG, PHASE, XGROUP, POLL, 2 + CELL)
            if PHASE == 3:
                c = tl.load(CS + oh, mask=m2, other=0.0)
                o = tl.load(SIG + o0 + 3 * H, mask=m2, other=0.0)
            if PHASE == 0 or PHASE == 3:
                tc, _, _, _ = _norms(0.0, 0.0, 0.0, 0.0, c, c, c, c, ca, cb, ca, cb, ca, cb, ca, cb, C1, C2, cf, H, B,
                                     rb, mb, mj, m2, first, firstr, t, CRS, B0, CMEAN, CRSTD, CVAR, ceps, 1, CMODE,
                                     C_BETA, C_VAR, BB, BJ, NRB)
                tc = st._tanh(tc)
        if PHASE == 0 or PHASE == 2 + CELL:
            tl.store(TC + oh, tc, mask=m2)
            tl.store(HS + oh, o * tc, mask=m2)

    @triton.jit
    def _cell_shares(PART, B, RS, CRS, MODE: tl.constexpr, CMODE: tl.constexpr, NRB: tl.constexpr):
        """Where the LSTM cell norm's two arrays of shares start in PART: after the gates'
        (2 NRB RS batch norm's, 2 NRB B layer norm's), each NRB CRS (batch) or NRB B long."""
        C1 = PART + 2 * NRB * RS
        if MODE == 3:
            C1 = PART + 2 * NRB * B
        C2 = C1 + NRB * CRS
        if CMODE == 3:
            C2 = C1 + NRB * B
        return C1, C2

    @triton.jit(do_not_specialize=["t", "coff", "k", "NPROG"])
    def _lstm_bwd(GH, SIG, TG, CS, TC, CP, coff, DA, DZ, DN, ZS, W, DC, DCL, t, B, H, S, B0,
                  G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                  CG, CBE, CSC, CSH, CMEAN, CRSTD, CVAR, CDG, CDB, ceps,
                  PART, CNT, k, NPROG, MODE: tl.constexpr, CMODE: tl.constexpr, HAS_NEXT: tl.constexpr,
                  HAS_LAST: tl.constexpr, PHASE: tl.constexpr, XGROUP: tl.constexpr, POLL: tl.constexpr,
                  BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, NRB: tl.constexpr):
        # phases: the product, ∂L/∂N_c(c_t) and its shares (cell batch or layer norm) | ∂L/∂c_t, the
        # gates' ∂L/∂N(z) and their shares | ∂L/∂z; without the cell's exchange the first two are one
        F = 4 * H
        rb, rj, mb, mj, m2, s, _, _, first, firstr, RS, P1, P2 = _blocks(B0, H, S, F, PART, B, t, MODE, XGROUP,
                                                                          BB, BJ, NRB)
        CRS = S * H
        C1, C2 = _cell_shares(P1, B, RS, CRS, MODE, CMODE, NRB)
        oh = t * B * H + rb[:, None] * H + rj[None, :]
        o0 = t * B * F + rb[:, None] * F + rj[None, :]
        ob = rb[:, None] * H + rj[None, :]
        fs, cf = s * F + rj, s * H + rj
        CELL: tl.constexpr = CMODE == 1 or CMODE == 3
        GATES: tl.constexpr = 2 + CELL  # the phase of ∂L/∂z
        if PHASE <= 1 + CELL:  # what the step reads besides ∂L/∂z_{t+1}, before the product
            g = tl.load(GH + oh, mask=m2, other=0.0)  # (in phase 2, ∂L/∂h_t complete)
            i, f, o, y, gg, cp, dcn = st._lstm_saved(SIG, TC, TG, CP, coff, DC, DCL, g, o0, oh, ob, B, H, F, m2,
                                                     HAS_NEXT, HAS_LAST)
            if CELL and PHASE <= 1:
                rc, _, _, _ = _bwd_ins(g, g, g, g, CS, oh, cf, H, mj, m2, mb, rb, t, CRS, B, CMEAN, CRSTD, CG, CDG,
                                       CDB, 1, CMODE)
            rg = _bwd_ins(g, g, g, g, ZS, o0, fs, H, mj, m2, mb, rb, t, RS, B, MEAN, RSTD, G, DG, DB, 4, MODE)
        if PHASE <= 1:
            if HAS_NEXT:
                g += st._mm_n(DZ + (t + 1) * B * F, rb, mb, F, W + s * F * H, H, rj, mj, BB, BJ, BK, PREC)
            tl.store(GH + oh, g, mask=m2)
            dn = g * (1 - y * y) * o  # ∂L/∂N_c(c_t)
            if CMODE != 0:
                tl.store(DN + oh, dn, mask=m2)
            if CELL:
                rc = _dy(rc, dn, m2, CMODE)
                _bwd_parts(C1, C2, H, B, CRS, rb, cf, rc, rc, rc, rc, mj, mb, 1, CMODE)
            else:
                dc = st._nbwd(dn, CS, oh, cf, mj, m2, st._table(t, S, H, B, rb, CMODE), B0, CG, CSC, CMEAN, CRSTD,
                              CDG, CDB, CMODE) + dcn
        if CELL:
            _sync(CNT, k + 1, NPROG, PHASE, XGROUP, POLL, 2 + CELL)
            if PHASE == 2:
                dn = tl.load(DN + oh, mask=m2, other=0.0)
                rc, _, _, _ = _bwd_ins(dn, dn, dn, dn, CS, oh, cf, H, mj, m2, mb, rb, t, CRS, B, CMEAN, CRSTD, CG, CDG,
                                       CDB, 1, CMODE)
                rc = _dy(rc, dn, m2, CMODE)
            if PHASE == 0 or PHASE == 2:
                dc = _dzs(DC, oh, H, rc, rc, rc, rc, C1, C2, cf, mj, m2, first, CRS, B0, CDG, CDB, rb, mb, B, 1, CMODE,
                          False, BB, BJ, NRB) + dcn
        if PHASE == 0 or PHASE == 1 + CELL:
            d0, d1, d2, d3 = st._lstm_gate_grads(DA, DC, o0, ob, H, dc, g, i, f, o, y, gg, cp, m2)
            r0, r1, r2, r3 = rg
            r0 = _dy(r0, d0, m2, MODE)
            r1 = _dy(r1, d1, m2, MODE)
            r2 = _dy(r2, d2, m2, MODE)
            r3 = _dy(r3, d3, m2, MODE)
            _bwd_parts(P1, P2, H, B, RS, rb, fs, r0, r1, r2, r3, mj, mb, 4, MODE)
        _sync(CNT, k + 1 + CELL, NPROG, PHASE, XGROUP, POLL, 2 + CELL)
        if PHASE == GATES:
            d0, d1, d2, d3 = st._first(DA, o0, H, m2, 4)
            r0, r1, r2, r3 = _bwd_ins(d0, d1, d2, d3, ZS, o0, fs, H, mj, m2, mb, rb, t, RS, B, MEAN, RSTD, G, DG, DB,
                                      4, MODE)
            r0 = _dy(r0, d0, m2, MODE)
            r1 = _dy(r1, d1, m2, MODE)
            r2 = _dy(r2, d2, m2, MODE)
            r3 = _dy(r3, d3, m2, MODE)
        if PHASE == 0 or PHASE == GATES:
            _dzs(DZ, o0, H, r0, r1, r2, r3, P1, P2, fs, mj, m2, first, RS, B0, DG, DB, rb, mb, B, 4, MODE, True, BB, BJ,
                 NRB)

    # -- GRU: phases: the product and the gates' shares | the rest -------------------------

    @triton.jit(do_not_specialize=["t", "hoff", "k", "NPROG"])
    def _gru_fwd(GATES, HW, HS, ZS, HP, hoff, W, t, B, H, S, B0, G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                 PART, CNT, k, NPROG, MODE: tl.constexpr, HAS_BETA: tl.constexpr, HAS_VAR: tl.constexpr,
                 PHASE: tl.constexpr, XGROUP: tl.constexpr, POLL: tl.constexpr,
                 BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, NRB: tl.constexpr):
        F = 3 * H
        rb, rj, mb, mj, m2, s, n, nu, first, firstr, RS, P1, P2 = _blocks(B0, H, S, F, PART, B, t, MODE, XGROUP,
                                                                          BB, BJ, NRB)
        o0 = t * B * F + rb[:, None] * F + rj[None, :]
        fs = s * F + rj
        if PHASE != 1:  # before the product (``scan_triton._first``)
            u0, u1, u2, _ = st._first(GATES, o0, H, m2, 3)
            hp = tl.load(HP + hoff + rb[:, None] * H + rj[None, :], mask=m2, other=0.0)
            p0, p1, p2, p3, ga0, gb0, ga1, gb1, ga2, gb2, ga3, gb3 = st._gate_inputs(
                HW, o0, fs, t * RS, H, m2, mj, G, BE, SC, SH, 3, 1, HAS_BETA, False)
        if PHASE <= 1:
            z0, z1, z2, _ = st._mm_gates(HP + hoff, rb, mb, H, W + s * F * H, H, rj, mj, 3, BB, BJ, BK, PREC)
            tl.store(ZS + o0, z0, mask=m2)
            tl.store(ZS + o0 + H, z1, mask=m2)
            tl.store(ZS + o0 + 2 * H, z2, mask=m2)
            _part(P1, P2, H, B, RS, rb, fs, z0, z1, z2, z2, m2, mj, mb, n, nu, 3, MODE)
        _sync(CNT, k + 1, NPROG, PHASE, XGROUP, POLL, 2)
        if PHASE == 2:
            z0, z1, z2, _ = st._first(ZS, o0, H, m2, 3)
        if PHASE != 1:
            a0, a1, a2, _ = _norms(p0, p1, p2, p3, z0, z1, z2, z2, ga0, gb0, ga1, gb1, ga2, gb2, ga3, gb3, P1, P2, fs,
                                   H, B, rb, mb, mj, m2, first, firstr, t, RS, B0, MEAN, RSTD, VAR, eps, 3, MODE,
                                   HAS_BETA, HAS_VAR, BB, BJ, NRB)
            tl.store(HW + o0, a0, mask=m2)
            tl.store(HW + o0 + H, a1, mask=m2)
            tl.store(HW + o0 + 2 * H, a2, mask=m2)
            r = st._sigmoid(u0 + a0)
            zg = st._sigmoid(u1 + a1)
            nn = st._tanh(u2 + r * a2)
            tl.store(GATES + o0, r, mask=m2)
            tl.store(GATES + o0 + H, zg, mask=m2)
            tl.store(GATES + o0 + 2 * H, nn, mask=m2)
            tl.store(HS + t * B * H + rb[:, None] * H + rj[None, :], nn + zg * (hp - nn), mask=m2)

    @triton.jit(do_not_specialize=["t", "hoff", "k", "NPROG"])
    def _gru_bwd(GH, GATES, HW, HP, hoff, DA, DU, DZ, ZS, W, t, B, H, S, B0,
                 G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps, PART, CNT, k, NPROG, MODE: tl.constexpr,
                 HAS_NEXT: tl.constexpr, PHASE: tl.constexpr, XGROUP: tl.constexpr, POLL: tl.constexpr,
                 BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, NRB: tl.constexpr):
        F = 3 * H
        rb, rj, mb, mj, m2, s, _, _, first, firstr, RS, P1, P2 = _blocks(B0, H, S, F, PART, B, t, MODE, XGROUP,
                                                                          BB, BJ, NRB)
        oh = t * B * H + rb[:, None] * H + rj[None, :]
        o0 = t * B * F + rb[:, None] * F + rj[None, :]
        fs = s * F + rj
        if PHASE <= 1:
            g = tl.load(GH + oh, mask=m2, other=0.0)
            r, zg, nn, hp, an = st._gru_saved(GATES, HW, HP, hoff, o0, rb, rj, H, m2)  # before the product
            r0, r1, r2, _ = _bwd_ins(g, g, g, g, ZS, o0, fs, H, mj, m2, mb, rb, t, RS, B, MEAN, RSTD, G, DG, DB, 3,
                                     MODE)
            if HAS_NEXT:  # + ∂L/∂h_{t+1} z_{t+1} (the carry) + ∂L/∂z_{t+1} W
                g += tl.load(GH + oh + B * H, mask=m2, other=0.0) * tl.load(GATES + o0 + B * F + H, mask=m2,
                                                                            other=0.0)
                g += st._mm_n(DZ + (t + 1) * B * F, rb, mb, F, W + s * F * H, H, rj, mj, BB, BJ, BK, PREC)
            tl.store(GH + oh, g, mask=m2)
            dr, dzg, drn = st._gru_gate_grads(DU, DA, o0, H, g, r, zg, nn, hp, an, m2)
            r0 = _dy(r0, dr, m2, MODE)
            r1 = _dy(r1, dzg, m2, MODE)
            r2 = _dy(r2, drn, m2, MODE)
            _bwd_parts(P1, P2, H, B, RS, rb, fs, r0, r1, r2, r2, mj, mb, 3, MODE)
        _sync(CNT, k + 1, NPROG, PHASE, XGROUP, POLL, 2)
        if PHASE == 2:
            d0, d1, d2, _ = st._first(DA, o0, H, m2, 3)
            r0, r1, r2, _ = _bwd_ins(d0, d1, d2, d2, ZS, o0, fs, H, mj, m2, mb, rb, t, RS, B, MEAN, RSTD, G, DG, DB, 3,
                                     MODE)
            r0 = _dy(r0, d0, m2, MODE)
            r1 = _dy(r1, d1, m2, MODE)
            r2 = _dy(r2, d2, m2, MODE)
        if PHASE != 1:
            _dzs(DZ, o0, H, r0, r1, r2, r2, P1, P2, fs, mj, m2, first, RS, B0, DG, DB, rb, mb, B, 3, MODE, True, BB, BJ,
                 NRB)

    # -- grid-synchronized launches: every step in one launch, the phases' barriers inside
    # (``_sync``) and a barrier between steps; step t's barriers are t NB + 1 .. t NB + NB - 1
    # and the one before it t NB, NB a step's phases (``phases``).

    @triton.jit(do_not_specialize=["T", "NPROG"])
    def _rnn_fwd_seq(HS, ZS, H0, W, T, B, H, S, B0, G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                     PART, CNT, NPROG, MODE: tl.constexpr, HAS_BETA: tl.constexpr, HAS_VAR: tl.constexpr,
                     RELU: tl.constexpr,
                     GROUP: tl.constexpr, XGROUP: tl.constexpr, POLL: tl.constexpr,
                     BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, NRB: tl.constexpr):
        _rnn_fwd(HS, ZS, H0, 0, W, 0, B, H, S, B0, G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps, PART, CNT, 0, NPROG,
                 MODE, HAS_BETA, HAS_VAR, RELU, 0, XGROUP, POLL, BB, BJ, BK, PREC, NRB)
        for t in range(1, T):
            _step(CNT, 2 * t, NPROG, GROUP, XGROUP, POLL, 2)
            _rnn_fwd(HS, ZS, HS, (t - 1) * B * H, W, t, B, H, S, B0, G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                     PART, CNT, 2 * t, NPROG, MODE, HAS_BETA, HAS_VAR, RELU, 0, XGROUP, POLL, BB, BJ, BK, PREC, NRB)

    @triton.jit(do_not_specialize=["T", "NPROG"])
    def _rnn_bwd_seq(GH, HS, DA, DZ, ZS, W, T, B, H, S, B0, G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                     PART, CNT, NPROG, MODE: tl.constexpr, RELU: tl.constexpr, GROUP: tl.constexpr,
                     XGROUP: tl.constexpr, POLL: tl.constexpr,
                     BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, NRB: tl.constexpr):
        _rnn_bwd(GH, HS, DA, DZ, ZS, W, T - 1, B, H, S, B0, G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps, PART, CNT,
                 0, NPROG, MODE, RELU, False, 0, XGROUP, POLL, BB, BJ, BK, PREC, NRB)
        for i in range(1, T):
            _step(CNT, 2 * i, NPROG, GROUP, XGROUP, POLL, 2)
            _rnn_bwd(GH, HS, DA, DZ, ZS, W, T - 1 - i, B, H, S, B0, G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                     PART, CNT, 2 * i, NPROG, MODE, RELU, True, 0, XGROUP, POLL, BB, BJ, BK, PREC, NRB)

    @triton.jit(do_not_specialize=["T", "NPROG"])
    def _lstm_fwd_seq(SIG, TG, CS, TC, HS, ZS, H0, C0, W, T, B, H, S, B0,
                      G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                      CG, CBE, CSC, CSH, CMEAN, CRSTD, CVAR, CDG, CDB, ceps,
                      PART, CNT, NPROG, MODE: tl.constexpr, HAS_BETA: tl.constexpr, HAS_VAR: tl.constexpr,
                      CMODE: tl.constexpr, C_BETA: tl.constexpr, C_SHIFT: tl.constexpr, C_VAR: tl.constexpr,
                      GROUP: tl.constexpr, XGROUP: tl.constexpr, POLL: tl.constexpr,
                      BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, NRB: tl.constexpr):
        NB: tl.constexpr = 2 + (CMODE == 1 or CMODE == 3)
        _lstm_fwd(SIG, TG, CS, TC, HS, ZS, H0, 0, C0, 0, W, 0, B, H, S, B0, G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB,
                  eps, CG, CBE, CSC, CSH, CMEAN, CRSTD, CVAR, CDG, CDB, ceps, PART, CNT, 0, NPROG, MODE, HAS_BETA,
                  HAS_VAR, CMODE, C_BETA, C_SHIFT, C_VAR, 0, XGROUP, POLL, BB, BJ, BK, PREC, NRB)
        for t in range(1, T):
            _step(CNT, NB * t, NPROG, GROUP, XGROUP, POLL, NB)
            prev = (t - 1) * B * H
            _lstm_fwd(SIG, TG, CS, TC, HS, ZS, HS, prev, CS, prev, W, t, B, H, S, B0, G, BE, SC, SH, MEAN, RSTD, VAR,
                      DG, DB, eps, CG, CBE, CSC, CSH, CMEAN, CRSTD, CVAR, CDG, CDB, ceps, PART, CNT, NB * t, NPROG,
                      MODE, HAS_BETA, HAS_VAR, CMODE, C_BETA, C_SHIFT, C_VAR, 0, XGROUP, POLL, BB, BJ, BK, PREC, NRB)

    @triton.jit(do_not_specialize=["T", "NPROG"])
    def _lstm_bwd_seq(GH, SIG, TG, CS, TC, C0, DA, DZ, DN, ZS, W, DC, DCL, T, B, H, S, B0,
                      G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                      CG, CBE, CSC, CSH, CMEAN, CRSTD, CVAR, CDG, CDB, ceps,
                      PART, CNT, NPROG, MODE: tl.constexpr, CMODE: tl.constexpr, HAS_LAST: tl.constexpr,
                      GROUP: tl.constexpr, XGROUP: tl.constexpr, POLL: tl.constexpr,
                      BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, NRB: tl.constexpr):
        NB: tl.constexpr = 2 + (CMODE == 1 or CMODE == 3)
        # step T-1 (nothing after it; the incoming ∂L/∂c_T), steps T-2 .. 1, step 0 (c_{-1} = c0)
        _lstm_bwd(GH, SIG, TG, CS, TC, CS, (T - 2) * B * H, DA, DZ, DN, ZS, W, DC, DCL, T - 1, B, H, S, B0,
                  G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps, CG, CBE, CSC, CSH, CMEAN, CRSTD, CVAR, CDG, CDB, ceps,
                  PART, CNT, 0, NPROG, MODE, CMODE, False, HAS_LAST, 0, XGROUP, POLL, BB, BJ, BK, PREC, NRB)
        for i in range(2, T):
            _step(CNT, NB * (i - 1), NPROG, GROUP, XGROUP, POLL, NB)
            t = T - i
            _lstm_bwd(GH, SIG, TG, CS, TC, CS, (t - 1) * B * H, DA, DZ, DN, ZS, W, DC, DC, t, B, H, S, B0,
                      G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps, CG, CBE, CSC, CSH, CMEAN, CRSTD, CVAR, CDG, CDB,
                      ceps, PART, CNT, NB * (i - 1), NPROG, MODE, CMODE, True, False, 0, XGROUP, POLL, BB, BJ, BK, PREC,
                      NRB)
        _step(CNT, NB * (T - 1), NPROG, GROUP, XGROUP, POLL, NB)
        _lstm_bwd(GH, SIG, TG, CS, TC, C0, 0, DA, DZ, DN, ZS, W, DC, DC, 0, B, H, S, B0,
                  G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps, CG, CBE, CSC, CSH, CMEAN, CRSTD, CVAR, CDG, CDB, ceps,
                  PART, CNT, NB * (T - 1), NPROG, MODE, CMODE, True, False, 0, XGROUP, POLL, BB, BJ, BK, PREC, NRB)

    @triton.jit(do_not_specialize=["T", "NPROG"])
    def _gru_fwd_seq(GATES, HW, HS, ZS, H0, W, T, B, H, S, B0, G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                     PART, CNT, NPROG, MODE: tl.constexpr, HAS_BETA: tl.constexpr, HAS_VAR: tl.constexpr,
                     GROUP: tl.constexpr, XGROUP: tl.constexpr, POLL: tl.constexpr,
                     BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, NRB: tl.constexpr):
        _gru_fwd(GATES, HW, HS, ZS, H0, 0, W, 0, B, H, S, B0, G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps,
                 PART, CNT, 0, NPROG, MODE, HAS_BETA, HAS_VAR, 0, XGROUP, POLL, BB, BJ, BK, PREC, NRB)
        for t in range(1, T):
            _step(CNT, 2 * t, NPROG, GROUP, XGROUP, POLL, 2)
            _gru_fwd(GATES, HW, HS, ZS, HS, (t - 1) * B * H, W, t, B, H, S, B0, G, BE, SC, SH, MEAN, RSTD, VAR, DG,
                     DB, eps, PART, CNT, 2 * t, NPROG, MODE, HAS_BETA, HAS_VAR, 0, XGROUP, POLL, BB, BJ, BK, PREC, NRB)

    @triton.jit(do_not_specialize=["T", "NPROG"])
    def _gru_bwd_seq(GH, GATES, HW, HS, H0, DA, DU, DZ, ZS, W, T, B, H, S, B0,
                     G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps, PART, CNT, NPROG, MODE: tl.constexpr,
                     GROUP: tl.constexpr, XGROUP: tl.constexpr, POLL: tl.constexpr,
                     BB: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, NRB: tl.constexpr):
        _gru_bwd(GH, GATES, HW, HS, (T - 2) * B * H, DA, DU, DZ, ZS, W, T - 1, B, H, S, B0,
                 G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps, PART, CNT, 0, NPROG, MODE, False, 0, XGROUP, POLL,
                 BB, BJ, BK, PREC, NRB)
        for i in range(2, T):
            _step(CNT, 2 * (i - 1), NPROG, GROUP, XGROUP, POLL, 2)
            t = T - i
            _gru_bwd(GH, GATES, HW, HS, (t - 1) * B * H, DA, DU, DZ, ZS, W, t, B, H, S, B0,
                     G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps, PART, CNT, 2 * (i - 1), NPROG, MODE, True, 0, XGROUP,
                     POLL,
                     BB, BJ, BK, PREC, NRB)
        _step(CNT, 2 * (T - 1), NPROG, GROUP, XGROUP, POLL, 2)
        _gru_bwd(GH, GATES, HW, H0, 0, DA, DU, DZ, ZS, W, 0, B, H, S, B0,
                 G, BE, SC, SH, MEAN, RSTD, VAR, DG, DB, eps, PART, CNT, 2 * (T - 1), NPROG, MODE, True, 0, XGROUP,
                 POLL,
                 BB, BJ, BK, PREC, NRB)


# -- launches: called by scan_triton's, after its ``_start``, where ``cfg`` has PART -------

def phases(cell: str, cmode: int = 0) -> int:
    """A step's phases (and so its barriers in a grid-synchronized launch, the one before
    it included): two; three for an LSTM whose cell norm exchanges statistics (batch or
    layer norm)."""
    return 3 if cell == "lstm" and cmode in (1, 3) else 2


def _launch(kernel, seq_kernel, grid: tuple, sync: dict, steps, args: Callable, kwargs: dict, n: int) -> None:
    """All steps in one grid-synchronized launch (``sync``: its barrier counter and flags;
    ``args(None)`` the whole-sequence kernel's arguments), or for each step t of ``steps``
    its n phases, a launch each (``args(t)``)."""
    if sync:
        seq_kernel[grid](*args(None), CNT=sync["CNT"], NPROG=sync["NPROG"], GROUP=sync["GROUP"],
                         XGROUP=sync["XGROUP"], POLL=sync["POLL"], launch_cooperative_grid=True, **kwargs)
        return
    for t in steps:
        for phase in range(1, n + 1):
            kernel[grid](*args(t), CNT=kwargs["PART"], k=0, NPROG=1, XGROUP=0, POLL=False, PHASE=phase, **kwargs)


def _flags(n: st.Norm) -> dict:
    return dict(MODE=n.mode, HAS_BETA=n.beta is not None, HAS_VAR=n.var is not None)


# Each goes on from its namesake in scan_triton after that one's ``_start``: the buffers
# and norms it was given, W_hh made contiguous, and what ``_start`` returned (the grid,
# the size arguments, the tiles with PART and NRB, the grid launch's barrier arguments or
# none); it fills the same buffers.

def rnn_forward(hs: Tensor, zs: Tensor, h0: Tensor, w: Tensor, nh: st.Norm, relu: bool, grid: tuple, dims: tuple,
                cfg: dict, sync: dict) -> None:
    T = hs.shape[0]

    def args(t):
        if t is None:
            return hs, zs, h0, w, T, *dims, *nh.args()
        hp, off = st._prev(h0, hs, t)
        return hs, zs, hp, off, w, t, *dims, *nh.args()

    _launch(_rnn_fwd, _rnn_fwd_seq, grid, sync, range(T), args, dict(RELU=relu, **_flags(nh), **cfg), 2)


def rnn_backward(gh: Tensor, hs: Tensor, da: Tensor, dz: Tensor, zs: Tensor, w: Tensor, nh: st.Norm, relu: bool,
                 grid: tuple, dims: tuple, cfg: dict, sync: dict) -> None:
    T = gh.shape[0]

    def args(t):
        if t is None:
            return gh, hs, da, dz, zs, w, T, *dims, *nh.args()
        return gh, hs, da, dz, zs, w, t, *dims, *nh.args()

    kw = dict(MODE=nh.mode, RELU=relu, **cfg)
    if sync:
        _launch(_rnn_bwd, _rnn_bwd_seq, grid, sync, None, args, kw, 2)
        return
    for t in range(T - 1, -1, -1):
        _launch(_rnn_bwd, None, grid, {}, (t,), args, dict(kw, HAS_NEXT=t < T - 1), 2)


def lstm_forward(sig: Tensor, tg: Tensor, cs: Tensor, tc: Tensor, hs: Tensor, zs: Tensor, h0: Tensor, c0: Tensor,
                 w: Tensor, nh: st.Norm, nc: st.Norm, grid: tuple, dims: tuple, cfg: dict, sync: dict) -> None:
    T = hs.shape[0]

    def args(t):
        if t is None:
            return sig, tg, cs, tc, hs, zs, h0, c0, w, T, *dims, *nh.args(), *nc.args()
        hp, hoff = st._prev(h0, hs, t)
        cp, coff = st._prev(c0, cs, t)
        return sig, tg, cs, tc, hs, zs, hp, hoff, cp, coff, w, t, *dims, *nh.args(), *nc.args()

    kw = dict(**_flags(nh), **nc.flags(cell=True), **cfg)
    _launch(_lstm_fwd, _lstm_fwd_seq, grid, sync, range(T), args, kw, phases("lstm", nc.mode))


def lstm_backward(gh: Tensor, sig: Tensor, tg: Tensor, cs: Tensor, tc: Tensor, c0: Tensor, da: Tensor, dz: Tensor,
                  dn: Tensor, zs: Tensor, w: Tensor, dc: Tensor, dc_last: Tensor | None, nh: st.Norm, nc: st.Norm,
                  grid: tuple, dims: tuple, cfg: dict, sync: dict) -> None:
    T = gh.shape[0]
    n = phases("lstm", nc.mode)
    if sync:
        _launch(None, _lstm_bwd_seq, grid, sync, None,
                lambda _: (gh, sig, tg, cs, tc, c0, da, dz, dn, zs, w, dc, dc_last if dc_last is not None else dc, T,
                           *dims, *nh.args(), *nc.args()),
                dict(MODE=nh.mode, CMODE=nc.mode, HAS_LAST=dc_last is not None, **cfg), n)
        return
    for t in range(T - 1, -1, -1):
        cp, coff = st._prev(c0, cs, t)
        last = t == T - 1 and dc_last is not None
        _launch(_lstm_bwd, None, grid, {}, (t,),
                lambda t: (gh, sig, tg, cs, tc, cp, coff, da, dz, dn, zs, w, dc, dc_last if last else dc, t, *dims,
                           *nh.args(), *nc.args()),
                dict(MODE=nh.mode, CMODE=nc.mode, HAS_NEXT=t < T - 1, HAS_LAST=last, **cfg), n)


def gru_forward(gates: Tensor, hw: Tensor, hs: Tensor, zs: Tensor, h0: Tensor, w: Tensor, nh: st.Norm, grid: tuple,
                dims: tuple, cfg: dict, sync: dict) -> None:
    T = hs.shape[0]

    def args(t):
        if t is None:
            return gates, hw, hs, zs, h0, w, T, *dims, *nh.args()
        hp, hoff = st._prev(h0, hs, t)
        return gates, hw, hs, zs, hp, hoff, w, t, *dims, *nh.args()

    _launch(_gru_fwd, _gru_fwd_seq, grid, sync, range(T), args, dict(**_flags(nh), **cfg), 2)


def gru_backward(gh: Tensor, gates: Tensor, hw: Tensor, hs: Tensor, h0: Tensor, da: Tensor, du: Tensor, dz: Tensor,
                 zs: Tensor, w: Tensor, nh: st.Norm, grid: tuple, dims: tuple, cfg: dict, sync: dict) -> None:
    T = gh.shape[0]
    if sync:
        _launch(None, _gru_bwd_seq, grid, sync, None,
                lambda _: (gh, gates, hw, hs, h0, da, du, dz, zs, w, T, *dims, *nh.args()), dict(MODE=nh.mode, **cfg),
                2)
        return
    for t in range(T - 1, -1, -1):
        hp, hoff = st._prev(h0, hs, t)
        _launch(_gru_bwd, None, grid, {}, (t,),
                lambda t: (gh, gates, hw, hp, hoff, da, du, dz, zs, w, t, *dims, *nh.args()),
                dict(MODE=nh.mode, HAS_NEXT=t < T - 1, **cfg), 2)
