"""The training objective (SPEC §5): one pure function per term, and `Objective`, which weights and schedules them.

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

from gainakt3exp.errors import ConfigError
from gainakt3exp.params import ALIGNMENT_POPULATIONS

#: Every fixed number of the objective that is not a run parameter (the lead records this in each run).
FIXED_CONSTANTS = {
    "alignment_weight_floor": 0.05,  # share-cap decay never takes the alignment weight below this
    "adaptive_alignment_max": 3.0,  # adaptive factor = min(max, 1 + slope * (min_corr - ref))
    "adaptive_alignment_slope": 4.0,
    "lag_start_offset_epochs": 3,  # lag loss from 1-based epoch warmup_constraint_epochs + this
    "lag_min_pairs": 3,  # a row needs this many (G_t, y_{t+l}) pairs for its lag correlation
    "pearson_variance_eps": 1e-12,  # sum of squared deviations at or below this = zero variance (corr := 0)
    "alignment_share_cap_on": "magnitude",  # the share-cap decay compares |alignment share| (SPEC §5)
    "consistency_form": "telescoped",  # consistency from the cap excess at each row's last step (losses.consistency_loss)
}

CONSTRAINTS = ("non_negative", "monotonicity", "mastery_performance", "gain_performance", "sparsity", "consistency")
#: Which heads each constraint reads (a weight > 0 without its head is a ConfigError).
_CONSTRAINT_HEADS = {
    "non_negative": ("gains",),
    "monotonicity": ("mastery",),
    "mastery_performance": ("mastery",),
    "gain_performance": ("gains",),
    "sparsity": ("gains",),
    "consistency": ("mastery", "gains"),
}
_HEAD_FLAG = {"mastery": "use_mastery_head", "gains": "use_gain_head"}

OBJECTIVE_PARAM_KEYS = (
    "use_mastery_head", "use_gain_head", "enhanced_constraints",
    *(f"{name}_loss_weight" for name in CONSTRAINTS),
    "mastery_gain_scale", "gain_performance_margin", "warmup_constraint_epochs", "enable_cosine_perf_schedule",
    "enable_alignment_loss", "alignment_weight", "alignment_warmup_epochs", "adaptive_alignment",
    "alignment_min_correlation", "alignment_share_cap", "alignment_share_decay_factor",
    "use_residual_alignment", "alignment_residual_window", "alignment_population",
    "enable_retention_loss", "retention_delta", "retention_weight",
    "enable_lag_gain_loss", "lag_gain_weight", "lag_max_lag", "lag_l1_weight", "lag_l2_weight", "lag_l3_weight",
    "consistency_rebalance_epoch", "consistency_rebalance_threshold", "consistency_rebalance_new_weight",
    "variance_floor", "variance_floor_patience", "variance_floor_reduce_factor", "gain_scope",
)


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
        raise ConfigError(f"alignment_population={population!r}: must be one of {', '.join(ALIGNMENT_POPULATIONS)}")
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
        raise ConfigError(f"lag_max_lag={max_lag} but only {len(lag_weights)} lag weights; fix: lag_max_lag <= 3")
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


# ----------------------------------------------------------------------------------------------- the report

def objective_report(params: dict) -> dict[str, dict[str, str]]:
    """Which terms of the objective act in this configuration, and why: term -> {"status", "why"}.

    status: "in force", "off" (switched off or weight 0), "identically zero" (its value is 0 by construction of
    the model, whatever its weight: it is not computed), or "never active" (scheduled after the last epoch).
    Printed at the start of every run, tagged (gakt.objective.<term>) and recorded in config.json.
    """
    p = params
    gains, cumulative = p["use_gain_head"], p["use_gain_head"] and p["use_mastery_head"]
    practised = gains and p["gain_scope"] == "practised_skill"
    warm = p["warmup_constraint_epochs"]
    schedule = "cosine" if p["enable_cosine_perf_schedule"] else "linear"
    out = {"bce": {"status": "in force", "why": "BCE of the next response, every valid step"}}
    why_on = {
        "non_negative": "penalty on negative gains",
        "monotonicity": "penalty on mastery decreasing (per-step mastery head)",
        "mastery_performance": f"weight warmed up over {warm} epoch(s) ({schedule})",
        "gain_performance": f"weight warmed up over {warm} epoch(s) ({schedule})",
        "sparsity": "L1 on gains of the skills not practised at the step",
        "consistency": "non-zero only where mastery reaches its cap at 1 (elsewhere m_t - m_{t-1} = scale * g_t by "
                       "construction)",
    }
    for name in CONSTRAINTS:
        weight = p[f"{name}_loss_weight"]
        if not p["enhanced_constraints"]:
            out[name] = {"status": "off", "why": "enhanced_constraints false forces the constraint weights to 0"}
        elif weight <= 0:
            out[name] = {"status": "off", "why": f"{name}_loss_weight 0"}
        elif name == "non_negative" and gains:
            out[name] = {"status": "identically zero", "why": "gains are ReLU outputs: relu(-g) = 0 everywhere"}
        elif name == "sparsity" and practised:
            out[name] = {"status": "identically zero",
                         "why": "gain_scope practised_skill: skills not practised at a step get no gain"}
        elif name == "monotonicity" and cumulative:
            out[name] = {"status": "identically zero",
                         "why": "with the gain head, mastery is a clamped cumulative sum of non-negative gains: it "
                                "never decreases"}
        else:
            out[name] = {"status": "in force", "why": why_on[name]}
    if not p["enable_alignment_loss"] or p["alignment_weight"] <= 0:
        out["alignment"] = {"status": "off", "why": "enable_alignment_loss false or alignment_weight 0"}
    else:
        adaptive = " and adaptive (up to x3 while the mastery correlation is below target)" \
            if p["adaptive_alignment"] else ""
        out["alignment"] = {"status": "in force",
                            "why": f"reward, warmed up over {p['alignment_warmup_epochs']} epoch(s){adaptive}; "
                                   "its weight decays while |its loss share| exceeds alignment_share_cap"}
    lag_start = warm + FIXED_CONSTANTS["lag_start_offset_epochs"]
    if not p["enable_lag_gain_loss"] or p["lag_gain_weight"] <= 0 or p["lag_max_lag"] == 0:
        out["lag"] = {"status": "off", "why": "enable_lag_gain_loss false, lag_gain_weight 0 or lag_max_lag 0"}
    elif lag_start > p["epochs"]:
        out["lag"] = {"status": "never active", "why": f"starts at epoch {lag_start} "
                                                       f"(warmup_constraint_epochs + 3) but the run has {p['epochs']}"}
    else:
        out["lag"] = {"status": "in force", "why": f"reward, from epoch {lag_start}"}
    if not p["enable_retention_loss"] or p["retention_weight"] <= 0:
        out["retention"] = {"status": "off", "why": "enable_retention_loss false or retention_weight 0"}
    elif max(warm + 1, 3) > p["epochs"]:  # after the warm-up, and a peak and a drop take two epochs before
        out["retention"] = {"status": "never active", "why": f"can start at epoch {max(warm + 1, 3)} at the "
                                                             f"earliest but the run has {p['epochs']}"}
    else:
        out["retention"] = {"status": "in force", "why": "conditional: after the warm-up, in epochs that follow a drop "
                                                         "of the global mastery correlation below its peak"}
    return out


def format_objective_report(report: dict) -> str:
    """The report as lines for the run's log."""
    width = max(len(k) for k in report)
    return "objective:\n" + "\n".join(f"  {k:<{width}}  {v['status']:<16}  {v['why']}" for k, v in report.items())


