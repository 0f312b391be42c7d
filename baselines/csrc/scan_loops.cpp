// The sequential loops of baselines/scan.py, compiled (the "scan-cpp" path on the CPU).
//
// scan.py runs each layer's recurrence as one autograd Function whose forward and
// backward loops issue 2 to 10 PyTorch ops per step. On the CPU at the sizes the suite
// trains (B*H of a few thousand), each op costs a few microseconds of Python and
// dispatch for well under a microsecond of arithmetic, so the loops, not the matrix
// products, set the speed. Here each loop is one C++ call: per step one matrix
// product (ATen, i.e. MKL/oneDNN) and one pass of fused elementwise arithmetic over
// plain arrays, with the step's norm (batch, population or layer statistics) computed
// in the same pass; the backward loop also computes the gates' derivatives step by
// step and sums the norms' dgamma/dbeta (layer norm's in a pass after the loop). A step
// with layer statistics is split by rows over PyTorch's CPU threads (StepSplit below),
// the others run on the calling thread. The loops can also batch-normalize the input
// term with per-step statistics, reading it where the input projection left it, in a
// pass before the forward loop and one after the backward loop that share PyTorch's
// CPU threads (InputNorm below; scan.InputNorm says when). Everything outside the loops (buffers, the
// matrix products over all steps, running statistics) stays in scan.py, shared with
// the Python loops; tests/test_fast_recurrence.py checks this path against a float64
// reference loop and against the Python loops.
//
// float32 uses a rational tanh (the minimax approximation of Eigen/XLA/MLAS, within
// 5 ulp) and sigmoid(x) = (1 + tanh(x/2)) / 2, written so that the compiler vectorises
// the inner loops. That sigmoid is within 1e-7 of the true value everywhere, but loses
// its relative accuracy in the far left tail (sigmoid(x) < 1e-6, where it may be 0);
// the gates only ever use it additively or as a factor, where that is invisible at
// float32 precision. float64 uses the C library. NaN propagates (divergence is detected
// downstream); +-inf give +-1 (tanh) and 1/0 (sigmoid). Every buffer must be
// contiguous; the Python side allocates them so.

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

// Inner loops whose iterations are independent: vectorised without alias analysis
// (built with -fopenmp-simd; reductions name their accumulators).
#define SIMD _Pragma("omp simd")

