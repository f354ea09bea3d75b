"""Metrics: AUC/accuracy, batched masked Pearson, semantic (interpretability) and global alignment metrics.

Everything here is pure and batched: a model pass (`collect_outputs`, loops/collect.py) reduces each batch at once to the few
per-step values the metrics need (skill-mean mastery M_t, skill-mean gain G_t, target mastery m_t[q_t], ...),
so (N, L, C) tensors never exist for all rows together, and the metrics themselves are masked tensor
operations without Python loops over students, steps or skills.

    >>> out = collect_outputs(model, val, np.arange(len(val.lengths)), 64, "cpu")  # one pass
    >>> prediction_from_outputs(out, use_score_mask=False)["auc"]
    >>> semantic_from_outputs(select_rows(out, np.arange(50)))["mastery_correlation"]
    >>> global_alignment_from_outputs(select_rows(out, stratified_rows(val.lengths, 600)))

A "student" is one row (window) of a Sequences; y_t = r_{t+1}; valid steps are mask mu_t.
Values that cannot be computed (head off, fewer than two distinct values, one class) are None in the
semantic/global dicts (JSON null in the trajectory entry, see trajectory.py), and nan in prediction metrics.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

VIOLATIONS = ("monotonicity", "negative_gain", "bounds")


# ---------------------------------------------------------------------------------------------- basics

def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC = P(p_pos > p_neg) + 0.5 P(p_pos == p_neg) (Mann-Whitney U with average ranks for ties).

    Equal to sklearn's roc_auc_score (its trapezoidal ROC counts ties as half); nan if y has one class.
    """
    y = np.asarray(y).ravel() > 0.5
    p = np.asarray(p, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(p)  # average ranks, 1-based
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def accuracy(y: np.ndarray, p: np.ndarray) -> float:
    """Accuracy = mean((p >= 0.5) == y); nan when empty."""
    y = np.asarray(y).ravel()
    p = np.asarray(p).ravel()
    if y.size == 0:
        return float("nan")
    return float(np.mean((p >= 0.5) == (y > 0.5)))


def reliability_bins(p: np.ndarray, y: np.ndarray, bins: int = 10) -> dict[str, np.ndarray]:
    """A reliability diagram's numbers: p (a probability per step) cut into `bins` equal-count bins (deciles for
    bins=10) and, per bin, the mean p against the observed rate of y = 1.

    edges e_0..e_B = np.quantile(p, b / B) (linear interpolation; e_0 = min p, e_B = max p); step i falls in bin b
    when e_b <= p_i < e_{b+1}, the last bin also holding p_i = e_B (ties at an edge go to the higher bin, so a bin
    can be empty when many p are equal). Returns float64 arrays: edges (B + 1,), mean_p, rate (B,) (nan where the
    bin is empty), count (B,) int64; count sums to n. Empty p: edges nan, counts 0.
    """
    if bins < 1:
        raise ValueError(f"bins={bins}: must be >= 1")
    p = np.asarray(p, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    assert p.shape == y.shape, (p.shape, y.shape)
    if p.size == 0:
        nan = np.full(bins, np.nan)
        return {"edges": np.full(bins + 1, np.nan), "mean_p": nan, "rate": nan.copy(),
                "count": np.zeros(bins, dtype=np.int64)}
    edges = np.quantile(p, np.arange(bins + 1) / bins)
    b = np.searchsorted(edges[1:-1], p, side="right")  # (n,) bin of each step, 0..B-1
    count = np.bincount(b, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(b, weights=p, minlength=bins) / count
        rate = np.bincount(b, weights=y > 0.5, minlength=bins) / count
    return {"edges": edges, "mean_p": mean_p, "rate": rate, "count": count.astype(np.int64)}


FUSIONS = ("late_mean", "late_vote", "late_all")


def late_fusion(p: np.ndarray, y: np.ndarray, answer: np.ndarray) -> dict[str, np.ndarray]:
    """pyKT's late fusion (evaluate_model.late_fusion): the concept predictions of one answer (a question with k
    concepts, k predictions; `answer` is pyKT's qidx of each) fused into one prediction per answer, answers in
    ascending qidx order:
      late_mean = round(mean(p), 4)                     (pyKT rounds before AUC and accuracy)
      late_vote = mean(p >= 0.5) if at least half of them are >= 0.5, else mean(p < 0.5)
      late_all  = mean(p >= 0.5) if all of them are >= 0.5,         else mean(p < 0.5)
    and "label", the answer's response, int(mean(y)) as pyKT takes it."""
    p = np.asarray(p, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    groups, g = np.unique(np.asarray(answer).ravel(), return_inverse=True)
    n = np.bincount(g, minlength=len(groups)).astype(np.float64)
    high = p >= 0.5
    n_high = np.bincount(g, weights=high, minlength=len(groups))
    sum_high = np.bincount(g, weights=np.where(high, p, 0.0), minlength=len(groups))
    sum_low = np.bincount(g, weights=np.where(high, 0.0, p), minlength=len(groups))
    mean_high = np.divide(sum_high, n_high, out=np.zeros_like(n), where=n_high > 0)
    mean_low = np.divide(sum_low, n - n_high, out=np.zeros_like(n), where=n > n_high)
    return {"late_mean": np.round(np.bincount(g, weights=p, minlength=len(groups)) / n, 4),
            "late_vote": np.where(n_high / n >= 0.5, mean_high, mean_low),
            "late_all": np.where(n_high == n, mean_high, mean_low),
            "label": np.floor(np.bincount(g, weights=y, minlength=len(groups)) / n)}


def question_level_metrics(p: np.ndarray, y: np.ndarray, answer: np.ndarray) -> dict[str, float]:
    """pyKT's evaluate_question over the scored concept predictions of a question file: auc/acc of the concepts
    themselves ("concepts") and of each late fusion, per answer; keys auc<fusion>, acc<fusion>, and answers (how
    many answers were fused)."""
    fused = late_fusion(p, y, answer)
    out = {"aucconcepts": roc_auc(y, p), "accconcepts": accuracy(y, p), "answers": len(fused["label"])}
    for name in FUSIONS:
        out[f"auc{name}"] = roc_auc(fused["label"], fused[name])
        out[f"acc{name}"] = accuracy(fused["label"], fused[name])
    return out


def masked_row_pearson(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                       min_count: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row Pearson correlation over the masked elements, all rows at once.

    x, y (N, L) float, mask (N, L) bool. For row i over {t: mask[i, t]} (n_i elements):
        r_i = sum (x - xbar)(y - ybar) / sqrt(sum (x - xbar)^2 * sum (y - ybar)^2), computed in float64.
    valid_i = n_i >= min_count and x and y each take at least two distinct values on the row (checked
    exactly with masked min/max, not with a rounding-prone variance > 0). Invalid rows get corr nan.
    Values outside the mask are ignored even if they are nan. Returns (corr (N,) float64, valid (N,) bool).
    """
    assert x.shape == y.shape == mask.shape and x.dim() == 2, (x.shape, y.shape, mask.shape)
    mask = mask.bool()
    x = torch.where(mask, x.double(), 0.0)
    y = torch.where(mask, y.double(), 0.0)
    n = mask.sum(1)  # (N,)
    nn = n.clamp(min=1).double()
    dx = torch.where(mask, x - x.sum(1, keepdim=True) / nn[:, None], 0.0)
    dy = torch.where(mask, y - y.sum(1, keepdim=True) / nn[:, None], 0.0)
    cov = (dx * dy).sum(1)
    den = torch.sqrt((dx * dx).sum(1) * (dy * dy).sum(1))
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=x.device)

    def _varies(v: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, v, -inf).amax(1) > torch.where(mask, v, inf).amin(1)

    valid = (n >= min_count) & _varies(x) & _varies(y) & (den > 0)
    corr = torch.where(valid, cov / torch.where(valid, den, 1.0), float("nan")).clamp(-1.0, 1.0)
    return corr, valid


def _pooled_pearson(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> Optional[float]:
    """Pearson over all masked elements pooled into one population; None when not computable."""
    corr, valid = masked_row_pearson(x.reshape(1, -1), y.reshape(1, -1), mask.reshape(1, -1))
    return float(corr[0]) if bool(valid[0]) else None


def _row_mean_pearson(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> tuple[Optional[float], int]:
    """Mean over rows of the per-row Pearson (valid rows only) and the number of valid rows."""
    corr, valid = masked_row_pearson(x, y, mask)
    k = int(valid.sum())
    return (float(corr[valid].mean()) if k else None), k


def count_violations(m: Optional[torch.Tensor], g: Optional[torch.Tensor],
                     mask: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-row counts (violations (B,), opportunities (B,)) of the interpretability constraints.

    m mastery (B, L, C) or None, g gains (B, L, C) or None, mask (B, L) bool.
    - monotonicity: (t, skill) with mask_t and mask_{t+1} where m_{t+1} < m_t; opportunities = pairs x C.
    - negative_gain: (valid t, skill) with g < 0; opportunities = valid steps x C.
    - bounds: (valid t, skill) with m < 0 or m > 1; opportunities = valid steps x C.
    A term whose head is off is absent from the result. Rate = sum of counts / sum of opportunities.
    """
    # Count over skills first, then mask the (B, L) counts: ~3x faster than masking (B, L, C) booleans.
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    n_valid = mask.sum(1)  # (B,)
    if m is not None:
        C = m.shape[-1]
        pair = mask[:, :-1] & mask[:, 1:]  # (B, L-1)
        drops = _count_below(m[:, 1:] - m[:, :-1], 0.0)  # (B, L-1); a - b < 0 iff a < b in IEEE floats
        out["monotonicity"] = ((drops * pair).sum(1), pair.sum(1) * C)
        outside = _count_outside_unit(m)  # (B, L)
        out["bounds"] = ((outside * mask).sum(1), n_valid * C)
    if g is not None:
        out["negative_gain"] = ((_count_below(g, 0.0) * mask).sum(1), n_valid * g.shape[-1])
    return out


def _count_outside_unit(m: torch.Tensor) -> torch.Tensor:
    """(B, L) number of skills with m outside [0, 1]; one min/max pass settles the usual all-inside case."""
    if m.numel() == 0:
        return torch.zeros(m.shape[:2], dtype=torch.long, device=m.device)
    lo, hi = torch.aminmax(m)
    if bool(lo >= 0) and bool(hi <= 1):
        return torch.zeros(m.shape[:2], dtype=torch.long, device=m.device)
    return torch.count_nonzero((m < 0) | (m > 1), dim=-1)


def _count_below(x: torch.Tensor, bound: float) -> torch.Tensor:
    """(B, L) number of skills with x < bound. The model's heads make violations rare by construction
    (ReLU gains, clamped cumulative mastery), so one min over the batch usually settles it."""
    if x.numel() == 0 or bool(x.amin() >= bound):
        return torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)
    return torch.count_nonzero(x < bound, dim=-1)


def _row_moments(m: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row and skill over valid steps: mean_i,k and M2_i,k = sum_t (m - mean_i,k)^2, float64 (B, C).

    Sums of d = m - m_i,0,k (shifted by the row's first step to limit cancellation) and of d^2 are masked
    matrix products (B, 1, L) x (B, L, C); M2 = S2 - S1^2 / n. ~4x faster than centring (B, L, C) twice;
    relative error ~1e-6 in float32, ample for a variance diagnostic.
    """
    w = mask.to(m.dtype).unsqueeze(1)  # (B, 1, L)
    n = mask.sum(1, keepdim=True).clamp(min=1).double()  # (B, 1)
    d = m - m[:, :1]  # (B, L, C)
    s1 = torch.bmm(w, d).squeeze(1).double()  # (B, C)
    s2 = torch.bmm(w, d.square_()).squeeze(1).double()  # (B, C)
    mean_d = s1 / n
    return mean_d + m[:, 0].double(), (s2 - s1 * mean_d).clamp(min=0.0)


def select_rows(out: dict, positions: np.ndarray) -> dict:
    """The collected outputs of the rows at `positions` (indices into out's row order)."""
    idx = torch.as_tensor(np.asarray(positions, dtype=np.int64))
    sel: dict = {}
    for key, val in out.items():
        if key == "violations":
            sel[key] = {name: (k[idx], tot[idx]) for name, (k, tot) in val.items()}
        else:
            sel[key] = None if val is None else val[idx]
    return sel


# ----------------------------------------------------------------------------------------- summaries

def prediction_from_outputs(out: dict, *, use_score_mask: bool) -> dict:
    """loss = mean BCE-with-logits(z, y), auc, accuracy (p = sigmoid(z)), n over the scored steps.

    Scored steps: batch.score when use_score_mask (pyKT window test: selectmasks), else every valid step.
    """
    sel = out["score"] if use_score_mask else out["mask"]
    z = out["logits"][sel].double()
    y = out["y"][sel].double()
    n = int(z.numel())
    if n == 0:
        return {"loss": float("nan"), "auc": float("nan"), "accuracy": float("nan"), "n": 0}
    loss = float(F.binary_cross_entropy_with_logits(z, y, reduction="mean"))
    p = torch.sigmoid(z).numpy()
    return {"loss": loss, "auc": roc_auc(y.numpy(), p), "accuracy": accuracy(y.numpy(), p), "n": n}


def semantic_from_outputs(out: dict) -> dict:
    """Interpretability metrics of collected outputs (see semantic_metrics for the definitions)."""
    mask, y = out["mask"], out["y"]
    res: dict[str, Any] = {"n_students": int(mask.shape[0])}
    m_corr, m_k = (None, 0)
    g_corr, g_k = (None, 0)
    if out["mastery_mean"] is not None:
        m_corr, m_k = _row_mean_pearson(out["mastery_mean"], y, mask)
    if out["gain_mean"] is not None:
        g_corr, g_k = _row_mean_pearson(out["gain_mean"], y, mask)
    res["mastery_correlation"] = m_corr
    res["gain_correlation"] = g_corr
    res["target_mastery_correlation"] = None
    if out["target_mastery"] is not None:
        res["target_mastery_correlation"] = _row_mean_pearson(out["target_mastery"], y, mask)[0]
    res["correlation_students"] = m_k if out["mastery_mean"] is not None else g_k
    res.update(mastery_variance_stats(out["mastery_row_mean"], out["mastery_row_m2"], mask.sum(1)))
    for name in VIOLATIONS:
        counts = out["violations"].get(name)  # absent when its head is off
        tot = int(counts[1].sum()) if counts else 0
        res[f"{name}_violation_rate"] = int(counts[0].sum()) / tot if tot else None
    return res


def grouped_auc(y: np.ndarray, p: np.ndarray, group: np.ndarray) -> tuple[Optional[float], int]:
    """The mean over groups (students) of the AUC of p against y within the group, over the groups that have both
    answers (a group of one class has no AUC); returns (mean, number of such groups), (None, 0) when none."""
    y = np.asarray(y).ravel() > 0.5
    p = np.asarray(p, dtype=np.float64).ravel()
    group = np.asarray(group).ravel()
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    aucs = [roc_auc(y[idx], p[idx]) for idx in np.split(order, bounds) if 0 < y[idx].sum() < idx.size]
    return (float(np.mean(aucs)), len(aucs)) if aucs else (None, 0)


def mastery_auc_from_outputs(out: dict, *, use_score_mask: bool, students: Optional[np.ndarray] = None) -> dict:
    """Does mastery rank the answers as the prediction does? The AUC of m_t[c_{t+1}] (the mastery of the concept
    about to be answered, "target_mastery") as a predictor of the response r_{t+1}, on the same scored steps as
    prediction_from_outputs (0.5: mastery carries nothing about the answer):
      mastery_auc         pooled over every scored step;
      mastery_auc_within  per student (`students`: the student of each collected row; rows of one student are
                          pooled), averaged over the students with both answers: ranking within a history only.
    Both None without a mastery head."""
    res: dict[str, Any] = {"mastery_auc": None, "mastery_auc_within": None, "mastery_auc_students": 0}
    if out["target_mastery"] is None:
        return res
    sel = (out["score"] if use_score_mask else out["mask"]).numpy()
    y, m = out["y"].numpy()[sel], out["target_mastery"].double().numpy()[sel]
    res["mastery_auc"] = roc_auc(y, m) if y.size else float("nan")
    if students is not None:
        owner = np.broadcast_to(np.asarray(students).reshape(-1, 1), sel.shape)[sel]
        res["mastery_auc_within"], res["mastery_auc_students"] = grouped_auc(y, m, owner)
    return res


def truth_from_outputs(out: dict) -> dict:
    """Learned vs true mastery of the skill about to be answered, m_t[q_t] vs p*_t[q_t] (data with a truth file):

    - true_mastery_correlation: Pearson pooled over every valid step with a finite truth (all collected rows);
    - true_mastery_correlation_within: per row (student window) Pearson over its valid steps, averaged over the
      rows where it is defined (>= 2 steps, both vary). Pooling rewards a constant per-student offset that says
      nothing about how mastery moves within a history; the within-student value does not.
    Both None without a mastery head or truth.
    """
    res = {"true_mastery_correlation": None, "true_mastery_correlation_within": None}
    if out["target_mastery"] is None or out["truth"] is None:
        return res
    ok = out["mask"] & torch.isfinite(out["truth"])
    res["true_mastery_correlation"] = _pooled_pearson(out["target_mastery"], out["truth"], ok)
    res["true_mastery_correlation_within"] = _row_mean_pearson(out["target_mastery"], out["truth"], ok)[0]
    return res


def mastery_variance_stats(row_mean: Optional[torch.Tensor], row_m2: Optional[torch.Tensor],
                           row_n: torch.Tensor) -> dict:
    """Mean/min/max over the C skills of var_k, the population variance (ddof 0) of m[:, :, k] over all
    valid (row, step) pairs: var_k = (1/n) sum_(i,t valid) (m_i,t,k - mean_k)^2, n = sum_i n_i.

    Pooled from per-row moments (row_mean, row_m2 (R, C) float64, row_n (R,) valid steps):
    mean_k = sum_i n_i mean_i,k / n; n var_k = sum_i M2_i,k + sum_i n_i (mean_i,k - mean_k)^2.
    All three are None without a mastery head or without valid steps.
    """
    keys = ("mean_mastery_variance", "min_mastery_variance", "max_mastery_variance")
    n_i = row_n.double().unsqueeze(1)  # (R, 1)
    n = float(n_i.sum())
    if row_mean is None or row_m2 is None or n == 0:
        return dict.fromkeys(keys)
    mean = (n_i * row_mean).sum(0) / n  # (C,)
    var = (row_m2.sum(0) + (n_i * (row_mean - mean) ** 2).sum(0)) / n  # (C,)
    return dict(zip(keys, (float(var.mean()), float(var.min()), float(var.max()))))


def global_alignment_from_outputs(out: dict) -> dict:
    """Population Pearson pooled over all valid steps of the collected rows: M_t vs y, G_t vs y."""
    mask, y = out["mask"], out["y"]
    res = {"global_alignment_mastery_corr": None, "global_alignment_gain_corr": None,
           "global_alignment_students": int(mask.shape[0])}
    if out["mastery_mean"] is not None:
        res["global_alignment_mastery_corr"] = _pooled_pearson(out["mastery_mean"], y, mask)
    if out["gain_mean"] is not None:
        res["global_alignment_gain_corr"] = _pooled_pearson(out["gain_mean"], y, mask)
    return res


def stratified_rows(lengths: np.ndarray, n: int, bins: int = 10) -> np.ndarray:
    """n row indices spread over sequence lengths, deterministically (no RNG); sorted ascending.

    Rows are ordered by (length, row index) and cut into `bins` consecutive equal-count bins
    (np.array_split: sizes differ by at most one). Bin b takes n // bins rows, the first n % bins bins one
    more, at evenly spaced, centred positions floor((j + 0.5) * size / k), j = 0..k-1. n >= N returns all rows.
    """
    lengths = np.asarray(lengths)
    N = lengths.shape[0]
    if n >= N:
        return np.arange(N)
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(N), lengths))
    chunks = np.array_split(order, min(bins, N))
    base, extra = divmod(n, len(chunks))
    picked = []
    for b, chunk in enumerate(chunks):  # a loop over the 10 bins, not over students
        k = base + (1 if b < extra else 0)
        pos = np.floor((np.arange(k) + 0.5) * (len(chunk) / max(k, 1))).astype(np.int64)
        picked.append(chunk[pos])
    return np.sort(np.concatenate(picked))


def longest_students(lengths: np.ndarray, uids: np.ndarray, n: int) -> np.ndarray:
    """n row indices of distinct students with the longest rows, deterministically (no RNG): rows ordered by
    (length descending, row index), the first row of each uid kept (a long history cut into windows is one student),
    the first n of those, in that order. Fewer when there are fewer students."""
    lengths = np.asarray(lengths)
    order = np.lexsort((np.arange(lengths.shape[0]), -lengths))
    _, first = np.unique(np.asarray(uids)[order], return_index=True)  # first position of each uid in `order`
    return order[np.sort(first)][:max(n, 0)]
