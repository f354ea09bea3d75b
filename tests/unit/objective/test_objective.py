"""Loss terms and the Objective's schedules (docs/model.md). Expected values are worked out by hand in comments
or by a naive numpy loop, never by calling the code under test."""
import json
import math

import numpy as np
import pytest
import torch

from gainakt3exp.data.sequences import Batch
from gainakt3exp.errors import ConfigError
from gainakt3exp.model.cumulative import steps_from_full
from gainakt3exp.model.network import GainAKT3Exp, ModelOutput
from gainakt3exp.objective.controller import Objective
from gainakt3exp.objective.terms import (
    FIXED_CONSTANTS,
    alignment_correlations,
    bce_loss,
    consistency_loss,
    gain_performance_loss,
    lag_gain_correlation,
    masked_pearson,
    mastery_performance_loss,
    monotonicity_loss,
    residual_performance,
    retention_loss,
    sparsity_loss,
    warmup_scale,
)
from gainakt3exp.paths import CONFIG_DIR

DEFAULTS = json.loads((CONFIG_DIR / "parameter_default.json").read_text())["defaults"]
T, F_ = True, False


def _t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def _b(x):
    return torch.tensor(x, dtype=torch.bool)


def _l(x):
    return torch.tensor(x, dtype=torch.long)


# ------------------------------------------------------------------------------------ terms, hand values

def test_bce_is_mean_over_valid_steps():
    z = _t([[0.0, math.log(3.0)], [0.0, 50.0]])
    y = _t([[1.0, 0.0], [0.0, 0.0]])
    mask = _b([[T, T], [T, F_]])
    # BCE(0,1) = ln2, BCE(ln3,0) = -ln(1 - 3/4) = ln4, BCE(0,0) = ln2 -> (4 ln2) / 3; the padded 50 is ignored
    assert float(bce_loss(z, y, mask)) == pytest.approx(4 * math.log(2) / 3, abs=1e-6)


def _at(x, c):
    return x.gather(-1, c.unsqueeze(-1)).squeeze(-1)


def test_monotonicity_counts_only_pairs_of_valid_steps():
    m = _t([[[0.5, 0.5], [0.3, 0.6], [0.4, 0.2], [0.0, 0.0]]])
    # pairs (0,1): [0.2, 0]; (1,2): [0, 0.4]; (2,3) is padding -> 0.6 / 4
    assert float(monotonicity_loss(m, _b([[T, T, T, F_]]))) == pytest.approx(0.15)


def test_mastery_performance_hand_value_and_empty_wrong_set():
    m = _t([[[0.8, 0.1, 0.1], [0.5, 0.3, 0.5], [0.0, 0.0, 0.6], [0.9, 0.9, 0.9]]])
    c, mask = _l([[0, 1, 2, 0]]), _b([[T, T, T, F_]])
    # correct steps 0, 2: mean(1-0.8, 1-0.6) = 0.3; wrong step 1: 0.3 -> 0.6
    assert float(mastery_performance_loss(_at(m, c), _l([[1, 0, 1, 0]]), mask)) == pytest.approx(0.6)
    # all valid steps correct: the wrong term is empty and adds 0 -> mean(0.2, 0.7, 0.4)
    assert float(mastery_performance_loss(_at(m, c), _l([[1, 1, 1, 0]]), mask)) == pytest.approx(1.3 / 3)


def test_gain_performance_hand_value_and_zero_when_one_set_is_empty():
    g = torch.zeros(1, 4, 3)
    g[0, 0, 0], g[0, 1, 1], g[0, 2, 2], g[0, 3, 0] = 0.2, 0.5, 0.4, 9.0
    g.requires_grad_(True)
    c, mask = _l([[0, 1, 2, 0]]), _b([[T, T, T, F_]])
    # wrong: 0.5; correct: mean(0.2, 0.4) = 0.3 -> relu(0.5 - 0.3 + 0.1) = 0.3
    assert gain_performance_loss(_at(g, c), _l([[1, 0, 1, 0]]), mask, 0.1).item() == pytest.approx(0.3)
    empty = gain_performance_loss(_at(g, c), _l([[1, 1, 1, 0]]), mask, 0.1)
    assert empty.item() == 0.0 and empty.requires_grad


