"""The fused cumulative-gain pass equals the (B, L, C) definition of gains and mastery: values and gradients."""
import pytest
import torch
import torch.nn.functional as F

from gainakt3exp import cumulative
from gainakt3exp.cumulative import cumulative_steps


def _definition(v, w, b, m0, c, q, scale):
    """SPEC §4 literally: g = ReLU(W v + b), m_t = min(1, m_0 + scale * sum_{1<=tau<=t} g_tau)."""
    g = F.relu(v @ w.t() + b)
    g_from_1 = torch.cat([torch.zeros_like(g[:, :1]), g[:, 1:]], 1)
    u = m0.unsqueeze(1) + scale * g_from_1.cumsum(1)
    m = torch.clamp(u, max=1.0)
    at = lambda x, i: x.gather(-1, i.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    return {"gain_sum": g.sum(-1), "gain_at_c": at(g, c), "mastery_mean": m.mean(-1), "mastery_at_c": at(m, c),
            "mastery_at_q": at(m, q), "cap_excess": F.relu(u - 1).sum(-1)}


def _case(b, l, n_c, d, seed, big_m0=False):
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(b, l, d, generator=gen, requires_grad=True)
    w = (0.3 * torch.randn(n_c, d, generator=gen)).requires_grad_()
    bias = (0.3 * torch.randn(n_c, generator=gen) - 0.1).requires_grad_()
    # many skills cap within the window (m_0 near 1, large scale) so the cap's gradient is exercised
    m0 = (torch.rand(b, n_c, generator=gen) * (0.3 if not big_m0 else 1.0) + (0.7 if big_m0 else 0.0))
    m0 = m0.clamp(max=1.0).requires_grad_()
    c = torch.randint(0, n_c, (b, l), generator=gen)
    q = torch.randint(0, n_c, (b, l), generator=gen)
    weights = {k: torch.randn(b, l, generator=gen) for k in
               ("gain_sum", "gain_at_c", "mastery_mean", "mastery_at_c", "mastery_at_q", "cap_excess")}
    return (v, w, bias, m0, c, q), weights


def _values_and_grads(fn, inputs, weights):
    for t in inputs[:4]:
        t.grad = None
    values = fn(*inputs)
    loss = sum((values[k] * weights[k]).sum() for k in weights)
    loss.backward()
    return {k: values[k].detach() for k in weights}, [t.grad.clone() for t in inputs[:4]]


@pytest.mark.parametrize("b,l,n_c,d,big_m0,block", [
    (5, 9, 7, 4, False, 1 << 20), (4, 12, 30, 8, True, 1 << 20), (6, 15, 50, 8, True, 100),  # 100: many blocks
    (3, 2, 5, 4, True, 1 << 20), (3, 1, 5, 4, False, 1 << 20)])
def test_fused_pass_equals_the_definition_in_values_and_gradients(b, l, n_c, d, big_m0, block, monkeypatch):
    monkeypatch.setattr(cumulative, "BLOCK_CELLS", block)
    scale = 0.4
    inputs, weights = _case(b, l, n_c, d, seed=b * 100 + l, big_m0=big_m0)
    ref_values, ref_grads = _values_and_grads(lambda *a: _definition(*a, scale), inputs, weights)
    fused = lambda *a: cumulative_steps(*a, scale)._asdict()  # noqa: E731
    values, grads = _values_and_grads(fused, inputs, weights)
    for key in weights:
        assert torch.allclose(values[key], ref_values[key], rtol=1e-5, atol=1e-5), key
    for name, got, want in zip(("v", "weight", "bias", "m0"), grads, ref_grads):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), (name, float((got - want).abs().max()))
    if big_m0 and l > 1:
        assert float(ref_values["cap_excess"].max()) > 0  # the cap is exercised


def test_fused_pass_holds_no_cell_tensor_of_the_whole_batch(monkeypatch):
    """Blocks of at most BLOCK_CELLS cells: every (rows, L, C) tensor the forward makes is one block's."""
    monkeypatch.setattr(cumulative, "BLOCK_CELLS", 6 * 10 * 20)
    inputs, _ = _case(12, 10, 20, 4, seed=1)
    seen = []
    real_mm = torch.mm

    def spy(a, b, *args, **kwargs):
        seen.append(a.shape[0] * b.shape[1])  # cells of the (rows x steps, C) product
        return real_mm(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "mm", spy)
    cumulative_steps(*inputs, 0.1)
    assert len(seen) == 2 and max(seen) <= 6 * 10 * 20  # 12 rows in two blocks of 6
