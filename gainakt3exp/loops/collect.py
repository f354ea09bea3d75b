"""The pass that runs a model over batches (eval mode, no_grad) and gathers what the metrics read: predictions, the
mastery and gains at each step, truth where the data set has it. The statistics themselves are in metrics/stats.py."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gainakt3exp.data import sequences as data
from gainakt3exp.errors import ConfigError
from gainakt3exp.metrics.stats import (
    VIOLATIONS,
    _row_moments,
    count_violations,
    global_alignment_from_outputs,
    prediction_from_outputs,
    select_rows,
    semantic_from_outputs,
    stratified_rows,
)

# ------------------------------------------------------------------------------------------ model pass

def _pad(t: torch.Tensor, width: int, value: float) -> torch.Tensor:
    return F.pad(t, (0, width - t.shape[1]), value=value)


_OPTIONAL = ("logits", "mastery_mean", "gain_mean", "target_mastery", "truth", "mastery_row_mean",
             "mastery_row_m2")


def collect_outputs(model: torch.nn.Module, seqs: Any, rows: np.ndarray, batch_size: int,
                    device: Any, *, logits: bool = True, interpretation: bool = True, per_skill: bool = True) -> dict:
    """Run `model` (eval mode, no_grad; its mode is restored afterwards) over `rows` of `seqs`.

    logits=False / interpretation=False: a pass for the interpretability / prediction metrics only; the
    model then skips the prediction / mastery and gain heads (GainAKT3Exp.forward) and the keys they feed
    are None. per_skill=False: the model's reduced pass (forward(reduced=True): per-step values only, no
    (B, L, C) mastery or gains even per batch), so the per-skill statistics (mastery_row_mean/m2, violations)
    are absent; prediction, global-pass and per-step correlation metrics need nothing else.

    Rows are batched in order of length (`data.make_batch` of batch_size rows of similar length, each trimmed
    to its longest row); each batch is reduced at once, so memory is O(R x (L + C)), never (R, L, C).
    Returns per-row tensors (dim 0 = rows in the given order; (R, L) ones padded to the widest row), on the CPU:
      rows (R,) long; mask, score (R, L) bool; y, logits (R, L) float;
      mastery_mean M_t = mean_k m_t[k], gain_mean G_t = mean_k g_t[k], target_mastery m_t[q_t] (R, L) float,
      None when the head is off; truth (R, L) (NaN = none) or None;
      mastery_row_mean, mastery_row_m2 (R, C) float64: per row and skill, mean and sum of squared
      deviations of m over the row's valid steps (pooled by mastery_variance_stats), or None;
      violations {name: (count (R,), opportunities (R,))} (see count_violations).
    Every value is per row, so select_rows(out, positions) gives exactly what a pass over those rows would:
    one forward pass over the validation set can serve prediction, semantic and global metrics.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        raise ConfigError("rows=[]: no rows to evaluate; fix: ask for at least one student/window")
    # Batch rows of similar length together (stable sort), so trimming each batch to its longest row removes
    # most padding (file order mixes 200-step windows with short ones: ~5x more cells on assist2015 test);
    # the per-row results are put back in the given order below.
    order = np.argsort(np.asarray(seqs.lengths)[rows], kind="stable")
    was_training = model.training
    model.eval()
    parts: dict[str, list] = {}
    try:
        with torch.no_grad():
            for start in range(0, rows.size, batch_size):
                b = data.make_batch(seqs, rows[order[start:start + batch_size]], device)
                o = model(b.c, b.r, b.q, **data.question_inputs(b), logits=logits, interpretation=interpretation,
                          reduced=not per_skill)
                keep = {"rows": b.rows, "mask": b.mask, "score": b.score, "y": b.y.float()}
                if o.logits is not None:
                    keep["logits"] = o.logits.float()
                if b.truth is not None:
                    keep["truth"] = b.truth.float()
                if not per_skill:
                    st = o.steps
                    if st is not None and st.mastery_mean is not None:
                        keep["mastery_mean"], keep["target_mastery"] = st.mastery_mean, st.mastery_at_q
                    if st is not None and st.gain_sum is not None:
                        keep["gain_mean"] = st.gain_sum / st.num_c
                    for key, val in keep.items():
                        parts.setdefault(key, []).append(val.float().cpu() if val.is_floating_point() else val.cpu())
                    continue
                m = None if o.mastery is None else o.mastery.float()  # (B, L, C)
                g = None if o.gains is None else o.gains.float()  # (B, L, C)
                if m is not None:
                    keep["mastery_mean"] = m.mean(-1)
                    keep["target_mastery"] = m.gather(-1, b.q.unsqueeze(-1)).squeeze(-1)
                    keep["mastery_row_mean"], keep["mastery_row_m2"] = _row_moments(m, b.mask)
                if g is not None:
                    keep["gain_mean"] = g.mean(-1)
                for name, (k, tot) in count_violations(m, g, b.mask).items():
                    keep[f"violations/{name}/count"], keep[f"violations/{name}/total"] = k, tot
                for key, val in keep.items():
                    parts.setdefault(key, []).append(val.cpu())
    finally:
        model.train(was_training)
    width = max(t.shape[1] for t in parts["mask"])
    pad_value = {"mask": False, "score": False, "truth": float("nan")}
    out: dict = dict.fromkeys(_OPTIONAL)
    for key, chunks in parts.items():
        if len(chunks) != len(parts["mask"]):
            continue  # present in some batches only (truth): treat as absent rather than misalign rows
        if key in ("mastery_row_mean", "mastery_row_m2") or chunks[0].dim() == 1:
            out[key] = torch.cat(chunks)
        else:
            out[key] = torch.cat([_pad(t, width, pad_value.get(key, 0.0)) for t in chunks])
    out["violations"] = {name: (out.pop(f"violations/{name}/count"), out.pop(f"violations/{name}/total"))
                         for name in VIOLATIONS if f"violations/{name}/count" in out}
    return select_rows(out, np.argsort(order, kind="stable"))  # back to the order of `rows`


