"""The fused cumulative-gain pass equals the (B, L, C) definition of gains and mastery: values and gradients."""
import pytest
import torch
import torch.nn.functional as F

from gainakt3exp.model import cumulative
from gainakt3exp.model.cumulative import cumulative_steps


def _definition(v, w, b, m0, c, q, scale):
    """docs/model.md literally: g = ReLU(W v + b), m_t = min(1, m_0 + scale * sum_{1<=tau<=t} g_tau)."""
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


@pytest.mark.parametrize("link", ["clamp", "logistic"])
def test_practised_skill_steps_equal_the_full_definition(link):
    """gain_scope practised_skill: the (B, L, L) per-step sums equal the (B, L, C) definition (gains scattered to
    the practised skill, cumulative sum, link), values and gradients, with repeated skills and padding."""
    from gainakt3exp.model.cumulative import practised_full, practised_steps

    gen = torch.Generator().manual_seed(3)
    b, l, n_c, scale = 5, 11, 4, 0.7
    g_c = torch.rand(b, l, generator=gen).requires_grad_()
    l0 = (torch.randn(b, n_c, generator=gen) + (1.5 if link == "clamp" else 0.0)).requires_grad_()
    c = torch.randint(0, n_c, (b, l), generator=gen)
    q = torch.randint(0, n_c, (b, l), generator=gen)
    weights = {k: torch.randn(b, l, generator=gen) for k in
               ("gain_sum", "gain_at_c", "mastery_mean", "mastery_at_c", "mastery_at_q", "cap_excess")}

    def definition():
        gains, m = practised_full(g_c, l0, c, scale, link, n_c)
        s = torch.cat([torch.zeros_like(gains[:, :1]), gains[:, 1:]], 1).cumsum(1)
        at = lambda x, i: x.gather(-1, i.unsqueeze(-1)).squeeze(-1)  # noqa: E731
        out = {"gain_sum": gains.sum(-1), "gain_at_c": at(gains, c), "mastery_mean": m.mean(-1),
               "mastery_at_c": at(m, c), "mastery_at_q": at(m, q)}
        if link == "clamp":
            out["cap_excess"] = torch.relu(torch.sigmoid(l0).unsqueeze(1) + scale * s - 1).sum(-1)
        return out

    def run(fn):
        g_c.grad = l0.grad = None
        values = fn()
        sum((values[k] * weights[k]).sum() for k in values).backward()
        return {k: v.detach() for k, v in values.items()}, (g_c.grad.clone(), l0.grad.clone())

    want, want_grads = run(definition)
    got, got_grads = run(lambda: {k: v for k, v in practised_steps(g_c, l0, c, q, scale, link, n_c)._asdict().items()
                                  if k in want})
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)
    for a, e in zip(got_grads, want_grads):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    if link == "clamp":
        assert float(want["cap_excess"].max()) > 0


@pytest.mark.parametrize("link", ["clamp", "logistic"])
def test_model_reduced_pass_equals_its_full_pass_with_practised_gains(link):
    from gainakt3exp.model.network import GainAKT3Exp

    torch.manual_seed(1)
    model = GainAKT3Exp(num_c=6, seq_len=10, d_model=8, n_heads=2, num_encoder_blocks=1, d_ff=8, dropout=0.0,
                        emb_type="qid", attention_bias="none", query_embedding="own", use_mastery_head=True,
                        use_gain_head=True, mastery_gain_scale=0.5,
                        gain_scope="practised_skill", mastery_link=link, mastery_in_prediction="logit_skill_free",
                        gain_head_init_scale=1.0, mastery_head_init_scale=1.0, shared_gain=False, question_embedding="none").eval()
    gen = torch.Generator().manual_seed(2)
    c, r, q = (torch.randint(0, 6, (4, 9), generator=gen), torch.randint(0, 2, (4, 9), generator=gen),
               torch.randint(0, 6, (4, 9), generator=gen))
    with torch.no_grad():
        full, reduced = model(c, r, q), model(c, r, q, reduced=True)
    assert (full.gains > 0).sum(-1).max() <= 1  # one practised skill per step
    want = {"mastery_mean": full.mastery.mean(-1), "gain_sum": full.gains.sum(-1),
            "mastery_at_q": full.mastery.gather(-1, q.unsqueeze(-1)).squeeze(-1)}
    for key, value in want.items():
        torch.testing.assert_close(getattr(reduced.steps, key), value, rtol=1e-5, atol=1e-6)
    # logit(m) magnifies mastery's rounding by 1 / (m (1 - m)), up to ~1e4 near the clamp at 1e-4 (seen: 1.9e-5)
    torch.testing.assert_close(reduced.logits, full.logits, rtol=1e-4, atol=1e-4)