def test_sparsity_is_mean_gain_of_other_skills():
    g = _t([[[1.0, 0.0, 3.0], [4.0, 5.0, 6.0]]])  # gains are ReLU outputs: >= 0
    c = _l([[1, 0]])
    # step 0 only: skills 0 and 2 -> (1 + 3) / 2
    assert float(sparsity_loss(g.sum(-1), _at(g, c), _b([[T, F_]]), 3)) == pytest.approx(2.0)


def _definition_consistency(m0, g, mask, scale):
    """docs/model.md on full tensors: mean |(m_t - m_{t-1}) - scale g_t| over valid pairs, m = min(1, m0 + scale S)."""
    s = torch.cat([torch.zeros_like(g[:, :1]), g[:, 1:]], 1).cumsum(1)
    m = torch.clamp(m0.unsqueeze(1) + scale * s, max=1.0)
    pair = (mask[:, 1:] & mask[:, :-1]).unsqueeze(-1).expand_as(m[:, 1:])
    cells = ((m[:, 1:] - m[:, :-1]) - scale * g[:, 1:]).abs()
    return torch.where(pair, cells, 0.0).sum() / pair.sum().clamp(min=1), torch.relu(m0.unsqueeze(1) + scale * s - 1)


def test_consistency_hand_value_where_mastery_reaches_the_cap():
    m0 = _t([[0.7, 0.2]])
    g = _t([[[0.0, 0.0], [2.0, 1.0], [3.0, 1.0], [9.0, 9.0]]])
    mask = _b([[T, T, T, F_]])
    # scale 0.1: skill 0 goes 0.7 -> 0.9 -> 1.2 (capped: |0.1 - 0.3| = 0.2), skill 1 0.2 -> 0.3 -> 0.4 (0);
    # pairs (1, 2) x 2 skills... (0,1): 0, 0; (1,2): 0.2, 0 -> 0.2 / 4 = 0.05; step 3 is padding
    reference, excess = _definition_consistency(m0, g, mask, 0.1)
    assert float(reference) == pytest.approx(0.05, abs=1e-6)
    # telescoped: the row's excess at its last valid step, relu(1.2 - 1) = 0.2, over 2 pairs x 2 skills
    assert float(consistency_loss(excess.sum(-1), mask, 2)) == pytest.approx(0.05, abs=1e-6)


def test_consistency_equals_the_cell_definition_on_random_rows():
    gen = torch.Generator().manual_seed(5)
    m0 = torch.rand(4, 6, generator=gen) * 0.9
    g = torch.rand(4, 9, 6, generator=gen)
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[1, 5:], mask[2, 1:], mask[3, 2:] = False, False, False
    reference, excess = _definition_consistency(m0, g, mask, 0.2)
    assert float(reference) > 0
    assert float(consistency_loss(excess.sum(-1), mask, 6)) == pytest.approx(float(reference), rel=1e-5)


def test_residual_moving_average_stays_within_each_row():
    y = _t([[1, 0, 1, 1, 0], [0, 1, 1, 1, 1]])
    mask = _b([[T, T, T, T, T], [T, T, T, F_, F_]])
    # window 2: row 0 averages [1, .5, .5, 1, .5]; row 1 starts fresh: [0, .5, 1] then padding -> 0
    expected = [[0.0, -0.5, 0.5, 0.0, -0.5], [0.0, 0.5, 0.0, 0.0, 0.0]]
    np.testing.assert_allclose(residual_performance(y, mask, 2).numpy(), expected, atol=1e-7)
    y_changed = y.clone()
    y_changed[0] = 1 - y_changed[0]
    torch.testing.assert_close(residual_performance(y_changed, mask, 2)[1], residual_performance(y, mask, 2)[1])


def test_masked_pearson_hand_value_and_degenerate_cases():
    x = _t([1.0, 2.0, 3.0, 100.0]).requires_grad_(True)
    y = _t([1.0, 3.0, 2.0, -100.0])
    mask = _b([T, T, T, F_])
    # dx = [-1, 0, 1], dy = [-1, 1, 0]: cov 1, var 2 and 2 -> 0.5
    assert masked_pearson(x, y, mask).item() == pytest.approx(0.5, abs=1e-6)
    constant = masked_pearson(x, _t([2.0, 2.0, 2.0, 0.0]), mask)
    single = masked_pearson(x, y, _b([T, F_, F_, F_]))
    assert constant.item() == 0.0 and single.item() == 0.0
    (constant + single).backward()
    assert torch.isfinite(x.grad).all()