namespace {

enum Mode : int64_t { NONE = 0, BATCH = 1, POP = 2, LAYER = 3 };

// Passes over all steps split the features over PyTorch's CPU threads only where there
// are more than this many (then into at most F / kFeatureGrain chunks, each of half that
// or more).
constexpr int64_t kFeatureGrain = 32;

// A part of one step's (B, H) work: rows [b0, b1), all hidden units.
struct Part {
  int64_t b0, b1;
};

template <typename T>
inline T tanh_(T x) {
  return std::tanh(x);
}

template <>
inline float tanh_(float x) {
  // NaN-preserving clamp: both comparisons are false for NaN, which passes through.
  const float c = 7.90531110763549805f;  // where the rational function reaches 1 in float32
  x = x > c ? c : x;
  x = x < -c ? -c : x;
  const float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return x * p / q;
}

template <typename T>
inline T sigmoid_(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

template <>
inline float sigmoid_(float x) {
  return 0.5f + 0.5f * tanh_(0.5f * x);
}

template <typename T>
inline T* ptr(const at::Tensor& t, int64_t offset = 0) {
  return t.data_ptr<T>() + offset;
}

// One normalized term N(x) = gamma * xhat (+ beta), step by step (scan.py's _Norm).
// mean/rstd: per-step statistics written by the forward pass and read by the backward
// pass, (T, F) for batch norm, (T, B[, 1]) for layer norm; var: batch norm's biased
// variance per step, (T, F), for the running averages. scale/shift: population
// statistics as an affine map per step, (T, F); shift is left out where scan.py has
// already added it to the step's other term. dgamma/dbeta: dL/dgamma and dL/dbeta over
// all steps, summed by the backward pass as a by-product (batch and layer norm).
// Stacked seeds (baselines/stack.py): gamma is (S, F) for S seeds, whose rows are S
// groups of B/S (seed-major); batch statistics stay within a seed's rows, and the
// per-step (T, F) tables above are (T, S*F).
struct Norm {
  int64_t mode, seeds;
  at::Tensor gamma, beta, scale, shift, mean, rstd, var, dgamma, dbeta;
  double eps;

  Norm(int64_t mode, at::Tensor gamma, c10::optional<at::Tensor> beta, c10::optional<at::Tensor> scale,
       c10::optional<at::Tensor> shift, c10::optional<at::Tensor> mean, c10::optional<at::Tensor> rstd,
       c10::optional<at::Tensor> var, double eps)
      : mode(mode), seeds(gamma.dim() == 2 ? gamma.size(0) : 1), gamma(gamma.contiguous()),
        beta(beta.has_value() ? beta->contiguous() : at::Tensor()),
        scale(scale.value_or(at::Tensor())), shift(shift.value_or(at::Tensor())),
        mean(mean.value_or(at::Tensor())), rstd(rstd.value_or(at::Tensor())), var(var.value_or(at::Tensor())),
        eps(eps) {
    TORCH_CHECK(mode >= NONE && mode <= LAYER, "norm mode must be 0..3, got ", mode);
    TORCH_CHECK(mode != POP || this->scale.defined(), "population norm needs its scale");
    TORCH_CHECK(mode != BATCH && mode != LAYER || (this->mean.defined() && this->rstd.defined()),
                "batch and layer norm need mean and rstd buffers");
    for (const at::Tensor* t : {&this->beta, &this->scale, &this->shift, &this->mean, &this->rstd, &this->var})
      TORCH_CHECK(!t->defined() || t->is_contiguous(), "norm buffers must be contiguous");
    if (mode == BATCH || mode == LAYER) {
      dgamma = at::zeros_like(this->gamma);
      dbeta = at::zeros_like(this->gamma);
    }
  }

  void zero_grads() const {
    if (dgamma.defined()) {
      const_cast<at::Tensor&>(dgamma).zero_();
      const_cast<at::Tensor&>(dbeta).zero_();
    }
  }

  // out (+)= N(x) for step t on part p of x, out: (B, F) row-major, B rows of all seeds.
  // Batch norm takes all rows (p.b0 = 0, p.b1 = B).
  template <typename T>
  void forward(int64_t t, const T* x, T* out, int64_t B, int64_t F, bool accumulate, const Part& p) const {
    const int64_t B0 = B / seeds;
    each_seed(p, B0, [&](int64_t s, int64_t r0, int64_t r1) {
      const int64_t o = s * B0 * F;
      if (mode == LAYER)
        layer_forward(t, s, x + o, out + o, r0, r1, F, accumulate);
      else
        forward_rows(t, s, x + o, out + o, B0, F, r0, r1, accumulate);
    });
  }

  // dx = dL/dx_t from dy = dL/dN(x_t) on part p (as ``forward``); batch norm adds to
  // dgamma/dbeta here, layer norm in ``layer_grads`` after the loop, from dy: so dx may be
  // dy except for layer norm.
  template <typename T>
  void backward(int64_t t, const T* dy, const T* x, T* dx, int64_t B, int64_t F, const Part& p) const {
    TORCH_CHECK(mode != LAYER || dx != dy, "layer norm's backward keeps dy for layer_grads: dx must not be dy");
    const int64_t B0 = B / seeds;
    each_seed(p, B0, [&](int64_t s, int64_t r0, int64_t r1) {
      const int64_t o = s * B0 * F;
      if (mode == LAYER)
        layer_backward(t, s, dy + o, x + o, dx + o, r0, r1, F);
      else
        backward_rows(t, s, dy + o, x + o, dx + o, B0, F, r0, r1);
    });
  }

  // fn(s, r0, r1) for each seed s with rows in part p: its rows [r0, r1) of its B0
  template <typename Fn>
  void each_seed(const Part& p, int64_t B0, const Fn& fn) const {
    for (int64_t s = 0; s < seeds; ++s) {
      const int64_t r0 = std::max(p.b0 - s * B0, int64_t(0)), r1 = std::min(p.b1 - s * B0, B0);
      if (r0 < r1) fn(s, r0, r1);
    }
  }

  // forward for seed s's rows [r0, r1) of B (population norm; batch norm takes all B rows)
  template <typename T>
  void forward_rows(int64_t t, int64_t s, const T* x, T* out, int64_t B, int64_t F, int64_t r0, int64_t r1,
                    bool accumulate) const {
    const T* g = ptr<T>(gamma, s * F);
    const T* be = beta.defined() ? ptr<T>(beta, s * F) : nullptr;
    const int64_t row = (t * seeds + s) * F;  // step t's row of a (T, S*F) table
    if (mode == POP) {
      const T* sc = ptr<T>(scale, row);
      const T* sh = shift.defined() ? ptr<T>(shift, row) : nullptr;
      for (int64_t b = r0; b < r1; ++b) {
        const T* xb = x + b * F;
        T* ob = out + b * F;
        SIMD
        for (int64_t f = 0; f < F; ++f) {
          T y = xb[f] * sc[f] + (sh ? sh[f] : T(0));
          ob[f] = accumulate ? ob[f] + y : y;
        }
      }
      return;
    }
    TORCH_CHECK(mode == BATCH && r0 == 0 && r1 == B, "a batch norm's part holds all rows");
    batch_forward(row, g, be, x, F, out, F, B, F, accumulate);
  }

  // layer norm of seed s's rows [r0, r1), all F features: statistics per row
  template <typename T>
  void layer_forward(int64_t t, int64_t s, const T* x, T* out, int64_t r0, int64_t r1, int64_t F,
                     bool accumulate) const {
    const T* g = ptr<T>(gamma, s * F);
    const T* be = beta.defined() ? ptr<T>(beta, s * F) : nullptr;
    const int64_t B0 = mean.size(1) / seeds;
    T* mu = ptr<T>(mean, (t * seeds + s) * B0);
    T* rs = ptr<T>(rstd, (t * seeds + s) * B0);
    for (int64_t b = r0; b < r1; ++b) {
      const T* xb = x + b * F;
      T* ob = out + b * F;
      T sum = 0;
      _Pragma("omp simd reduction(+ : sum)")
      for (int64_t f = 0; f < F; ++f) sum += xb[f];
      const T m = sum / T(F);
      T v = 0;
      _Pragma("omp simd reduction(+ : v)")
      for (int64_t f = 0; f < F; ++f) v += (xb[f] - m) * (xb[f] - m);
      const T r = T(1) / std::sqrt(v / T(F) + T(eps));
      mu[b] = m;
      rs[b] = r;
      SIMD
      for (int64_t f = 0; f < F; ++f) {
        T y = (xb[f] - m) * r * g[f] + (be ? be[f] : T(0));
        ob[f] = accumulate ? ob[f] + y : y;
      }
    }
  }

  // Batch norm of B rows of F features (x's rows ``xs`` apart, out's ``os`` apart) with
  // the statistics of row ``row`` of the (T, S*F) tables: out (+)= gamma xhat (+ beta).
  template <typename T>
  void batch_forward(int64_t row, const T* g, const T* be, const T* x, int64_t xs, T* out, int64_t os, int64_t B,
                     int64_t F, bool accumulate) const {
    T* mu = ptr<T>(mean, row);
    T* rs = ptr<T>(rstd, row);
    std::fill(mu, mu + F, T(0));
    std::fill(rs, rs + F, T(0));
    for (int64_t b = 0; b < B; ++b)
      SIMD
      for (int64_t f = 0; f < F; ++f) mu[f] += x[b * xs + f];
    SIMD
    for (int64_t f = 0; f < F; ++f) mu[f] /= T(B);
    for (int64_t b = 0; b < B; ++b)
      SIMD
      for (int64_t f = 0; f < F; ++f) {
        T d = x[b * xs + f] - mu[f];
        rs[f] += d * d;
      }
    if (var.defined()) {
      T* v = ptr<T>(var, row);
      SIMD
      for (int64_t f = 0; f < F; ++f) v[f] = rs[f] / T(B);
    }
    SIMD
    for (int64_t f = 0; f < F; ++f) rs[f] = T(1) / std::sqrt(rs[f] / T(B) + T(eps));
    for (int64_t b = 0; b < B; ++b) {
      const T* xb = x + b * xs;
      T* ob = out + b * os;
      SIMD
      for (int64_t f = 0; f < F; ++f) {
        T y = (xb[f] - mu[f]) * rs[f] * g[f] + (be ? be[f] : T(0));
        ob[f] = accumulate ? ob[f] + y : y;
      }
    }
  }

  // The backward pass of ``batch_forward``: dx (rows ``xs`` apart, as x's; dx may be dy
  // where both are F apart) from dy (rows ``ys`` apart); dgamma/dbeta accumulate.
  template <typename T>
  void batch_backward(int64_t row, const T* g, T* dg, T* dbe, const T* dy, int64_t ys, const T* x, int64_t xs, T* dx,
                      int64_t B, int64_t F) const {
    const T* mu = ptr<T>(mean, row);
    const T* rs = ptr<T>(rstd, row);
    std::vector<T> sdy(F, T(0)), sdyx(F, T(0));
    for (int64_t b = 0; b < B; ++b)
      SIMD
      for (int64_t f = 0; f < F; ++f) {
        const T d = dy[b * ys + f];
        sdy[f] += d;
        sdyx[f] += d * (x[b * xs + f] - mu[f]) * rs[f];
      }
    SIMD
    for (int64_t f = 0; f < F; ++f) {
      dg[f] += sdyx[f];
      dbe[f] += sdy[f];
      sdy[f] /= T(B);
      sdyx[f] /= T(B);
    }
    for (int64_t b = 0; b < B; ++b)
      SIMD
      for (int64_t f = 0; f < F; ++f) {
        const T xh = (x[b * xs + f] - mu[f]) * rs[f];
        dx[b * xs + f] = g[f] * rs[f] * (dy[b * ys + f] - sdy[f] - xh * sdyx[f]);
      }
  }

  // backward for seed s's rows [r0, r1) (as ``forward_rows``; no norm: a copy)
  template <typename T>
  void backward_rows(int64_t t, int64_t s, const T* dy, const T* x, T* dx, int64_t B, int64_t F, int64_t r0,
                     int64_t r1) const {
    const int64_t row = (t * seeds + s) * F;
    if (mode == NONE || mode == POP) {
      const T* sc = mode == POP ? ptr<T>(scale, row) : nullptr;
      for (int64_t b = r0; b < r1; ++b)
        SIMD
        for (int64_t f = 0; f < F; ++f) dx[b * F + f] = sc ? dy[b * F + f] * sc[f] : dy[b * F + f];
      return;
    }
    TORCH_CHECK(mode == BATCH && r0 == 0 && r1 == B, "a batch norm's part holds all rows");
    batch_backward(row, ptr<T>(gamma, s * F), ptr<T>(dgamma, s * F), ptr<T>(dbeta, s * F), dy, F, x, F, dx, B, F);
  }

  // layer norm's backward for seed s's rows [r0, r1), all F features (dgamma and dbeta:
  // ``layer_grads``)
  template <typename T>
  void layer_backward(int64_t t, int64_t s, const T* dy, const T* x, T* dx, int64_t r0, int64_t r1,
                      int64_t F) const {
    const T* g = ptr<T>(gamma, s * F);
    const int64_t B0 = mean.size(1) / seeds;
    const T* mu = ptr<T>(mean, (t * seeds + s) * B0);
    const T* rs = ptr<T>(rstd, (t * seeds + s) * B0);
    for (int64_t b = r0; b < r1; ++b) {
      const T* xb = x + b * F;
      const T* db = dy + b * F;
      T s1 = 0, s2 = 0;
      _Pragma("omp simd reduction(+ : s1, s2)")
      for (int64_t f = 0; f < F; ++f) {
        const T gd = db[f] * g[f];
        s1 += gd;
        s2 += gd * (xb[f] - mu[b]) * rs[b];
      }
      s1 /= T(F);
      s2 /= T(F);
      T* ob = dx + b * F;
      SIMD
      for (int64_t f = 0; f < F; ++f) ob[f] = rs[b] * (db[f] * g[f] - s1 - (xb[f] - mu[b]) * rs[b] * s2);
    }
  }

  // Layer norm's dgamma and dbeta over all steps, after the backward loop (whose parts
  // split the rows, each of which adds to every feature's sums): from dy = dL/dN(x) and x,
  // (T, B, F) each, the features split over PyTorch's threads; each feature's sums run
  // over the steps from T-1 down to 0 and the rows in order, whatever the thread count.
  template <typename T>
  void layer_grads(const at::Tensor& dy_all, const at::Tensor& x_all) const {
    if (mode != LAYER) return;
    const int64_t T_ = dy_all.size(0), B = dy_all.size(1), F = dy_all.size(2), B0 = B / seeds;
    const T *dy = ptr<T>(dy_all), *x = ptr<T>(x_all), *mu = ptr<T>(mean), *rs = ptr<T>(rstd);
    at::parallel_for(0, F, kFeatureGrain, [&](int64_t f0, int64_t f1) {
      for (int64_t s = 0; s < seeds; ++s) {
        T* dg = ptr<T>(dgamma, s * F);
        T* dbe = ptr<T>(dbeta, s * F);
        for (int64_t t = T_ - 1; t >= 0; --t)
          for (int64_t b = s * B0; b < (s + 1) * B0; ++b) {
            const int64_t i = (t * B + b) * F, r = t * B + b;
            SIMD
            for (int64_t f = f0; f < f1; ++f) {
              dg[f] += dy[i + f] * (x[i + f] - mu[r]) * rs[r];
              dbe[f] += dy[i + f];
            }
          }
      }
    });
  }
};

void check(const std::vector<at::Tensor>& ts) {
  for (const auto& t : ts)
    if (t.defined())
      TORCH_CHECK(t.is_contiguous() && t.device().is_cpu(), "scan loops take contiguous CPU tensors");
}

// acc += h W^T for one step without a norm; else z = h W^T (kept for the backward pass),
// which the step's parts normalize into acc (``Norm::forward``).
// (S*B, K) rows as (S, B, K), each seed's rows against its own matrix (w: (S, K, N)).
at::Tensor by_seed(const at::Tensor& x, int64_t seeds) {
  return x.view({seeds, x.size(0) / seeds, x.size(1)});
}

void recurrent_product(const Norm& n, const at::Tensor& h, const at::Tensor& w_t, at::Tensor& acc, at::Tensor& z) {
  const bool stacked = w_t.dim() == 3;
  if (stacked && n.mode == NONE) {
    by_seed(acc, w_t.size(0)).baddbmm_(by_seed(h, w_t.size(0)), w_t);
  } else if (stacked) {
    at::Tensor zv = by_seed(z, w_t.size(0));
    at::bmm_out(zv, by_seed(h, w_t.size(0)), w_t);
  } else if (n.mode == NONE) {
    acc.addmm_(h, w_t);
  } else {
    at::mm_out(z, h, w_t);
  }
}

// The gradient reaching h_{t-1} through the recurrent term: gh_{t-1} += d W, where d is
// dL/d(h W^T) (dz_t, or da_t without a norm), after the step's parts computed it.
void recurrent_grad(const Norm& n, int64_t t, const at::Tensor& da, const at::Tensor& dz, const at::Tensor& w,
                    std::vector<at::Tensor>& gh) {
  if (t == 0) return;
  const at::Tensor& d = n.mode == NONE ? da : dz;
  if (w.dim() == 3)
    by_seed(gh[t - 1], w.size(0)).baddbmm_(by_seed(d, w.size(0)), w);
  else
    gh[t - 1].addmm_(d, w);
}

// How one step's elementwise work is split over PyTorch's CPU threads; the matrix
// products between the steps use the threads on their own. Only a step with layer
// statistics (per row, and no batch statistics) is split, into parts of whole rows:
// its two reductions a row are the bulk of its elementwise work. Measured on a 2-core
// VM at B=32, H=64 (a training step, 20th percentile of 100 interleaved): ln-lstm and
// ln-gru 7-10% faster split; a split of the hidden units for batch norm (each feature's
// statistics within one part) gained nothing there and the cells without a norm lost
// 0-5%, so those steps run whole. A part computes the same values whatever the split:
// each element's arithmetic, each row's sums and the order of every sum are those of
// the whole step, so the results do not depend on the thread count. Split above
// ``min_work`` elements a step (B * H), in parts of at least ``row_grain`` rows
// (set_step_split; the tests lower both to split tiny steps).
struct StepSplit {
  int64_t min_work = 1024, row_grain = 8;
};
StepSplit g_split;
int64_t g_split_steps = 0;  // steps handed to the threads since the last ``split_steps()`` (for the tests)

void set_step_split(int64_t min_work, int64_t row_grain) {
  TORCH_CHECK(min_work >= 0 && row_grain >= 1, "step split: min_work >= 0, row_grain >= 1");
  g_split = StepSplit{min_work, row_grain};
}

std::vector<int64_t> step_split() {
  return {g_split.min_work, g_split.row_grain};
}

int64_t split_steps() {
  return std::exchange(g_split_steps, 0);
}

// fn(part) over one step's (B, H) work, split as above for the step's norms
template <typename Fn>
void each_part(int64_t B, int64_t H, std::initializer_list<const Norm*> norms, const Fn& fn) {
  bool batch = false, layer = false;
  for (const Norm* n : norms) {
    batch = batch || n->mode == BATCH;
    layer = layer || n->mode == LAYER;
  }
  if (!layer || batch || B * H < g_split.min_work) {
    fn(Part{0, B});
    return;
  }
  if (at::get_num_threads() > 1) ++g_split_steps;
  at::parallel_for(0, B, g_split.row_grain, [&](int64_t b0, int64_t b1) { fn(Part{b0, b1}); });
}

// The input term's batch norm in the loops (one model, per-step batch statistics):
// N(u_t) for every step from u (B, T, F) as the input projection left it, written
// time-major into the loop's (T, B, F) buffer before the forward loop; dL/du from the
// loop's (T, B, F) gradient of the input term after the backward loop. This saves a
// separate batch norm's passes and the copies to and from time-major order, over a term
// too large for the cache. Neither pass depends on the recurrence, so they run outside
// the serial loops, the features split over PyTorch's CPU threads: each thread owns its
// features' statistics and dgamma/dbeta sums (which add over steps in the order of the
// backward loop, T-1 down to 0), so the result does not depend on the thread count.
// Inactive (the loops' buffer already holds the input term) without u.
//
// With ``w`` (W^T, (I, F)), u is the projection's input x (B, T, I) instead and the
// term is x W^T, computed here block by block (a step's rows, a thread's features) where
// it is used, in both passes: for the few input features of the long-dependency tasks
// (I = 1 or 2) that costs less than writing the (B, T, F) term and reading it back, and
// than the projection's backward reading dL/du: the backward pass sums dL/dW^T into
// ``dw`` (I, F) itself (over steps T-1 down to 0 and rows in order, each feature on the
// thread that owns it) and writes no dL/du. x takes no gradient here (scan.py leaves a
// projection that needs one to PyTorch).
struct InputNorm {
  const Norm& n;
  at::Tensor u, du, w, dw;
  int64_t T = 0, F = 0, I = 0;

  // like: the loop's (T, B, F) buffer of the input term (or of its gradient)
  InputNorm(const Norm& n, const at::Tensor& like, const c10::optional<at::Tensor>& u_,
            const c10::optional<at::Tensor>& du_ = c10::nullopt, const c10::optional<at::Tensor>& w_ = c10::nullopt,
            const c10::optional<at::Tensor>& dw_ = c10::nullopt)
      : n(n), u(u_.value_or(at::Tensor())), du(du_.value_or(at::Tensor())), w(w_.value_or(at::Tensor())),
        dw(dw_.value_or(at::Tensor())) {
    if (!u.defined()) return;
    TORCH_CHECK(n.mode == BATCH && n.seeds == 1 && n.beta.defined() && n.var.defined(),
                "the loops' input norm is batch norm of one model, with a shift and variance buffers");
    check({u, du, w, dw});
    T = u.size(1);
    const bool projected = w.defined();
    F = projected ? w.size(1) : u.size(2);
    I = projected ? w.size(0) : 0;
    const auto fits = [&](const at::Tensor& t, const at::Tensor& like) {
      return t.sizes() == like.sizes() && t.scalar_type() == like.scalar_type();
    };
    TORCH_CHECK(u.dim() == 3 && like.size(0) == T && like.size(1) == u.size(0) && like.size(2) == F &&
                    u.scalar_type() == like.scalar_type() && (!du.defined() || fits(du, u)) &&
                    n.gamma.numel() == F && n.beta.numel() == F && n.mean.size(0) >= T && n.mean.size(1) == F,
                "the loops' input norm: u (B, T, F), du and the norm's tables must fit the (T, B, F) loop");
    TORCH_CHECK(!projected || (w.dim() == 2 && u.size(2) == I && w.scalar_type() == u.scalar_type() && !du.defined() &&
                               (!dw.defined() || fits(dw, w))),
                "the loops' input projection: x (B, T, I), W^T (I, F) and dW^T like W^T, no dL/dx");
  }

  // Where step t's input term for features [f0, f1) lies: its rows ``stride`` apart, in u,
  // or (with ``w``) computed into ``block`` (B rows of f1 - f0) from x.
  template <typename S>
  const S* term(int64_t t, int64_t f0, int64_t f1, std::vector<S>& block, int64_t& stride) const {
    if (!w.defined()) {
      stride = T * F;
      return ptr<S>(u) + t * F + f0;
    }
    const int64_t B = u.size(0), nf = f1 - f0;
    const S *x = ptr<S>(u), *wt = ptr<S>(w);
    block.resize(B * nf);
    for (int64_t b = 0; b < B; ++b) {
      const S* xb = x + (b * T + t) * I;
      S* ub = block.data() + b * nf;
      SIMD
      for (int64_t f = 0; f < nf; ++f) ub[f] = xb[0] * wt[f0 + f];
      for (int64_t k = 1; k < I; ++k)
        SIMD
        for (int64_t f = 0; f < nf; ++f) ub[f] += xb[k] * wt[k * F + f0 + f];
    }
    stride = nf;
    return block.data();
  }

  // out (T, B, F) = N(u_t) for every step
  template <typename S>
  void forward_all(const at::Tensor& out) const {
    if (!u.defined()) return;
    const int64_t B = u.size(0);
    const S *g = ptr<S>(n.gamma), *be = ptr<S>(n.beta);
    S* op = ptr<S>(out);
    at::parallel_for(0, F, kFeatureGrain, [&](int64_t f0, int64_t f1) {
      std::vector<S> block;
      for (int64_t t = 0; t < T; ++t) {
        int64_t xs;
        const S* x = term<S>(t, f0, f1, block, xs);
        n.batch_forward(t * F + f0, g + f0, be + f0, x, xs, op + t * B * F + f0, F, B, f1 - f0, false);
      }
    });
  }

  // du = dL/du (or, with ``w``, dw = dL/dW^T) from dy (T, B, F) = dL/dN(u_t) for every
  // step; dgamma/dbeta accumulate
  template <typename S>
  void backward_all(const at::Tensor& dy) const {
    if (!u.defined()) return;
    const int64_t B = u.size(0);
    const S *g = ptr<S>(n.gamma), *dyp = ptr<S>(dy), *x = w.defined() ? ptr<S>(u) : nullptr;
    S *dg = ptr<S>(n.dgamma), *dbe = ptr<S>(n.dbeta), *dwt = dw.defined() ? ptr<S>(dw) : nullptr;
    if (dwt) std::fill(dwt, dwt + I * F, S(0));
    at::parallel_for(0, F, kFeatureGrain, [&](int64_t f0, int64_t f1) {
      const int64_t nf = f1 - f0;
      std::vector<S> block, dblock(w.defined() ? B * nf : 0);
      for (int64_t t = T - 1; t >= 0; --t) {
        int64_t xs;
        const S* xt = term<S>(t, f0, f1, block, xs);
        S* dx = w.defined() ? dblock.data() : ptr<S>(du) + t * F + f0;
        n.batch_backward(t * F + f0, g + f0, dg + f0, dbe + f0, dyp + t * B * F + f0, F, xt, xs, dx, B, nf);
        if (!dwt) continue;
        for (int64_t b = 0; b < B; ++b) {
          const S* xb = x + (b * T + t) * I;
          const S* db = dx + b * nf;
          for (int64_t k = 0; k < I; ++k)
            SIMD
            for (int64_t f = 0; f < nf; ++f) dwt[k * F + f0 + f] += db[f] * xb[k];
        }
      }
    });
  }
};

std::vector<at::Tensor> steps(const at::Tensor& t, int64_t T) {
  return t.defined() ? t.unbind(0) : std::vector<at::Tensor>(T);
}

// -- RNN: h_t = act(u_t + N(h_{t-1} W^T)) ------------------------------------------------

void rnn_forward(at::Tensor hs, c10::optional<at::Tensor> zs_, at::Tensor h0, at::Tensor w, const Norm& nh,
                 bool relu, const Norm& nx, c10::optional<at::Tensor> ux, c10::optional<at::Tensor> wx) {
  // hs (T, B, H) holds u_t (+ folded shift) and becomes h_t; zs (T, B, H) gets h W^T.
  at::Tensor zs = zs_.value_or(at::Tensor());
  check({hs, zs, h0});
  const int64_t T = hs.size(0), B = hs.size(1), H = hs.size(2);
  auto h_s = steps(hs, T), z_s = steps(zs, T);
  at::Tensor w_t = w.transpose(-1, -2), h = h0;
  const InputNorm in(nx, hs, ux, c10::nullopt, wx);
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "rnn_forward", [&] {
    in.forward_all<scalar_t>(hs);
    for (int64_t t = 0; t < T; ++t) {
      recurrent_product(nh, h, w_t, h_s[t], z_s[t]);
      scalar_t* a = ptr<scalar_t>(h_s[t]);
      const scalar_t* z = nh.mode != NONE ? ptr<scalar_t>(z_s[t]) : nullptr;
      each_part(B, H, {&nh}, [&](const Part& p) {
        if (z) nh.forward<scalar_t>(t, z, a, B, H, true, p);
        const int64_t i0 = p.b0 * H, i1 = p.b1 * H;  // the part's rows, as one run of elements
        if (relu)
          SIMD
          for (int64_t i = i0; i < i1; ++i) a[i] = a[i] > 0 || a[i] != a[i] ? a[i] : scalar_t(0);
        else
          SIMD
          for (int64_t i = i0; i < i1; ++i) a[i] = tanh_(a[i]);
      });
      h = h_s[t];
    }
  });
}

void rnn_backward(at::Tensor gh, at::Tensor hs, at::Tensor da, c10::optional<at::Tensor> dz_,
                  c10::optional<at::Tensor> zs_, at::Tensor w, const Norm& nh, bool relu, const Norm& nx,
                  c10::optional<at::Tensor> ux, c10::optional<at::Tensor> dux, c10::optional<at::Tensor> wx,
                  c10::optional<at::Tensor> dwx) {
  // gh (T, B, H): dL/dh_t, completed in place step by step; da = gh * act'(h_t); dz = N'(da).
  at::Tensor dz = dz_.value_or(at::Tensor()), zs = zs_.value_or(at::Tensor());
  check({gh, hs, da, dz, zs});
  nh.zero_grads();
  nx.zero_grads();
  const InputNorm in(nx, da, ux, dux, wx, dwx);
  const int64_t T = gh.size(0), B = gh.size(1), H = gh.size(2);
  auto gh_s = steps(gh, T), da_s = steps(da, T), dz_s = steps(dz, T), z_s = steps(zs, T);
  AT_DISPATCH_FLOATING_TYPES(gh.scalar_type(), "rnn_backward", [&] {
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* g = ptr<scalar_t>(gh_s[t]);
      const scalar_t* h = ptr<scalar_t>(hs, t * B * H);
      scalar_t* d = ptr<scalar_t>(da_s[t]);
      each_part(B, H, {&nh}, [&](const Part& p) {
        const int64_t i0 = p.b0 * H, i1 = p.b1 * H;
        if (relu)
          SIMD
          for (int64_t i = i0; i < i1; ++i) d[i] = h[i] > 0 ? g[i] : scalar_t(0);
        else
          SIMD
          for (int64_t i = i0; i < i1; ++i) d[i] = g[i] * (1 - h[i] * h[i]);
        if (nh.mode != NONE) nh.backward<scalar_t>(t, d, ptr<scalar_t>(z_s[t]), ptr<scalar_t>(dz_s[t]), B, H, p);
      });
      recurrent_grad(nh, t, da_s[t], dz_s[t], w, gh_s);
    }
    nh.layer_grads<scalar_t>(da, zs);
    in.backward_all<scalar_t>(da);
  });
}

