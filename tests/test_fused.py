"""The fused Triton recurrence equals the reference math, forward and backward.

On a machine without CUDA the kernels run in Triton's interpreter
(TRITON_INTERPRET=1, set in conftest.py before Triton is imported); on CUDA
tests/test_gpu.py runs the compiled kernels against the reference loop.
"""

import pytest
import torch
import torch.nn.functional as F

fused = pytest.importorskip("baselines.fused")
if fused.triton is None:
    pytest.skip("triton is not installed", allow_module_level=True)
if not fused.interpreting():
    pytest.skip("the interpreter tests run where CUDA is absent (TRITON_INTERPRET=1)", allow_module_level=True)


def reference(u, h0, w, g, norm, batch_stats, pm, pv, act, eps=1e-5):
    """The recurrence written plainly, one step at a time (float64 in the tests)."""
    h, outs, means, variances = h0, [], [], []
    for t in range(u.shape[1]):
        z = h @ w.t()
        if norm == "batch":
            if batch_stats:
                var, mean = torch.var_mean(z, 0, correction=0)
                means.append(mean)
                variances.append(var)
            else:
                r = min(t, pm.shape[0] - 1)
                mean, var = pm[r], pv[r]
            n = (z - mean) / torch.sqrt(var + eps) * g
        elif norm == "layer":
            n = F.layer_norm(z, (z.shape[-1],), eps=eps) * g
        else:
            n = z
        h = torch.tanh(n + u[:, t]) if act == "tanh" else torch.relu(n + u[:, t])
        outs.append(h)
    stats = (torch.stack(means), torch.stack(variances)) if means else None
    return torch.stack(outs, 1), stats


def rel_err(a, b):
    """‖a − b‖ / ‖b‖: float32 arithmetic lands far under 1e-4 against a float64 reference."""
    return ((a.double() - b).norm() / b.norm().clamp(min=1e-12)).item()


CASES = [(None, True, "tanh"), ("batch", True, "tanh"), ("batch", False, "tanh"),
         ("layer", True, "tanh"), (None, True, "relu"), ("batch", True, "relu")]


@pytest.mark.parametrize("norm,batch_stats,act", CASES)
@pytest.mark.parametrize("B,T,H", [(5, 7, 20), (17, 3, 9)])
def test_fused_matches_reference(norm, batch_stats, act, B, T, H):
    torch.manual_seed(B * 100 + H)
    u = torch.randn(B, T, H, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(H, H, dtype=torch.float64) / H ** 0.5).requires_grad_()
    g = (torch.rand(H, dtype=torch.float64) + 0.5).requires_grad_()
    pm, pv = torch.randn(3, H, dtype=torch.float64), torch.rand(3, H, dtype=torch.float64) + 0.5
    h_ref, stats = reference(u, h0, w, g, norm, batch_stats, pm, pv, act)
    # the kernel computes in float32; compare with the float64 reference
    h_f, mean_f, var_f = fused.fused_rnn(u.float(), h0.float(), w.float(), g.float() if norm else None,
                                         norm=norm, batch_stats=batch_stats, pop_mean=pm.float(),
                                         pop_var=pv.float(), act=act)
    assert rel_err(h_f, h_ref) < 1e-5
    if stats is not None:
        torch.testing.assert_close(mean_f.double(), stats[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(var_f.double(), stats[1], rtol=1e-4, atol=1e-5)
    dy = torch.randn_like(h_ref)
    params = [u, h0, w] + ([g] if norm else [])
    g_ref = torch.autograd.grad((h_ref * dy).sum(), params)
    uf, h0f, wf, gf = (t.detach().float().requires_grad_() for t in (u, h0, w, g))
    h_f, _, _ = fused.fused_rnn(uf, h0f, wf, gf if norm else None, norm=norm, batch_stats=batch_stats,
                                pop_mean=pm.float(), pop_var=pv.float(), act=act)
    g_f = torch.autograd.grad((h_f * dy.float()).sum(), [uf, h0f, wf] + ([gf] if norm else []))
    for name, a, b in zip(["u", "h0", "w_hh", "gamma"], g_f, g_ref):
        assert rel_err(a, b) < 1e-4, f"grad {name}: relative error {rel_err(a, b):.2e}"


def test_population_rows_past_training_length_reuse_last():
    torch.manual_seed(0)
    B, T, H = 4, 6, 16
    u, h0, w, g = torch.randn(B, T, H), torch.randn(B, H), torch.randn(H, H) / 4, torch.ones(H)
    pm, pv = torch.randn(2, H), torch.rand(2, H) + 0.5
    h, mean, _ = fused.fused_rnn(u, h0, w, g, norm="batch", batch_stats=False, pop_mean=pm, pop_var=pv)
    torch.testing.assert_close(mean[0], pm[0])
    for t in range(1, T):
        torch.testing.assert_close(mean[t], pm[1])
    ref, _ = reference(u.double(), h0.double(), w.double(), g.double(), "batch", False,
                       pm.double(), pv.double(), "tanh")
    torch.testing.assert_close(h.double(), ref, rtol=1e-4, atol=2e-5)


def test_shapes_beyond_one_tile_are_not_fused():
    assert not fused.available(torch.device("cuda"), 100, 1000)
    assert not fused.available(torch.device("cpu"), 4, 8)  # interpreter only when a test allows it