def test_alignment_correlations_use_skill_means():
    big_m, big_g = _t([[1.0, 2.0, 3.0, 9.0]]), _t([[3.0, 2.0, 1.0, 0.0]])  # skill means M_t, G_t
    y, mask = _t([[0.0, 1.0, 1.0, 0.0]]), _b([[T, T, T, F_]])
    # corr([1,2,3], [0,1,1]) = 1 / sqrt(2 * 2/3) = sqrt(3)/2
    rho_m, rho_g = alignment_correlations(big_m, big_g, y, mask, residual=False, window=5)
    assert float(rho_m) == pytest.approx(math.sqrt(3) / 2, abs=1e-6)
    assert float(rho_g) == pytest.approx(-math.sqrt(3) / 2, abs=1e-6)
    # residual, window 1: P_t = y_t - y_t = 0 -> zero variance -> 0
    rho_m, _ = alignment_correlations(big_m, big_g, y, mask, residual=True, window=1)
    assert float(rho_m) == 0.0


def test_within_student_alignment_is_the_mean_of_each_rows_correlation_a_naive_loop_gives():
    gen = torch.Generator().manual_seed(3)
    big_m, big_g = torch.rand(5, 9, generator=gen), torch.rand(5, 9, generator=gen)
    y = torch.randint(0, 2, (5, 9), generator=gen).float()
    lengths = [9, 6, 1, 4, 7]  # row 2 has one step: no correlation, left out of the mean
    mask = torch.arange(9).view(1, -1) < torch.tensor(lengths).view(-1, 1)
    y[3, :4] = 1.0  # constant responses: no correlation either
    for residual in (False, True):
        p = residual_performance(y, mask, 3).numpy() if residual else y.numpy()
        within = alignment_correlations(big_m, big_g, y, mask, residual, 3, "within_student")
        for got, x in zip(within, (big_m, big_g)):
            naive = [np.corrcoef(x[i, :n].numpy(), p[i, :n])[0, 1] for i, n in enumerate(lengths)
                     if n >= 2 and np.ptp(p[i, :n]) > 0]
            assert len(naive) == 3  # rows 0, 1 and 4
            assert float(got) == pytest.approx(np.mean(naive), abs=1e-6)
        pooled = alignment_correlations(big_m, big_g, y, mask, residual, 3)
        assert float(pooled[0]) != pytest.approx(float(within[0]), abs=1e-3)  # the seed's population differs
    with pytest.raises(ConfigError, match="alignment_population='batch': must be pooled .* or within_student"):
        alignment_correlations(big_m, big_g, y, mask, False, 3, "batch")


def test_lag_correlation_is_one_for_gains_that_predict_the_next_label():
    big_g = _t([[0, 1, 0, 1, 1, 0]])
    y = _t([[0, 0, 1, 0, 1, 1]])  # y_{t+1} = G_t for t = 0..4
    value, per_lag, count = lag_gain_correlation(big_g, y, torch.ones(1, 6, dtype=torch.bool), 1, [0.5, 0.3, 0.2])
    assert float(value) == pytest.approx(1.0, abs=1e-6) and per_lag.tolist() == pytest.approx([1.0])
    assert int(count) == 1


def _lag_reference(g, y, mask, max_lag, weights):
    """Naive loops: per row and lag, np.corrcoef over the valid pairs (>= 3 pairs, non-constant)."""
    big = g.mean(axis=-1)
    total, used, per_lag, count = 0.0, 0.0, [], 0
    for lag in range(1, max_lag + 1):
        corrs = []
        for b in range(big.shape[0]):
            ts = [t for t in range(big.shape[1] - lag) if mask[b, t] and mask[b, t + lag]]
            xs, ys = big[b, ts], y[b, [t + lag for t in ts]]
            if len(ts) >= 3 and xs.std() > 0 and ys.std() > 0:
                corrs.append(np.corrcoef(xs, ys)[0, 1])
        per_lag.append(np.mean(corrs) if corrs else np.nan)
        if corrs:
            total += weights[lag - 1] * np.mean(corrs)
            used += weights[lag - 1]
            count += len(corrs)
    return (total / used if used else 0.0), per_lag, count