def collect_students(model: torch.nn.Module, seqs: Any, rows: np.ndarray, device: Any) -> list[dict]:
    """Every skill's mastery along a few rows (students), for pictures: one normal forward with the mastery head
    (eval mode, no_grad; the model's mode is restored), the full (L, C) mastery kept per row. Meant for a handful of
    rows: it holds (rows, L, C) floats at once.

    Per row, over its n valid steps (mask mu_t; a row of k interactions has n = k - 1, the last answer having no
    next step in a batch): {"label": "student <uid> (row <row>)", "row": int, "concepts": c_t (n,) int64,
    "responses": r_t (n,) int64 as in the file (never the HIDDEN token of a multi-concept answer),
    "mastery": m_t (n, C) float32, the mastery of every skill after step t}.
    A model without a mastery head has nothing to show: ConfigError.
    """
    if getattr(model, "mastery_head", None) is None:
        raise ConfigError("the model has no mastery head (use_mastery_head false): there is no mastery per skill "
                          "to collect; fix: use a run trained with use_mastery_head true")
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            b = data.make_batch(seqs, rows, device)
            o = model(b.c, b.r, b.q, **data.question_inputs(b))
    finally:
        model.train(was_training)
    m = o.mastery.float().cpu().numpy()  # (R, L, C)
    n_steps = b.mask.sum(1).cpu().numpy()  # (R,); valid steps are a prefix of each row
    students = []
    for i, row in enumerate(rows):  # a handful of rows
        n = int(n_steps[i])
        students.append({"label": f"student {int(seqs.uids[row])} (row {int(row)})", "row": int(row),
                         "concepts": seqs.concepts[row, :n].astype(np.int64),
                         "responses": seqs.responses[row, :n].astype(np.int64),
                         "mastery": np.ascontiguousarray(m[i, :n])})
    return students


# ------------------------------------------------------------------------------------ entry points

def prediction_metrics(model: torch.nn.Module, seqs: Any, batch_size: int, device: Any, *,
                       use_score_mask: bool) -> dict:
    """{loss, auc, accuracy, n} over all rows of seqs; see prediction_from_outputs."""
    rows = np.arange(len(seqs.lengths))
    return prediction_from_outputs(collect_outputs(model, seqs, rows, batch_size, device, interpretation=False),
                                   use_score_mask=use_score_mask)


def _check_students(n_students: int) -> int:
    if n_students < 1:
        raise ConfigError(f"n_students={n_students}: must be >= 1; fix: set max_semantic_students / "
                          "max_correlation_students / alignment_global_students to a positive number")
    return int(n_students)


def semantic_metrics(model: torch.nn.Module, seqs: Any, n_students: int, batch_size: int,
                     device: Any) -> dict:
    """Interpretability metrics on the first n_students rows (file order). y_t = r_{t+1}, valid = mask.

    - mastery_correlation / gain_correlation: per row, Pearson over valid steps between M_t = mean_k m_t[k]
      (G_t = mean_k g_t[k]) and y_t; mean over rows where it is defined (>= 2 steps, both vary).
    - target_mastery_correlation: the same with m_t[q_t], the mastery of the skill about to be answered.
    - mean/min/max_mastery_variance: see mastery_variance_stats.
    - {monotonicity,negative_gain,bounds}_violation_rate: violations / opportunities, see count_violations.
    - correlation_students: rows with a defined mastery correlation (gain correlation without mastery head);
      n_students: rows evaluated.
    Every key is always present; a value is None when its head is off (no gain head -> gain_correlation and
    negative_gain_violation_rate None), when there is no truth, or when no row has a defined correlation.
    """
    rows = np.arange(min(_check_students(n_students), len(seqs.lengths)))
    out = collect_outputs(model, seqs, rows, batch_size, device, logits=False)
    return semantic_from_outputs(out)


def global_alignment_metrics(model: torch.nn.Module, seqs: Any, n_students: int, batch_size: int,
                             device: Any) -> dict:
    """Global alignment pass: n_students rows by stratified_rows(seqs.lengths, n_students, 10), then the
    population Pearson pooled over all their valid steps: global_alignment_mastery_corr = corr(M_t, y_t),
    global_alignment_gain_corr = corr(G_t, y_t) (None when the head is off or undefined), and
    global_alignment_students = rows used."""
    rows = stratified_rows(np.asarray(seqs.lengths), _check_students(n_students))
    return global_alignment_from_outputs(collect_outputs(model, seqs, rows, batch_size, device, logits=False))
