"""The per-epoch trajectory: loss shares, the trajectory entry (results.json, metrics_epoch.csv) and the flat
`group/name` metric dict the training loop hands to its sink (and so to MLflow).

    entry = trajectory_entry(epoch, {**semantic, **global_pass, **controls, "loss_shares": loss_shares(means)})
    sink.log_metrics(epoch_metric_dict(train, val, entry), step=epoch)

Values that cannot be computed are None in the entry (JSON null) and left out of the metric dict, since MLflow
stores only finite floats.
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional

import numpy as np
import torch

from gainakt3exp.metrics.stats import VIOLATIONS

_KEY_BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-./]")
_WEIGHT_KEYS = ("warmup_scale", "effective_alignment_weight", "consistency_loss_weight_current",
                "sparsity_loss_weight_current")
_SHARE_KEYS = ("main", "constraint_total", "alignment", "lag", "retention")
# Per-epoch trajectory keys in the order of the seed README's example entry (loss_shares is nested).
_ENTRY_KEYS = ("mastery_correlation", "gain_correlation", "warmup_scale", "alignment_corr_mastery",
               "alignment_corr_gain", "global_alignment_mastery_corr", "global_alignment_gain_corr",
               "effective_alignment_weight", "peak_mastery_corr", "retention_loss_value", "mean_lag_corr",
               "lag_corr_count")
_ENTRY_KEYS_2 = ("consistency_loss_weight_current", "sparsity_loss_weight_current")
_ENTRY_KEYS_3 = ("mean_mastery_variance", "min_mastery_variance", "max_mastery_variance")
_ENTRY_KEYS_4 = ("target_mastery_correlation",) + tuple(f"{v}_violation_rate" for v in VIOLATIONS)


def loss_shares(means: dict) -> dict:
    """Loss shares of one epoch from the epoch means of the loss terms.

    D = bce + constraint_total (the non-reward part of the loss); main = bce / D,
    constraint_total = constraint_total / D (so main + constraint_total = 1), alignment = alignment / D,
    lag = lag / D, retention = retention / D. Alignment and lag are rewards (<= 0), so their shares may be
    negative. The original divided by the total including alignment and then also added alignment into the
    constraint share, counting it twice and letting a reward shrink the denominator; here rewards are only
    reported relative to the non-reward loss. A missing alignment/lag/retention mean counts as 0 (term off);
    all shares are None when D is not a positive finite number.
    """
    bce = float(means["bce"])
    con = float(means["constraint_total"])
    d = bce + con
    if not (math.isfinite(d) and d > 0):
        return dict.fromkeys(_SHARE_KEYS)
    vals = {"main": bce, "constraint_total": con, "alignment": float(means.get("alignment", 0.0)),
            "lag": float(means.get("lag", 0.0)), "retention": float(means.get("retention", 0.0))}
    return {k: vals[k] / d for k in _SHARE_KEYS}


def _clean(v: Any) -> Any:
    """Python scalar for JSON: tensors/numpy -> float/int, nan/inf -> None."""
    if v is None:
        return None
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    v = float(v)
    return v if math.isfinite(v) else None


def trajectory_entry(epoch: int, values: dict) -> dict:
    """The per-epoch trajectory entry (results.json train_history.semantic_trajectory, metrics_epoch.csv).

    Keys in the order of the seed README's example entry: epoch, mastery_correlation, gain_correlation,
    warmup_scale, alignment_corr_mastery, alignment_corr_gain, global_alignment_mastery_corr,
    global_alignment_gain_corr, effective_alignment_weight, peak_mastery_corr, retention_loss_value,
    mean_lag_corr, lag_corr_count, consistency_loss_weight_current, sparsity_loss_weight_current,
    loss_shares {main, constraint_total, alignment, lag, retention}, mean/min/max_mastery_variance,
    per_lag_correlations (list); then target_mastery_correlation, the three *_violation_rate keys, and
    true_mastery_correlation and true_mastery_correlation_within (data with a truth file, synthetic), then
    mastery_auc and mastery_auc_within (a mastery head), each only when values holds a number for it.
    A key missing from values, None or nan becomes None (JSON null); extra keys in values are ignored.
    """
    e: dict[str, Any] = {"epoch": int(epoch)}
    for k in _ENTRY_KEYS + _ENTRY_KEYS_2:
        e[k] = _clean(values.get(k))
    shares = values.get("loss_shares") or {}
    e["loss_shares"] = {k: _clean(shares.get(k)) for k in _SHARE_KEYS}
    for k in _ENTRY_KEYS_3:
        e[k] = _clean(values.get(k))
    e["per_lag_correlations"] = [_clean(v) for v in (values.get("per_lag_correlations") or [])]
    for k in _ENTRY_KEYS_4:
        e[k] = _clean(values.get(k))
    for k in ("true_mastery_correlation", "true_mastery_correlation_within", "mastery_auc", "mastery_auc_within"):
        if _clean(values.get(k)) is not None:
            e[k] = _clean(values[k])
    return e


def _number(v: Any) -> Optional[float]:
    """float(v) for finite scalars (bool/int/float/0-d tensor/numpy); None for None, nan, lists, dicts."""
    if v is None or isinstance(v, (list, tuple, dict, str)):
        return None
    if isinstance(v, (torch.Tensor, np.ndarray, np.generic)):
        if (v.numel() if isinstance(v, torch.Tensor) else v.size) != 1:
            return None
        v = v.item()
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _key(group: str, name: str) -> str:
    return _KEY_BAD_CHARS.sub("_", f"{group}/{name}")


def epoch_metric_dict(train: dict, val: dict, entry: dict) -> dict[str, float]:
    """One flat {key: float} per epoch for sink.log_metrics(..., step=epoch).

    train/<k> for each number in train (loss, auc, learning_rate, epoch_seconds, ...), val/<k> for val
    (loss, auc, accuracy, ...), and from the trajectory entry: weights/<k> for warmup_scale,
    effective_alignment_weight, consistency_loss_weight_current, sparsity_loss_weight_current;
    violations/<k> for *_violation_rate; loss_shares/<k> for the nested shares; trajectory/<k> for every
    other number (correlations, variances, peak, retention, lag). `epoch` is the step, not a metric.
    None, nan/inf, lists (per_lag_correlations: artifact only) and dicts are dropped, since MLflow stores
    only finite floats; characters outside letters, digits and _ - . / become '_'.
    """
    items: list[tuple[str, str, Any]] = []
    items += [("train", k, v) for k, v in train.items()]
    items += [("val", k, v) for k, v in val.items()]
    for k, v in entry.items():
        if k == "epoch":
            continue
        if k == "loss_shares" and isinstance(v, dict):
            items += [("loss_shares", sk, sv) for sk, sv in v.items()]
        elif k in _WEIGHT_KEYS:
            items.append(("weights", k, v))
        elif k.endswith("_violation_rate"):
            items.append(("violations", k, v))
        else:
            items.append(("trajectory", k, v))
    out: dict[str, float] = {}
    for group, k, v in items:
        f = _number(v)
        if f is not None:
            out[_key(group, str(k))] = f
    return out