def test_lag_correlation_matches_a_naive_per_row_loop():
    rng = np.random.default_rng(0)
    g = rng.random((3, 6, 3))
    y = np.array([[1, 0, 1, 1, 0, 1], [0, 0, 1, 0, 1, 1], [1, 0, 1, 0, 0, 0]], dtype=float)
    mask = np.array([[1] * 6, [1] * 5 + [0], [1] * 3 + [0] * 3], dtype=bool)  # row 2: 2 lag-1 pairs -> skipped
    want_value, want_per_lag, want_count = _lag_reference(g, y, mask, 3, [0.5, 0.3, 0.2])
    value, per_lag, count = lag_gain_correlation(_t(g.mean(-1)), _t(y), torch.from_numpy(mask), 3, [0.5, 0.3, 0.2])
    assert float(value) == pytest.approx(want_value, abs=1e-5)
    np.testing.assert_allclose(per_lag.numpy(), want_per_lag, atol=1e-5)
    assert int(count) == want_count == 5


def test_retention_loss_hand_value_and_gradient():
    rho = _t(0.2).requires_grad_(True)
    loss = retention_loss(rho, peak=0.5, delta=0.005, weight=0.14)
    loss.backward()
    assert loss.item() == pytest.approx(0.14 * 0.295) and float(rho.grad) == pytest.approx(-0.14)


@pytest.mark.parametrize("epoch0,warmup,cosine,expected", [
    (0, 4, False, 0.25), (1, 4, False, 0.5), (3, 4, False, 1.0), (10, 4, False, 1.0),
    (0, 4, True, 0.5 * (1 - math.cos(math.pi / 4))), (1, 4, True, 0.5), (5, 4, True, 1.0),
    (0, 0, False, 1.0), (0, -1, True, 1.0),
])
def test_warmup_schedule_values(epoch0, warmup, cosine, expected):
    assert warmup_scale(epoch0, warmup, cosine) == pytest.approx(expected)


# ------------------------------------------------------------------------------------ padding

def _tiny_batch_and_output(seed=0):
    """A batch with padding and reduced outputs built from random non-negative mastery and gains."""
    gen = torch.Generator().manual_seed(seed)
    B, L, C = 3, 6, 4
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 3:] = False
    c = torch.randint(0, C, (B, L), generator=gen)
    r = torch.randint(0, 2, (B, L), generator=gen)
    y = torch.randint(0, 2, (B, L), generator=gen).float()
    batch = Batch(c=c, r=r, q=c, y=y, mask=mask, score=mask, rows=torch.arange(B))
    m, g = torch.rand(B, L, C, generator=gen), torch.rand(B, L, C, generator=gen)
    steps = steps_from_full(m, g, c, c, cap_excess=torch.rand(B, L, generator=gen))
    return batch, ModelOutput(logits=torch.randn(B, L, generator=gen), mastery=None, gains=None, steps=steps)


def _all_terms(batch, out):
    st, c, r, y, mask = out.steps, batch.c, batch.r, batch.y, batch.mask
    big_g = st.gain_sum / st.num_c
    return {
        "bce": bce_loss(out.logits, y, mask),
        "mastery_performance": mastery_performance_loss(st.mastery_at_c, r, mask),
        "gain_performance": gain_performance_loss(st.gain_at_c, r, mask, 0.1),
        "sparsity": sparsity_loss(st.gain_sum, st.gain_at_c, mask, st.num_c),
        "consistency": consistency_loss(st.cap_excess, mask, st.num_c),
        "alignment": sum(alignment_correlations(st.mastery_mean, big_g, y, mask, True, 2)),
        "alignment_raw": sum(alignment_correlations(st.mastery_mean, big_g, y, mask, False, 2)),
        "lag": lag_gain_correlation(big_g, y, mask, 3, [0.5, 0.3, 0.2])[0],
    }


def test_padded_values_change_no_loss_term():
    batch, out = _tiny_batch_and_output()
    pad = ~batch.mask
    gen = torch.Generator().manual_seed(9)
    noisy_steps = out.steps._replace(**{
        k: torch.where(pad, 5 * torch.rand(pad.shape, generator=gen), v)
        for k, v in out.steps._asdict().items() if isinstance(v, torch.Tensor)})
    noisy = ModelOutput(logits=torch.where(pad, 100 * torch.randn(pad.shape, generator=gen), out.logits),
                        mastery=None, gains=None, steps=noisy_steps)
    noisy_batch = Batch(c=torch.where(pad, 3 - batch.c, batch.c), r=torch.where(pad, 1 - batch.r, batch.r),
                        q=batch.q, y=torch.where(pad, 1 - batch.y, batch.y), mask=batch.mask, score=batch.score,
                        rows=batch.rows)
    clean, dirty = _all_terms(batch, out), _all_terms(noisy_batch, noisy)
    for name in clean:
        assert float(dirty[name]) == pytest.approx(float(clean[name]), abs=1e-6), name