# ----------------------------------------------------------------------------------------------- objective

class Objective:
    """Weights, schedules and epoch-level controls of the objective. All state is in `state_dict()`."""

    def __init__(self, params: dict):
        missing = [k for k in OBJECTIVE_PARAM_KEYS if k not in params]
        if missing:
            raise ConfigError(
                f"objective parameters missing: {', '.join(missing)}; "
                "fix: start from configs/parameter_default.json, which defines every key"
            )
        self.params = {k: params[k] for k in OBJECTIVE_PARAM_KEYS}
        p = self.params
        # Constraint weights actually in force (enhanced_constraints false -> all 0); changed by end_epoch.
        self.weights = {
            name: float(p[f"{name}_loss_weight"]) if p["enhanced_constraints"] else 0.0 for name in CONSTRAINTS
        }
        self._check_heads({"mastery": p["use_mastery_head"], "gains": p["use_gain_head"]})
        self.alignment_base_weight = float(p["alignment_weight"])
        self.peak_mastery_corr: Optional[float] = None
        self.last_reference_corr: Optional[float] = None  # global corr of the last epoch (or per-student if off)
        self.rebalanced = False
        self.variance_floor_count = 0
        self.variance_floor_applied = False
        self.begin_epoch(0)

    # -- configuration checks
    def _needed_heads(self) -> dict[str, list[str]]:
        """head -> names of the terms in force that read it."""
        p, need = self.params, {"mastery": [], "gains": []}
        for name in CONSTRAINTS:
            if self.weights[name] > 0:
                for head in _CONSTRAINT_HEADS[name]:
                    need[head].append(f"{name}_loss_weight")
        if p["enable_alignment_loss"] and p["alignment_weight"] > 0:
            need["mastery"].append("enable_alignment_loss")
            need["gains"].append("enable_alignment_loss")
        if p["enable_lag_gain_loss"] and p["lag_gain_weight"] > 0:
            need["gains"].append("enable_lag_gain_loss")
        if p["enable_retention_loss"] and p["retention_weight"] > 0:
            need["mastery"].append("enable_retention_loss")
        return need

    def _check_heads(self, present: dict[str, bool]) -> None:
        problems = [
            f"{key} needs {_HEAD_FLAG[head]}=true (fix: set {key} to 0/false or {_HEAD_FLAG[head]} to true)"
            for head, keys in self._needed_heads().items() if not present[head] for key in keys
        ]
        if problems:
            raise ConfigError("loss terms need a head that is off: " + "; ".join(problems))

    # -- epoch schedule
    def begin_epoch(self, epoch0: int) -> None:
        """Set the schedules of 0-based epoch `epoch0` from the parameters and the last end_epoch."""
        p, epoch = self.params, epoch0 + 1
        self.epoch0 = epoch0
        self.warmup_scale = warmup_scale(epoch0, p["warmup_constraint_epochs"], p["enable_cosine_perf_schedule"])
        self.alignment_warmup = warmup_scale(epoch0, p["alignment_warmup_epochs"], False)
        ref, min_corr = self.last_reference_corr, p["alignment_min_correlation"]
        self.adaptive_factor = 1.0
        if p["adaptive_alignment"] and epoch > p["alignment_warmup_epochs"] and ref is not None and ref < min_corr:
            self.adaptive_factor = min(
                FIXED_CONSTANTS["adaptive_alignment_max"],
                1.0 + FIXED_CONSTANTS["adaptive_alignment_slope"] * (min_corr - ref),
            )
        self.effective_alignment_weight = (
            self.alignment_base_weight * self.alignment_warmup * self.adaptive_factor
            if p["enable_alignment_loss"] else 0.0
        )
        self.lag_active = bool(
            p["enable_lag_gain_loss"]
            and epoch >= p["warmup_constraint_epochs"] + FIXED_CONSTANTS["lag_start_offset_epochs"]
        )
        self.retention_active = bool(
            p["enable_retention_loss"] and epoch > p["warmup_constraint_epochs"]
            and ref is not None and self.peak_mastery_corr is not None
            and ref < self.peak_mastery_corr - p["retention_delta"]
        )

    def effective_constraint_weights(self) -> dict[str, float]:
        """Constraint weights of this epoch: the performance terms scaled by the warm-up s_e."""
        w = dict(self.weights)
        for name in ("mastery_performance", "gain_performance"):
            w[name] *= self.warmup_scale
        return w

    # -- per batch
    def __call__(self, out, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """total = L_bce + sum_k w_k L_k + L_align + L_lag + L_ret for the model's reduced outputs
        (model(c, r, q, reduced=True): out.steps per-step values, out.mastery only for the per-step mastery head).

        Returns (total, parts): every part a detached 0-d tensor on the model's device (per_lag: (lag_max_lag,)),
        so the training loop reads them once per epoch, never per batch. Terms that are identically zero by
        construction (non_negative: gains are ReLU outputs; monotonicity of cumulative mastery) are 0 without work.
        """
        p = self.params
        st = out.steps
        has_m = st is not None and st.mastery_at_c is not None
        has_g = st is not None and st.gain_at_c is not None
        self._check_heads({"mastery": has_m, "gains": has_g})
        mask, r, y = batch.mask, batch.r, batch.y
        bce = bce_loss(out.logits, y, mask)
        zero = bce.new_zeros(())
        big_m = st.mastery_mean if has_m else None  # M_t (B, L)
        big_g = st.gain_sum / st.num_c if has_g else None  # G_t (B, L)
        terms = {
            "non_negative": lambda: zero,  # relu(-g) = 0: gains are ReLU outputs
            "monotonicity": lambda: zero if has_g else monotonicity_loss(out.mastery, mask),  # cumsum of g >= 0
            "mastery_performance": lambda: mastery_performance_loss(st.mastery_at_c, r, mask),
            "gain_performance": lambda: gain_performance_loss(st.gain_at_c, r, mask, p["gain_performance_margin"]),
            "sparsity": lambda: zero if self.params["gain_scope"] == "practised_skill"  # other skills' gains are 0
            else sparsity_loss(st.gain_sum, st.gain_at_c, mask, st.num_c),
            "consistency": lambda: consistency_loss(st.cap_excess, mask, st.num_c),
        }
        parts: dict[str, torch.Tensor] = {"bce": bce.detach()}
        constraint_total = zero
        for name, weight in self.effective_constraint_weights().items():
            term = weight * terms[name]() if weight > 0 else zero
            parts[name] = term.detach()
            constraint_total = constraint_total + term
        parts["constraint_total"] = constraint_total.detach()

        align = zero
        how = (p["use_residual_alignment"], p["alignment_residual_window"], p["alignment_population"])
        if p["enable_alignment_loss"] and has_m and has_g:
            rho_m, rho_g = alignment_correlations(big_m, big_g, y, mask, *how)
            align = -(rho_m + rho_g) * self.effective_alignment_weight
        else:  # logged only (SPEC §6 alignment_corr_*), no gradient needed
            with torch.no_grad():
                rho_m, rho_g = alignment_correlations(big_m, big_g, y, mask, *how)
        nan = torch.full((), float("nan"), device=bce.device)
        parts["alignment"] = align.detach()
        parts["rho_m"] = rho_m.detach() if rho_m is not None else nan
        parts["rho_g"] = rho_g.detach() if rho_g is not None else nan

        lag = zero
        parts["lag_value"], parts["lag_count"] = zero, zero
        if self.lag_active and has_g:
            weights = [p["lag_l1_weight"], p["lag_l2_weight"], p["lag_l3_weight"]]
            value, per_lag, count = lag_gain_correlation(big_g, y, mask, p["lag_max_lag"], weights)
            lag = -p["lag_gain_weight"] * value.clamp(min=0)
            parts["lag_value"], parts["lag_count"], parts["per_lag"] = value.detach(), count.float(), per_lag
        parts["lag"] = lag.detach()

        ret = zero
        if self.retention_active and has_m:
            rho_m_raw = masked_pearson(big_m, y, mask)  # raw y, not the residual
            ret = retention_loss(rho_m_raw, self.peak_mastery_corr, p["retention_delta"], p["retention_weight"])
        parts["retention"] = ret.detach()

        total = bce + constraint_total + align + lag + ret
        parts["total"] = total.detach()
        return total, parts

    # -- per epoch
    def end_epoch(
        self, epoch0: int, *, mastery_correlation: float, global_mastery_corr: Optional[float],
        mean_mastery_variance: float, alignment_share: float,
    ) -> dict:
        """Epoch controls after validation of 0-based epoch `epoch0`; returns the state to log (floats).

        reference corr = global_mastery_corr, or mastery_correlation when the global pass is off (None).
        - peak_mastery_corr = max over epochs of the reference corr.
        - consistency rebalance (once per run): 1-based epoch >= consistency_rebalance_epoch and
          mastery_correlation < consistency_rebalance_threshold -> consistency weight := new weight
          (only while the consistency term is in force, i.e. its weight > 0).
        - share-cap decay: enable_alignment_loss, |alignment_share| > alignment_share_cap (its magnitude: alignment
          is a reward, so its share is negative whenever it works; the seed compared the signed share and the
          decay never fired) and the reference corr
          did not beat the previous peak -> alignment base weight *= decay factor, not below the floor (0.05,
          or the starting weight if that is lower).
        - variance floor: after variance_floor_patience consecutive epochs with mean_mastery_variance <
          variance_floor, sparsity weight *= variance_floor_reduce_factor (once per run).
        Epoch-scoped values (warmup_scale, effective_alignment_weight, adaptive_factor, lag/retention_active)
        are those this epoch used; weights and peak are after this epoch's updates.
        """
        p = self.params
        ref = global_mastery_corr if global_mastery_corr is not None else mastery_correlation
        ref = None if ref is None or math.isnan(ref) else float(ref)
        previous_peak = self.peak_mastery_corr
        improved = ref is not None and (previous_peak is None or ref > previous_peak)
        if improved:
            self.peak_mastery_corr = ref
        self.last_reference_corr = ref

        if (not self.rebalanced and epoch0 + 1 >= p["consistency_rebalance_epoch"]
                and mastery_correlation < p["consistency_rebalance_threshold"] and self.weights["consistency"] > 0):
            self.weights["consistency"] = float(p["consistency_rebalance_new_weight"])
            self.rebalanced = True

        if p["enable_alignment_loss"] and abs(alignment_share) > p["alignment_share_cap"] and not improved:
            floor = min(FIXED_CONSTANTS["alignment_weight_floor"], float(p["alignment_weight"]))
            self.alignment_base_weight = max(floor, self.alignment_base_weight * p["alignment_share_decay_factor"])

        self.variance_floor_count = self.variance_floor_count + 1 if mean_mastery_variance < p["variance_floor"] else 0
        if not self.variance_floor_applied and self.variance_floor_count >= p["variance_floor_patience"]:
            self.weights["sparsity"] *= float(p["variance_floor_reduce_factor"])
            self.variance_floor_applied = True

        return {
            "warmup_scale": self.warmup_scale,
            "effective_alignment_weight": self.effective_alignment_weight,
            "peak_mastery_corr": self.peak_mastery_corr if self.peak_mastery_corr is not None else float("nan"),
            "consistency_loss_weight_current": self.weights["consistency"],
            "sparsity_loss_weight_current": self.weights["sparsity"],
            "retention_active": float(self.retention_active),
            "lag_active": float(self.lag_active),
            "adaptive_factor": self.adaptive_factor,
        }

    def state_dict(self) -> dict:
        """Everything the objective holds besides its parameters (for logging and checkpoints)."""
        return {
            "epoch0": self.epoch0,
            "weights": dict(self.weights),
            "alignment_base_weight": self.alignment_base_weight,
            "warmup_scale": self.warmup_scale,
            "alignment_warmup": self.alignment_warmup,
            "adaptive_factor": self.adaptive_factor,
            "effective_alignment_weight": self.effective_alignment_weight,
            "lag_active": self.lag_active,
            "retention_active": self.retention_active,
            "peak_mastery_corr": self.peak_mastery_corr,
            "last_reference_corr": self.last_reference_corr,
            "rebalanced": self.rebalanced,
            "variance_floor_count": self.variance_floor_count,
            "variance_floor_applied": self.variance_floor_applied,
        }