// -- LSTM: [i f g o] = u_t + N(h_{t-1} W^T), c_t = s(f) c_{t-1} + s(i) tanh(g),
//    h_t = s(o) tanh(N_c(c_t)) ------------------------------------------------------------

void lstm_forward(at::Tensor sig, at::Tensor tg, at::Tensor cs, at::Tensor tc, at::Tensor hs,
                  c10::optional<at::Tensor> zs_, at::Tensor h0, at::Tensor c0, at::Tensor w, const Norm& nh,
                  const Norm& nc, const Norm& nx, c10::optional<at::Tensor> ux, c10::optional<at::Tensor> wx) {
  // sig (T, B, 4H) holds u_t (+ folded shift); its i, f, o blocks become the gates'
  // sigmoids (the g block keeps its pre-activation, unused). tg = tanh(g), cs = c_t,
  // tc = tanh(N_c(c_t)), hs = h_t, zs = h W^T.
  at::Tensor zs = zs_.value_or(at::Tensor());
  check({sig, tg, cs, tc, hs, zs, h0, c0});
  const int64_t T = sig.size(0), B = sig.size(1), G = sig.size(2), H = G / 4;
  auto sig_s = steps(sig, T), z_s = steps(zs, T), h_s = steps(hs, T);
  at::Tensor w_t = w.transpose(-1, -2), h = h0;
  const InputNorm in(nx, sig, ux, c10::nullopt, wx);
  AT_DISPATCH_FLOATING_TYPES(sig.scalar_type(), "lstm_forward", [&] {
    in.forward_all<scalar_t>(sig);
    const scalar_t* cprev = ptr<scalar_t>(c0);
    for (int64_t t = 0; t < T; ++t) {
      recurrent_product(nh, h, w_t, sig_s[t], z_s[t]);
      scalar_t* a = ptr<scalar_t>(sig_s[t]);
      const scalar_t* z = nh.mode != NONE ? ptr<scalar_t>(z_s[t]) : nullptr;
      scalar_t* tgt = ptr<scalar_t>(tg, t * B * H);
      scalar_t* ct = ptr<scalar_t>(cs, t * B * H);
      scalar_t* tct = ptr<scalar_t>(tc, t * B * H);
      scalar_t* ht = ptr<scalar_t>(h_s[t]);
      each_part(B, H, {&nh, &nc}, [&](const Part& p) {
        if (z) nh.forward<scalar_t>(t, z, a, B, G, true, p);
        for (int64_t b = p.b0; b < p.b1; ++b) {
          scalar_t* ab = a + b * G;
          const int64_t r = b * H;
          SIMD
          for (int64_t j = 0; j < H; ++j) {
            const scalar_t i = sigmoid_(ab[j]), f = sigmoid_(ab[H + j]), g = tanh_(ab[2 * H + j]);
            ab[j] = i;
            ab[H + j] = f;
            ab[3 * H + j] = sigmoid_(ab[3 * H + j]);
            tgt[r + j] = g;
            ct[r + j] = f * cprev[r + j] + i * g;
          }
        }
        const scalar_t* cn = ct;
        if (nc.mode != NONE) {
          nc.forward<scalar_t>(t, ct, tct, B, H, false, p);
          cn = tct;
        }
        for (int64_t b = p.b0; b < p.b1; ++b) {
          const scalar_t* o = a + b * G + 3 * H;
          const int64_t r = b * H;
          SIMD
          for (int64_t j = 0; j < H; ++j) {
            tct[r + j] = tanh_(cn[r + j]);
            ht[r + j] = o[j] * tct[r + j];
          }
        }
      });
      h = h_s[t];
      cprev = ct;
    }
  });
}