def test_terms_of_an_all_padding_batch_are_zero_and_keep_the_graph():
    batch, out = _tiny_batch_and_output()
    batch.mask = torch.zeros_like(batch.mask)
    steps = out.steps._replace(**{k: v.requires_grad_(True) for k, v in out.steps._asdict().items()
                                  if isinstance(v, torch.Tensor)})
    out = ModelOutput(logits=out.logits.requires_grad_(True), mastery=None, gains=None, steps=steps)
    for name, term in _all_terms(batch, out).items():
        assert term.item() == 0.0, name
        assert term.requires_grad, name


def _definition_parts(model_out, batch, params, objective):
    """Every weighted term from full (B, L, C) mastery and gains, as docs/model.md writes them (one-hot masks and all)."""
    m, g, c, r, y, mask = model_out.mastery, model_out.gains, batch.c, batch.r, batch.y, batch.mask
    w = objective.effective_constraint_weights()
    cons, _ = _definition_consistency(model_out.m0, g, mask, params["mastery_gain_scale"])
    pair = (mask[:, :-1] & mask[:, 1:]).unsqueeze(-1).expand_as(m[:, 1:])
    other = mask.unsqueeze(-1) & ~torch.nn.functional.one_hot(c, g.shape[-1]).bool()
    m_c, g_c = _at(m, c), _at(g, c)
    correct, wrong = mask & (r == 1), mask & (r == 0)
    mean = lambda x, sel: torch.where(sel, x, 0.0).sum() / sel.sum().clamp(min=1)  # noqa: E731
    terms = {
        "non_negative": mean(torch.relu(-g), mask.unsqueeze(-1).expand_as(g)),
        "monotonicity": mean(torch.relu(m[:, :-1] - m[:, 1:]), pair),
        "mastery_performance": mean(1 - m_c, correct) + mean(m_c, wrong),
        "gain_performance": torch.relu(mean(g_c, wrong) - mean(g_c, correct) + params["gain_performance_margin"]),
        "sparsity": mean(g.abs(), other),
        "consistency": cons,
    }
    parts = {k: w[k] * v for k, v in terms.items()}
    rho_m, rho_g = alignment_correlations(m.mean(-1), g.mean(-1), y, mask, params["use_residual_alignment"],
                                          params["alignment_residual_window"], params["alignment_population"])
    parts["alignment"] = -(rho_m + rho_g) * objective.effective_alignment_weight
    value, _, _ = lag_gain_correlation(g.mean(-1), y, mask, params["lag_max_lag"], [0.5, 0.3, 0.2])
    parts["lag"] = -params["lag_gain_weight"] * value.clamp(min=0)
    parts["retention"] = retention_loss(masked_pearson(m.mean(-1), y, mask), objective.peak_mastery_corr,
                                        params["retention_delta"], params["retention_weight"])
    return parts


@pytest.mark.parametrize("population", ["pooled", "within_student"])
def test_objective_of_the_reduced_pass_equals_the_full_tensor_definitions(population):
    """Every term from per-step values (no (B, L, C) tensor) equals docs/model.md on full mastery and gains."""
    params = _params(seq_len=13, d_model=16, n_heads=2, num_encoder_blocks=1, d_ff=16, dropout=0.0,
                     mastery_gain_scale=0.5, warmup_constraint_epochs=1, non_negative_loss_weight=0.3,
                     alignment_population=population)
    torch.manual_seed(0)
    model = GainAKT3Exp.from_params(params, num_c=7).eval()
    gen = torch.Generator().manual_seed(2)
    B, L = 6, 12
    c, r, q = (torch.randint(0, 7, (B, L), generator=gen), torch.randint(0, 2, (B, L), generator=gen),
               torch.randint(0, 7, (B, L), generator=gen))
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 7:], mask[4, 2:] = False, False
    batch = Batch(c=c, r=r, q=q, y=torch.randint(0, 2, (B, L), generator=gen).float() * mask, mask=mask,
                  score=mask, rows=torch.arange(B))
    objective = Objective(params)
    objective.end_epoch(0, mastery_correlation=0.3, global_mastery_corr=0.9, mean_mastery_variance=1.0,
                        alignment_share=0.0)
    objective.end_epoch(1, mastery_correlation=0.3, global_mastery_corr=0.0, mean_mastery_variance=1.0,
                        alignment_share=0.0)
    objective.begin_epoch(5)  # every term in force: lag (epoch 1 + 3), retention (a drop below the peak)
    assert objective.lag_active and objective.retention_active
    with torch.no_grad():
        full = model(c, r, q)
        m0 = torch.sigmoid(model.mastery_head(_first_h(model, c, r)))  # m_0 (B, C)
        total, parts = objective(model(c, r, q, reduced=True), batch)
    assert float((full.mastery[:, 0] - m0).abs().max()) < 1e-6
    want = _definition_parts(_Full(full.mastery, full.gains, m0), batch, params, objective)
    for name, value in want.items():
        assert float(parts[name]) == pytest.approx(float(value), abs=2e-6), name
    assert float(want["consistency"]) > 0 and float(want["retention"]) > 0  # the cap and retention are exercised
    assert float(parts["non_negative"]) == 0.0 and float(parts["monotonicity"]) == 0.0


