"""`Objective`: weights and schedules the terms of objective/terms.py over epochs (warm-up, cosine performance
schedule, adaptive alignment and its share cap, consistency rebalance, variance floor, lag and retention terms) and
returns the total loss with every part for the epoch's trajectory."""
from __future__ import annotations

import math
from typing import Optional

import torch

from gainakt3exp.config.choices import LAG_WEIGHT_KEYS, head_problems, rule_problems
from gainakt3exp.errors import ConfigError
from gainakt3exp.objective.report import OBJECTIVE_PARAM_KEYS
from gainakt3exp.objective.terms import (
    CONSTRAINTS,
    FIXED_CONSTANTS,
    alignment_correlations,
    bce_loss,
    consistency_loss,
    gain_performance_loss,
    lag_gain_correlation,
    masked_pearson,
    mastery_performance_loss,
    mastery_prediction_loss,
    monotonicity_loss,
    retention_loss,
    sparsity_loss,
    warmup_scale,
)

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
        problems = rule_problems(p)  # choices, the rules between them, and terms whose head is off
        if problems:
            raise ConfigError("invalid objective configuration: " + "; ".join(problems))
        self.alignment_base_weight = float(p["alignment_weight"])
        self.peak_mastery_corr: Optional[float] = None
        self.last_reference_corr: Optional[float] = None  # global corr of the last epoch (or per-student if off)
        self.rebalanced = False
        self.variance_floor_count = 0
        self.variance_floor_applied = False
        self.begin_epoch(0)

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
        missing = head_problems({**p, "use_mastery_head": has_m, "use_gain_head": has_g})
        if missing:
            raise ConfigError("the model's outputs lack a head the objective needs: " + "; ".join(missing))
        mask, r, y = batch.mask, batch.r, batch.y
        bce = bce_loss(out.logits, y, mask)
        zero = bce.new_zeros(())
        big_m = st.mastery_mean if has_m else None  # M_t (B, L)
        big_g = st.gain_sum / st.num_c if has_g else None  # G_t (B, L)
        terms = {
            "non_negative": lambda: zero,  # relu(-g) = 0: gains are ReLU outputs
            "monotonicity": lambda: zero if has_g else monotonicity_loss(out.mastery, mask),  # cumsum of g >= 0
            "mastery_performance": lambda: (mastery_prediction_loss(st.mastery_at_q, y, mask)
                                            if p["mastery_performance_target"] == "next"
                                            else mastery_performance_loss(st.mastery_at_c, r, mask)),
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
        else:  # logged only (alignment_corr_*), no gradient needed
            with torch.no_grad():
                rho_m, rho_g = alignment_correlations(big_m, big_g, y, mask, *how)
        nan = torch.full((), float("nan"), device=bce.device)
        parts["alignment"] = align.detach()
        parts["rho_m"] = rho_m.detach() if rho_m is not None else nan
        parts["rho_g"] = rho_g.detach() if rho_g is not None else nan

        lag = zero
        parts["lag_value"], parts["lag_count"] = zero, zero
        if self.lag_active and has_g:
            weights = [p[k] for k in LAG_WEIGHT_KEYS]
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
        if out.difficulty is not None:  # question_embedding rasch: AKT's L2 on the difficulties of the scored steps
            penalty = p["question_difficulty_l2"] * (out.difficulty.square() * mask).sum()
            parts["question_difficulty"] = penalty.detach()
            total = total + penalty
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