at::Tensor lstm_backward(at::Tensor gh, at::Tensor sig, at::Tensor tg, at::Tensor cs, at::Tensor tc, at::Tensor c0,
                         at::Tensor da, c10::optional<at::Tensor> dz_, c10::optional<at::Tensor> dn_,
                         c10::optional<at::Tensor> zs_, at::Tensor w, c10::optional<at::Tensor> dc_last,
                         const Norm& nh, const Norm& nc, const Norm& nx, c10::optional<at::Tensor> ux,
                         c10::optional<at::Tensor> dux, c10::optional<at::Tensor> wx, c10::optional<at::Tensor> dwx) {
  // gh (T, B, H): dL/dh_t, completed in place; sig, tg, cs, tc: what lstm_forward kept;
  // da (T, B, 4H) = dL/da; dz = N'(da); dn = dL/dN_c(c_t). The gates' derivatives are
  // computed here, step by step, from the forward pass's values.
  // Returns dL/dc_0 before the forget gate of step 0 (scan.py multiplies it in).
  at::Tensor dz = dz_.value_or(at::Tensor()), dn = dn_.value_or(at::Tensor()), zs = zs_.value_or(at::Tensor());
  at::Tensor dcl = dc_last.value_or(at::Tensor());
  check({gh, sig, tg, cs, tc, c0, da, dz, dn, zs, dcl});
  nh.zero_grads();
  nc.zero_grads();
  nx.zero_grads();
  const InputNorm in(nx, da, ux, dux, wx, dwx);
  const int64_t T = gh.size(0), B = gh.size(1), H = gh.size(2), G = 4 * H;
  auto gh_s = steps(gh, T), da_s = steps(da, T), dz_s = steps(dz, T), z_s = steps(zs, T);
  at::Tensor dc = at::empty({B, H}, gh.options()), dcn = at::empty({B, H}, gh.options());
  AT_DISPATCH_FLOATING_TYPES(gh.scalar_type(), "lstm_backward", [&] {
    scalar_t* dcp = ptr<scalar_t>(dc);
    scalar_t* dcnp = ptr<scalar_t>(dcn);
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* g = ptr<scalar_t>(gh_s[t]);
      const scalar_t* s = ptr<scalar_t>(sig, t * B * G);
      const scalar_t* tgt = ptr<scalar_t>(tg, t * B * H);
      const scalar_t* tct = ptr<scalar_t>(tc, t * B * H);
      const scalar_t* cprev = t > 0 ? ptr<scalar_t>(cs, (t - 1) * B * H) : ptr<scalar_t>(c0);
      const scalar_t* snext = t < T - 1 ? ptr<scalar_t>(sig, (t + 1) * B * G) : nullptr;
      const scalar_t* l = t == T - 1 && dcl.defined() ? ptr<scalar_t>(dcl) : nullptr;
      // dL/dN_c(c_t) = gh s(o) tanh'(.), then through the cell norm
      scalar_t* dnt = nc.mode != NONE ? ptr<scalar_t>(dn, t * B * H) : dcnp;
      scalar_t* d = ptr<scalar_t>(da_s[t]);
      each_part(B, H, {&nh, &nc}, [&](const Part& p) {
        for (int64_t b = p.b0; b < p.b1; ++b)
          SIMD
          for (int64_t j = 0; j < H; ++j) {
            const scalar_t o = s[b * G + 3 * H + j], y = tct[b * H + j];
            dnt[b * H + j] = g[b * H + j] * (1 - y * y) * o;
          }
        if (nc.mode != NONE) nc.backward<scalar_t>(t, dnt, ptr<scalar_t>(cs, t * B * H), dcnp, B, H, p);
        for (int64_t b = p.b0; b < p.b1; ++b) {
          const scalar_t* sb = s + b * G;
          scalar_t* db = d + b * G;
          const int64_t r = b * H;
          SIMD
          for (int64_t j = 0; j < H; ++j) {
            // dc_t = dcn_t + dc_{t+1} s(f_{t+1}) (+ the incoming dL/dc_T at the last step)
            scalar_t c = dcnp[r + j];
            if (snext) c += dcp[r + j] * snext[b * G + H + j];
            if (l) c += l[r + j];
            dcp[r + j] = c;
            const scalar_t i = sb[j], f = sb[H + j], o = sb[3 * H + j], gg = tgt[r + j], y = tct[r + j];
            db[j] = c * (1 - i) * i * gg;
            db[H + j] = c * (1 - f) * f * cprev[r + j];
            db[2 * H + j] = c * (1 - gg * gg) * i;
            db[3 * H + j] = g[r + j] * (1 - o) * o * y;
          }
        }
        if (nh.mode != NONE) nh.backward<scalar_t>(t, d, ptr<scalar_t>(z_s[t]), ptr<scalar_t>(dz_s[t]), B, G, p);
      });
      recurrent_grad(nh, t, da_s[t], dz_s[t], w, gh_s);
    }
    nc.layer_grads<scalar_t>(dn, cs);
    nh.layer_grads<scalar_t>(da, zs);
    in.backward_all<scalar_t>(da);
  });
  return dc;
}