class _Full:
    def __init__(self, mastery, gains, m0):
        self.mastery, self.gains, self.m0 = mastery, gains, m0


def _first_h(model, c, r):
    """H after the encoder at step 0 (what m_0 reads)."""
    x = c + model.num_c * r
    pos = model.pos_emb.weight[: c.shape[1]]
    h, v = model.context_emb(x) + pos, model.value_emb(x) + pos
    for block in model.blocks:
        h, v = block(h, v)
    return h[:, 0]


# ------------------------------------------------------------------------------------ Objective

def _params(**overrides):
    return dict(DEFAULTS, **overrides)


def _floats(parts):
    return {k: float(v) if v.dim() == 0 else v.tolist() for k, v in parts.items()}


def test_disabled_enhanced_constraints_leave_pure_bce():
    batch, out = _tiny_batch_and_output()
    objective = Objective(_params(enhanced_constraints=False, enable_alignment_loss=False,
                                  enable_lag_gain_loss=False, enable_retention_loss=False))
    objective.begin_epoch(20)
    total, parts = objective(out, batch)
    parts = _floats(parts)
    assert float(total) == float(bce_loss(out.logits, batch.y, batch.mask))
    assert all(parts[name] == 0.0 for name in
               ("non_negative", "monotonicity", "mastery_performance", "gain_performance", "sparsity",
                "consistency", "constraint_total", "alignment", "lag", "retention"))


def test_total_is_the_sum_of_its_logged_parts():
    batch, out = _tiny_batch_and_output()
    objective = Objective(_params(warmup_constraint_epochs=2, non_negative_loss_weight=0.5))
    objective.begin_epoch(4)  # lag active from 1-based epoch 2 + 3 = 5
    total, parts = objective(out, batch)
    parts = _floats(parts)
    assert objective.lag_active and parts["lag_count"] > 0
    terms = ("non_negative", "monotonicity", "mastery_performance", "gain_performance", "sparsity", "consistency")
    assert parts["constraint_total"] == pytest.approx(sum(parts[k] for k in terms), abs=1e-6)
    assert parts["non_negative"] == 0.0  # ReLU gains: identically zero whatever its weight
    assert float(total) == pytest.approx(
        parts["bce"] + parts["constraint_total"] + parts["alignment"] + parts["lag"] + parts["retention"], abs=1e-6)
    # w_eff = alignment_weight 0.25 x alignment warm-up (4+1)/8 x adaptive 1 (no reference correlation yet)
    assert parts["alignment"] == pytest.approx(-(parts["rho_m"] + parts["rho_g"]) * 0.25 * 5 / 8, abs=1e-6)


def test_performance_weights_follow_the_warmup_and_the_others_do_not():
    objective = Objective(_params(warmup_constraint_epochs=4))
    objective.begin_epoch(0)
    w = objective.effective_constraint_weights()
    assert w["mastery_performance"] == pytest.approx(0.8 * 0.25) and w["gain_performance"] == pytest.approx(0.2)
    assert w["monotonicity"] == 0.1 and w["sparsity"] == 0.2 and w["consistency"] == 0.3


