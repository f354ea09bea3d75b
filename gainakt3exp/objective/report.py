"""The objective report: which terms a run's parameters switch on, with which heads and weights (recorded in
config.json and printed when a run starts), and which parameters belong to the objective."""
from __future__ import annotations

from gainakt3exp.config.choices import LAG_WEIGHT_KEYS
from gainakt3exp.objective.terms import CONSTRAINTS, FIXED_CONSTANTS

#: Which heads each constraint reads (a weight > 0 without its head is a ConfigError).
OBJECTIVE_PARAM_KEYS = (
    "use_mastery_head", "use_gain_head", "enhanced_constraints",
    *(f"{name}_loss_weight" for name in CONSTRAINTS),
    "mastery_gain_scale", "gain_performance_margin", "warmup_constraint_epochs", "enable_cosine_perf_schedule",
    "enable_alignment_loss", "alignment_weight", "alignment_warmup_epochs", "adaptive_alignment",
    "alignment_min_correlation", "alignment_share_cap", "alignment_share_decay_factor",
    "use_residual_alignment", "alignment_residual_window", "alignment_population",
    "enable_retention_loss", "retention_delta", "retention_weight",
    "enable_lag_gain_loss", "lag_gain_weight", "lag_max_lag", *LAG_WEIGHT_KEYS,
    "consistency_rebalance_epoch", "consistency_rebalance_threshold", "consistency_rebalance_new_weight",
    "variance_floor", "variance_floor_patience", "variance_floor_reduce_factor", "gain_scope",
    "question_difficulty_l2", "mastery_performance_target",
)


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
        "mastery_performance": (f"weight warmed up over {warm} epoch(s) ({schedule}); "
                                + ("BCE of the mastery of the concept about to be answered against that answer"
                                   if p["mastery_performance_target"] == "next" else
                                   "the mastery of the concept just answered against that answer")),
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
                                                       f"(warmup_constraint_epochs + {FIXED_CONSTANTS['lag_start_offset_epochs']}) but the run has {p['epochs']}"}
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