// -- GRU: r, z = s(u_{r,z} + a_{r,z}), n = tanh(u_n + r (a_n + b_hn)),
//    h_t = (1 - z) n + z h_{t-1}, a = N(h_{t-1} W^T) ---------------------------------------

void gru_forward(at::Tensor gates, at::Tensor hw, at::Tensor hs, c10::optional<at::Tensor> zs_, at::Tensor h0,
                 at::Tensor w, const Norm& nh, const Norm& nx, c10::optional<at::Tensor> ux,
                 c10::optional<at::Tensor> wx) {
  // gates (T, B, 3H) holds u_t and becomes (r, z, n); hw (T, B, 3H) holds (0, 0, b_hn)
  // (+ folded shift) and gets N(h W^T) added; hs = h_t; zs = h W^T.
  at::Tensor zs = zs_.value_or(at::Tensor());
  check({gates, hw, hs, zs, h0});
  const int64_t T = gates.size(0), B = gates.size(1), G = gates.size(2), H = G / 3;
  auto hw_s = steps(hw, T), z_s = steps(zs, T), h_s = steps(hs, T);
  at::Tensor w_t = w.transpose(-1, -2), h = h0;
  const InputNorm in(nx, gates, ux, c10::nullopt, wx);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_forward", [&] {
    in.forward_all<scalar_t>(gates);
    for (int64_t t = 0; t < T; ++t) {
      recurrent_product(nh, h, w_t, hw_s[t], z_s[t]);
      const scalar_t* hp = ptr<scalar_t>(h);
      scalar_t* a = ptr<scalar_t>(hw_s[t]);
      const scalar_t* z = nh.mode != NONE ? ptr<scalar_t>(z_s[t]) : nullptr;
      scalar_t* u = ptr<scalar_t>(gates, t * B * G);
      scalar_t* ht = ptr<scalar_t>(h_s[t]);
      each_part(B, H, {&nh}, [&](const Part& p) {
        if (z) nh.forward<scalar_t>(t, z, a, B, G, true, p);
        for (int64_t b = p.b0; b < p.b1; ++b) {
          scalar_t* ub = u + b * G;
          const scalar_t* ab = a + b * G;
          const int64_t r = b * H;
          SIMD
          for (int64_t j = 0; j < H; ++j) {
            const scalar_t rg = sigmoid_(ub[j] + ab[j]), zg = sigmoid_(ub[H + j] + ab[H + j]);
            const scalar_t n = tanh_(ub[2 * H + j] + rg * ab[2 * H + j]);
            ub[j] = rg;
            ub[H + j] = zg;
            ub[2 * H + j] = n;
            ht[r + j] = n + zg * (hp[r + j] - n);
          }
        }
      });
      h = h_s[t];
    }
  });
}