def test_lag_starts_at_warmup_plus_three():
    objective = Objective(_params(warmup_constraint_epochs=2))
    objective.begin_epoch(3)
    assert not objective.lag_active
    objective.begin_epoch(4)
    assert objective.lag_active
    assert FIXED_CONSTANTS["lag_start_offset_epochs"] == 3


def test_retention_activates_after_a_drop_below_peak_and_trains_the_model():
    params = _params(warmup_constraint_epochs=0, enhanced_constraints=False, enable_alignment_loss=False,
                     enable_lag_gain_loss=False, seq_len=7, d_model=8, n_heads=2, num_encoder_blocks=1, d_ff=8)
    objective = Objective(params)
    shared = dict(mastery_correlation=0.3, mean_mastery_variance=1.0, alignment_share=0.0)
    objective.end_epoch(0, global_mastery_corr=0.5, **shared)
    objective.begin_epoch(1)
    assert not objective.retention_active  # at the peak
    objective.end_epoch(1, global_mastery_corr=0.1, **shared)
    objective.begin_epoch(2)
    assert objective.retention_active and objective.peak_mastery_corr == 0.5
    torch.manual_seed(0)
    model = GainAKT3Exp.from_params(params, num_c=4)
    batch, _ = _tiny_batch_and_output()
    total, parts = objective(model(batch.c, batch.r, batch.q, reduced=True), batch)
    assert float(parts["retention"]) > 0
    # with constraints and alignment off, only retention reaches the mastery head
    (grad,) = torch.autograd.grad(total, model.mastery_head.weight)
    assert grad.abs().sum() > 0


def test_consistency_rebalance_happens_once():
    objective = Objective(_params(consistency_rebalance_epoch=2, consistency_rebalance_threshold=0.1,
                                  consistency_rebalance_new_weight=0.2))
    kw = dict(global_mastery_corr=None, mean_mastery_variance=1.0, alignment_share=0.0)
    weights = [objective.end_epoch(e, mastery_correlation=0.0, **kw)["consistency_loss_weight_current"]
               for e in range(4)]
    assert weights == [0.3, 0.2, 0.2, 0.2] and objective.state_dict()["rebalanced"]


