"""The terms of the training objective (docs/model.md gives each formula): one pure function per term, with its
formula and mask, and the fixed constants of the objective. objective/controller.py weights and schedules them:

    objective = Objective(params)
    for epoch0 in range(epochs):
        objective.begin_epoch(epoch0)
        for batch in train_loader:
            total, parts = objective(model(batch.c, batch.r, batch.q, reduced=True), batch)  # parts: 0-d tensors
        state = objective.end_epoch(epoch0, mastery_correlation=..., global_mastery_corr=...,
                                    mean_mastery_variance=..., alignment_share=...)

Every term is masked by mu = batch.mask (B, L) bool, True = a real step: padding never counts. A term with no
valid element is a zero tensor that still belongs to the autograd graph. Shapes: z, y (B, L); the terms read per-step
values of mastery m and gains g (cumulative.StepValues, (B, L) each: skill sums and the values at c_t), so no
(B, L, C) tensor is needed; c, r (B, L) long = current concept c_t and response r_t; y_t = r_{t+1}.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from gainakt3exp.config.choices import ALIGNMENT_POPULATIONS, CONSTRAINT_HEADS, choice_problem
from gainakt3exp.errors import ConfigError

#: Every fixed number of the objective that is not a run parameter (the lead records this in each run).
FIXED_CONSTANTS = {
    "alignment_weight_floor": 0.05,  # share-cap decay never takes the alignment weight below this
    "adaptive_alignment_max": 3.0,  # adaptive factor = min(max, 1 + slope * (min_corr - ref))
    "adaptive_alignment_slope": 4.0,
    "lag_start_offset_epochs": 3,  # lag loss from 1-based epoch warmup_constraint_epochs + this
    "lag_min_pairs": 3,  # a row needs this many (G_t, y_{t+l}) pairs for its lag correlation
    "pearson_variance_eps": 1e-12,  # sum of squared deviations at or below this = zero variance (corr := 0)
    "alignment_share_cap_on": "magnitude",  # the share-cap decay compares |alignment share|
    "consistency_form": "telescoped",  # consistency from the cap excess at each row's last step (losses.consistency_loss)
}

CONSTRAINTS = tuple(CONSTRAINT_HEADS)  # the constraint terms, in the order they are reported


# ----------------------------------------------------------------------------------------------- helpers

def _masked_mean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_{w} x / max(1, |w|): mean of x over the True entries of w (0 when none, still in the graph)."""
    x = x.float()
    return torch.where(w, x, torch.zeros_like(x)).sum() / w.sum().clamp(min=1)


def _pearson(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, dim) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted Pearson over `dim` with bool weights w; returns (corr, defined). corr = 0 where undefined
    (fewer than 2 elements or a variance <= pearson_variance_eps). Gradients are finite everywhere."""
    wf = w.float()
    x, y = x.float() * wf, y.float() * wf
    n = wf.sum(dim=dim, keepdim=True)
    n_safe = n.clamp(min=1)
    dx = (x - x.sum(dim=dim, keepdim=True) / n_safe) * wf
    dy = (y - y.sum(dim=dim, keepdim=True) / n_safe) * wf
    cov = (dx * dy).sum(dim=dim)
    vx, vy = (dx * dx).sum(dim=dim), (dy * dy).sum(dim=dim)
    eps = FIXED_CONSTANTS["pearson_variance_eps"]
    defined = (n.squeeze(dim) >= 2) & (vx > eps) & (vy > eps)
    denom = torch.sqrt(torch.where(defined, vx * vy, torch.ones_like(vx)))
    return torch.where(defined, cov / denom, torch.zeros_like(cov)), defined


# ----------------------------------------------------------------------------------------------- terms
# The terms read per-step values (cumulative.StepValues, (B, L) each): the model's reduced pass gives them without
# (B, L, C) mastery or gain tensors. Each docstring gives the term's definition over skills and how the per-step
# values compute it exactly.

def bce_loss(z: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_bce = mean_{t: mu_t} BCEWithLogits(z_t, y_t), y_t = r_{t+1}. Mask: mu_t."""
    per_step = F.binary_cross_entropy_with_logits(z.float(), y.float(), reduction="none")
    return _masked_mean(per_step, mask)