void gru_backward(at::Tensor gh, at::Tensor gates, at::Tensor hw, at::Tensor hs, at::Tensor h0, at::Tensor da,
                  at::Tensor du, c10::optional<at::Tensor> dz_, c10::optional<at::Tensor> zs_, at::Tensor w,
                  const Norm& nh, const Norm& nx, c10::optional<at::Tensor> ux, c10::optional<at::Tensor> dux,
                  c10::optional<at::Tensor> wx, c10::optional<at::Tensor> dwx) {
  // gh (T, B, H): dL/dh_t, completed in place; gates (r, z, n), hw, hs: what gru_forward
  // kept; du = dL/du (the input term), da = dL/da, dz = N'(da). gh_{t-1} gets z_t gh_t
  // (the carry) and dz_t W. The gates' derivatives are computed here, step by step.
  at::Tensor dz = dz_.value_or(at::Tensor()), zs = zs_.value_or(at::Tensor());
  check({gh, gates, hw, hs, h0, da, du, dz, zs});
  nh.zero_grads();
  nx.zero_grads();
  const InputNorm in(nx, du, ux, dux, wx, dwx);
  const int64_t T = gh.size(0), B = gh.size(1), H = gh.size(2), G = 3 * H;
  auto gh_s = steps(gh, T), da_s = steps(da, T), dz_s = steps(dz, T), z_s = steps(zs, T);
  AT_DISPATCH_FLOATING_TYPES(gh.scalar_type(), "gru_backward", [&] {
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* g = ptr<scalar_t>(gh_s[t]);
      const scalar_t* u = ptr<scalar_t>(gates, t * B * G);
      const scalar_t* a = ptr<scalar_t>(hw, t * B * G);
      const scalar_t* hp = t > 0 ? ptr<scalar_t>(hs, (t - 1) * B * H) : ptr<scalar_t>(h0);
      scalar_t* prev = t > 0 ? ptr<scalar_t>(gh_s[t - 1]) : nullptr;
      scalar_t* d = ptr<scalar_t>(da_s[t]);
      scalar_t* dut = ptr<scalar_t>(du, t * B * G);
      each_part(B, H, {&nh}, [&](const Part& p) {
        for (int64_t b = p.b0; b < p.b1; ++b) {
          const int64_t q = b * G, r = b * H;
          SIMD
          for (int64_t j = 0; j < H; ++j) {
            const scalar_t rg = u[q + j], zg = u[q + H + j], n = u[q + 2 * H + j], gj = g[r + j];
            const scalar_t dn = gj * (1 - n * n) * (1 - zg);  // dL/d(u_n + r a_n)
            const scalar_t dr = dn * a[q + 2 * H + j] * rg * (1 - rg);
            const scalar_t dzg = gj * (hp[r + j] - n) * zg * (1 - zg);
            dut[q + j] = dr;
            dut[q + H + j] = dzg;
            dut[q + 2 * H + j] = dn;
            d[q + j] = dr;
            d[q + H + j] = dzg;
            d[q + 2 * H + j] = dn * rg;  // a_n enters as r a_n
            if (prev) prev[r + j] += gj * zg;
          }
        }
        if (nh.mode != NONE) nh.backward<scalar_t>(t, d, ptr<scalar_t>(z_s[t]), ptr<scalar_t>(dz_s[t]), B, G, p);
      });
      recurrent_grad(nh, t, da_s[t], dz_s[t], w, gh_s);
    }
    nh.layer_grads<scalar_t>(da, zs);
    in.backward_all<scalar_t>(du);
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnbench: the sequential loops of baselines/scan.py, compiled";
  py::class_<Norm>(m, "Norm")
      .def(py::init<int64_t, at::Tensor, c10::optional<at::Tensor>, c10::optional<at::Tensor>,
                    c10::optional<at::Tensor>, c10::optional<at::Tensor>, c10::optional<at::Tensor>,
                    c10::optional<at::Tensor>, double>())
      .def_readonly("dgamma", &Norm::dgamma)
      .def_readonly("dbeta", &Norm::dbeta);
  m.def("set_step_split", &set_step_split, "min_work, row_grain: which steps are split over the threads");
  m.def("step_split", &step_split);
  m.def("split_steps", &split_steps, "the number of steps run split since the last call");
  m.def("rnn_forward", &rnn_forward);
  m.def("rnn_backward", &rnn_backward);
  m.def("lstm_forward", &lstm_forward);
  m.def("lstm_backward", &lstm_backward);
  m.def("gru_forward", &gru_forward);
  m.def("gru_backward", &gru_backward);
}