def test_variance_floor_reduces_sparsity_once_after_patience():
    objective = Objective(_params(variance_floor=1e-4, variance_floor_patience=3, variance_floor_reduce_factor=0.5))
    variances = [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    weights = [objective.end_epoch(e, mastery_correlation=0.3, global_mastery_corr=0.3, mean_mastery_variance=v,
                                   alignment_share=0.0)["sparsity_loss_weight_current"]
               for e, v in enumerate(variances)]
    assert weights == pytest.approx([0.2] * 5 + [0.1] * 5)


def test_share_cap_decay_stops_at_the_floor():
    objective = Objective(_params(alignment_weight=0.25, alignment_share_cap=0.08, alignment_share_decay_factor=0.7,
                                  alignment_warmup_epochs=0, adaptive_alignment=False))
    bases = []
    for e in range(7):
        objective.begin_epoch(e)
        objective.end_epoch(e, mastery_correlation=0.3, global_mastery_corr=0.3, mean_mastery_variance=1.0,
                            alignment_share=0.5)
        bases.append(objective.alignment_base_weight)
    # epoch 1 sets the peak (an improvement: no decay), then 0.25 * 0.7^k until the floor 0.05
    assert bases == pytest.approx([0.25, 0.175, 0.1225, 0.08575, 0.060025, 0.05, 0.05])
    objective.begin_epoch(7)
    assert objective.effective_alignment_weight == pytest.approx(0.05)


def test_adaptive_factor_is_capped_and_waits_for_the_alignment_warmup():
    objective = Objective(_params(alignment_warmup_epochs=2, alignment_min_correlation=0.05))
    kw = dict(mastery_correlation=0.0, mean_mastery_variance=1.0, alignment_share=0.0)
    objective.end_epoch(0, global_mastery_corr=0.0, **kw)
    objective.begin_epoch(1)
    assert objective.adaptive_factor == 1.0  # 1-based epoch 2 is still warm-up
    objective.begin_epoch(2)
    assert objective.adaptive_factor == pytest.approx(1.2)  # 1 + 4 * 0.05
    objective.end_epoch(2, global_mastery_corr=-0.5, **kw)
    objective.begin_epoch(3)
    assert objective.adaptive_factor == 3.0  # 1 + 4 * 0.55 = 3.2 -> cap
    assert objective.effective_alignment_weight == pytest.approx(0.25 * 3.0)


def test_weight_on_a_missing_head_is_a_config_error():
    with pytest.raises(ConfigError, match="sparsity_loss_weight"):
        Objective(_params(use_gain_head=False, non_negative_loss_weight=0.0, gain_performance_loss_weight=0.0,
                          consistency_loss_weight=0.0, enable_alignment_loss=False, enable_lag_gain_loss=False))
    objective = Objective(_params())
    batch, out = _tiny_batch_and_output()
    with pytest.raises(ConfigError, match="use_mastery_head"):
        objective(out._replace(steps=out.steps._replace(mastery_mean=None, mastery_at_c=None, mastery_at_q=None)),
                  batch)


def test_share_cap_fires_on_a_negative_share_whose_size_exceeds_the_cap():
    """Alignment is a reward: its share is negative when it works. The cap compares |share|."""
    objective = Objective(_params(alignment_weight=0.25, alignment_share_cap=0.08, alignment_share_decay_factor=0.7,
                                  alignment_warmup_epochs=0, adaptive_alignment=False))
    kw = dict(mastery_correlation=0.3, mean_mastery_variance=1.0)
    objective.end_epoch(0, global_mastery_corr=0.3, alignment_share=-0.5, **kw)  # a new peak: no decay
    assert objective.alignment_base_weight == 0.25
    objective.end_epoch(1, global_mastery_corr=0.2, alignment_share=-0.5, **kw)  # |-0.5| > 0.08, no gain
    assert objective.alignment_base_weight == pytest.approx(0.175)
    objective.end_epoch(2, global_mastery_corr=0.2, alignment_share=-0.05, **kw)  # |-0.05| <= 0.08
    assert objective.alignment_base_weight == pytest.approx(0.175)


def test_share_cap_fires_on_a_real_training_trajectory(tiny_params):
    """A tiny run whose alignment share turns negative (the reward works) with a size above a small cap: the
    base weight decays after every epoch that does not beat the peak correlation, negative shares included
    (the seed compared the signed share, which never exceeds a positive cap once alignment works)."""
    from gainakt3exp.loops.sink import MemorySink
    from gainakt3exp.loops.train import train_model

    cap = 0.001
    params = {**tiny_params, "epochs": 5, "alignment_warmup_epochs": 0, "adaptive_alignment": False,
              "alignment_share_cap": cap, "alignment_weight": 0.5}
    sink = MemorySink()
    train_model(params, sink)
    shares = [v for _, v in sink.metrics["loss_shares/alignment"]]
    weights = [v for _, v in sink.metrics["weights/effective_alignment_weight"]]  # the weight each epoch used
    peaks = [v for _, v in sink.metrics["trajectory/peak_mastery_corr"]]
    fired_on_negative = 0
    for e in range(1, len(weights)):  # epoch e's weight follows the controls at the end of epoch e - 1
        improved = e == 1 or peaks[e - 1] > peaks[e - 2]
        fires = abs(shares[e - 1]) > cap and not improved
        assert weights[e] == pytest.approx(max(0.05, weights[e - 1] * 0.7) if fires else weights[e - 1]), e
        fired_on_negative += fires and shares[e - 1] < 0
    assert fired_on_negative >= 1, (shares, peaks)


def test_objective_report_names_the_terms_that_are_identically_zero_with_the_gain_head():
    from gainakt3exp.objective.report import objective_report

    report = objective_report(_params(non_negative_loss_weight=0.2))
    assert report["monotonicity"]["status"] == "identically zero" and "never decreases" in report["monotonicity"]["why"]
    assert report["non_negative"]["status"] == "identically zero" and "ReLU" in report["non_negative"]["why"]
    assert report["consistency"]["status"] == "in force" and "cap" in report["consistency"]["why"]
    no_gain = objective_report(_params(use_gain_head=False, non_negative_loss_weight=0.0,
                                       gain_performance_loss_weight=0.0, sparsity_loss_weight=0.0,
                                       consistency_loss_weight=0.0, enable_alignment_loss=False,
                                       enable_lag_gain_loss=False))
    assert no_gain["monotonicity"]["status"] == "in force"  # the per-step mastery head can decrease
    short = objective_report(_params(epochs=5, warmup_constraint_epochs=8))
    assert short["lag"]["status"] == "never active" and "epoch 11" in short["lag"]["why"]