def monotonicity_loss(m: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean relu(m_t[k] - m_{t+1}[k]) over pairs (t, t+1) with mu_t & mu_{t+1}, all skills k (the per-step mastery
    head; cumulative mastery never decreases, so the term is identically 0 there and not computed)."""
    pair = (mask[:, :-1] & mask[:, 1:]).unsqueeze(-1).expand_as(m[:, 1:])
    return _masked_mean(F.relu(m[:, :-1] - m[:, 1:]), pair)


def mastery_performance_loss(m_c: torch.Tensor, r: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean_{mu_t, r_t=1} (1 - m_t[c_t]) + mean_{mu_t, r_t=0} m_t[c_t]; an empty set contributes 0.
    m_c = m_t[c_t] (B, L)."""
    return _masked_mean(1.0 - m_c, mask & (r == 1)) + _masked_mean(m_c, mask & (r == 0))


def mastery_prediction_loss(m_q: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mastery_performance_target next: mean over mu_t of BCE(m_t[c_{t+1}], r_{t+1}), the mastery of the concept
    about to be answered read as P(correct) of that answer. m_q = m_t[q_t] (B, L) in [0, 1], y (B, L)."""
    eps = 1e-6
    m = m_q.float().clamp(eps, 1.0 - eps)
    return _masked_mean(-(y * torch.log(m) + (1.0 - y) * torch.log1p(-m)), mask)


def gain_performance_loss(g_c: torch.Tensor, r: torch.Tensor, mask: torch.Tensor, margin: float) -> torch.Tensor:
    """relu(mean_{mu_t, r_t=0} g_t[c_t] - mean_{mu_t, r_t=1} g_t[c_t] + margin); 0 unless both sets are non-empty.
    g_c = g_t[c_t] (B, L)."""
    correct, wrong = mask & (r == 1), mask & (r == 0)
    value = F.relu(_masked_mean(g_c, wrong) - _masked_mean(g_c, correct) + margin)
    both = correct.any() & wrong.any()
    return torch.where(both, value, value * 0.0)


def sparsity_loss(g_sum: torch.Tensor, g_c: torch.Tensor, mask: torch.Tensor, num_c: int) -> torch.Tensor:
    """mean |g_t[k]| over (t, k) with mu_t and k != c_t (skills not practised at step t).

    Gains are ReLU outputs, so sum_{k != c_t} |g_t[k]| = g_sum_t - g_t[c_t] with g_sum_t = sum_k g_t[k]; the mean
    divides by |mu| (C - 1) (0 when C = 1). No (B, L, C) mask: the practised skill is subtracted, not masked out.
    """
    other = torch.where(mask, g_sum.float() - g_c.float(), torch.zeros_like(g_sum, dtype=torch.float32))
    return other.sum() / (mask.sum() * (num_c - 1)).clamp(min=1)


def consistency_loss(cap_excess: torch.Tensor, mask: torch.Tensor, num_c: int) -> torch.Tensor:
    """mean |(m_t[k] - m_{t-1}[k]) - scale * g_t[k]| over t >= 1 with mu_t & mu_{t-1}, all skills k.

    With cumulative mastery m_t = min(1, u_t), u_t = m_0 + scale * sum_{1<=tau<=t} g_tau, a cell is
    relu(u_t - 1) - relu(u_{t-1} - 1): 0 while uncapped, the overshoot when the cap is reached, scale * g_t after.
    Valid steps are a prefix of each row (padding is trailing), so a row's cells telescope to
    sum_k relu(u_last[k] - 1) = cap_excess at its last valid step (relu(u_0 - 1) = 0 since m_0 <= 1):
    value = sum_rows cap_excess[last] / (pairs x C). The (B, L, C) form equals it up to float rounding, and
    its rounding noise (~1e-8 per cell where uncapped) no longer feeds sign-noise gradients.
    """
    n = mask.sum(1)  # valid steps per row (B,)
    last = (n - 1).clamp(min=0).unsqueeze(1)
    per_row = torch.where(n >= 2, cap_excess.float().gather(1, last).squeeze(1), torch.zeros_like(n, dtype=torch.float32))
    return per_row.sum() / ((n - 1).clamp(min=0).sum() * num_c).clamp(min=1)


def residual_performance(y: torch.Tensor, mask: torch.Tensor, window: int) -> torch.Tensor:
    """P_t = y_t - mean(y_tau : mu_tau, t - window < tau <= t), per row (never across rows); 0 where not mu_t.

    Cumulative sums along each row; since padding is trailing (the Batch contract), the last `window`
    positions of a valid step are its last `window` valid steps.
    """
    if window < 1:
        raise ConfigError(f"alignment_residual_window={window!r} must be >= 1; fix: pass a window of 1 or more steps")
    w = mask.float()
    yw = y.float() * w
    zeros = torch.zeros_like(yw[:, :1])
    cs_y = torch.cat([zeros, yw.cumsum(dim=1)], dim=1)  # (B, L+1), cs[:, t+1] = sum_{tau<=t}
    cs_n = torch.cat([zeros, w.cumsum(dim=1)], dim=1)
    hi = torch.arange(1, y.shape[1] + 1, device=y.device)
    lo = (hi - window).clamp(min=0)
    total = cs_y[:, hi] - cs_y[:, lo]
    count = (cs_n[:, hi] - cs_n[:, lo]).clamp(min=1)
    return torch.where(mask, y.float() - total / count, torch.zeros_like(yw))


def masked_pearson(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Differentiable Pearson corr(x, y) over all elements where mask (flattened); 0 when fewer than 2
    elements or a variance is zero."""
    corr, _ = _pearson(x.reshape(-1), y.reshape(-1), mask.reshape(-1), dim=0)
    return corr


def alignment_correlations(
    big_m: Optional[torch.Tensor], big_g: Optional[torch.Tensor], y: torch.Tensor, mask: torch.Tensor,
    residual: bool, window: int, population: str = "pooled",
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """rho_M = corr(M, P), rho_G = corr(G, P) over mu_t, with M_t = mean_k m_t[k], G_t = mean_k g_t[k] (B, L)
    and P = residual_performance(y) if residual else y. A head that is off (None) gives None.

    population pooled (the seed): one correlation over every valid step of the batch. within_student: the
    correlation of each row over its valid steps, averaged over the rows where it is defined (0 when none is), the
    definition of trajectory/mastery_correlation; a student's level then neither helps nor hurts."""
    if population not in ALIGNMENT_POPULATIONS:
        raise ConfigError(choice_problem("alignment_population", population))
    p = residual_performance(y, mask, window) if residual else y
    present = [x for x in (big_m, big_g) if x is not None]
    if not present:
        return None, None
    k = len(present)
    if population == "within_student":  # (K, B, L) -> per row (K, B) -> mean over the defined rows (K,)
        rows, defined = _pearson(torch.stack(present), p.unsqueeze(0).expand(k, -1, -1),
                                 mask.unsqueeze(0).expand(k, -1, -1), dim=2)
        corr = torch.where(defined, rows, torch.zeros_like(rows)).sum(1) / defined.sum(1).clamp(min=1)
    else:  # both correlations in one pass over the batch: rows (M, G) against the same P and mask
        corr, _ = _pearson(torch.stack([x.reshape(-1) for x in present]), p.reshape(1, -1).expand(k, -1),
                           mask.reshape(1, -1).expand(k, -1), dim=1)
    got = iter(corr)
    return (next(got) if big_m is not None else None), (next(got) if big_g is not None else None)


def lag_gain_correlation(
    big_g: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, max_lag: int, lag_weights: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted mean per-row correlation between gains and correctness l steps later.

    G_t = mean_k g_t[k] (big_g, (B, L)); for l = 1..max_lag, per row: rho_l = Pearson(G_t, y_{t+l})
    (y_{t+l} = r_{t+l+1}) over t with mu_t & mu_{t+l}; a row counts if it has >= lag_min_pairs pairs and non-zero
    variance on both sides. value = sum_l w_l * mean_rows(rho_l) / sum_{l with a counted row} w_l (0 if no lag has
    a counted row). Returns tensors, so no value leaves the device: (value, per-lag mean correlations (max_lag,)
    with nan where no row counted, number of counted (row, lag) pairs).
    """
    if max_lag > len(lag_weights):
        raise ConfigError(f"lag_max_lag={max_lag} but only {len(lag_weights)} lag weights; fix: lag_max_lag <= {len(lag_weights)}")
    l = big_g.shape[1]
    if max_lag == 0:
        zero = big_g.sum() * 0.0
        return zero, big_g.new_zeros(0), torch.zeros((), dtype=torch.long, device=big_g.device)
    # every lag at once: (K, B, L) pairs (t, t + l), shifted left and padded with invalid pairs
    shifted = [(F.pad(mask[:, lag:], (0, lag), value=False)[:, :l], F.pad(y[:, lag:], (0, lag))[:, :l])
               for lag in range(1, max_lag + 1)]
    pair = torch.stack([mask & m for m, _ in shifted])  # mu_t & mu_{t+l}  (K, B, L)
    later = torch.stack([v for _, v in shifted])  # y_{t+l}  (K, B, L)
    corr, defined = _pearson(big_g.unsqueeze(0).expand_as(later), later, pair, dim=2)  # (K, B)
    rows = defined & (pair.sum(dim=2) >= FIXED_CONSTANTS["lag_min_pairs"])
    n_rows = rows.sum(dim=1)  # (K,)
    mean_corr = torch.where(rows, corr, torch.zeros_like(corr)).sum(dim=1) / n_rows.clamp(min=1)  # 0 if none
    counted = n_rows > 0
    weights = torch.tensor([float(w) for w in lag_weights[:max_lag]], device=big_g.device)
    weighted, used_weight = (weights * mean_corr).sum(), (weights * counted).sum()
    value = torch.where(used_weight > 0, weighted / used_weight.clamp(min=1e-30), weighted * 0.0)
    per_lag = torch.where(counted, mean_corr.detach(), torch.full_like(mean_corr, float("nan")))
    return value, per_lag, n_rows.sum()


def retention_loss(rho_m: torch.Tensor, peak: float, delta: float, weight: float) -> torch.Tensor:
    """L_ret = weight * relu(peak - rho_M - delta); rho_M is the batch's (differentiable) mastery correlation."""
    return weight * F.relu(peak - rho_m - delta)


def warmup_scale(epoch0: int, warmup_epochs: int, cosine: bool) -> float:
    """s_e = min(1, (e+1)/W) (linear) or 0.5 * (1 - cos(pi * min(1, (e+1)/W))) (cosine); W <= 0 -> 1.
    e = epoch0 is 0-based."""
    if warmup_epochs <= 0:
        return 1.0
    frac = min(1.0, (epoch0 + 1) / warmup_epochs)
    return 0.5 * (1.0 - math.cos(math.pi * frac)) if cosine else frac
