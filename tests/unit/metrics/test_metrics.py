"""Metrics: AUC/accuracy, masked Pearson, semantic and global metrics, trajectory entry, MLflow keys.

Model passes use a stand-in model and a local batch builder (patched into gainakt3exp.data.make_batch) so
these tests depend only on the Batch contract, not on the real model or readers.
"""
from __future__ import annotations

import json
import math
import re
from collections import namedtuple
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

from gainakt3exp.data import sequences as data
from gainakt3exp.data.sequences import Batch
from gainakt3exp.loops import collect
from gainakt3exp.metrics import stats, trajectory
from gainakt3exp.model.cumulative import steps_from_full

Out = namedtuple("Out", "logits mastery gains steps", defaults=(None,))
C = 6


def _make_batch(seqs, rows, device):
    """Batch per the contract: next-step shift, mask, score = mask & selectmask_{t+1}, trimmed, trailing pad."""
    rows = np.asarray(rows)
    cc = torch.as_tensor(seqs.concepts[rows], dtype=torch.long)
    rr = torch.as_tensor(seqs.responses[rows], dtype=torch.long)
    c, q = cc[:, :-1], cc[:, 1:]
    mask = (c != -1) & (q != -1)
    L = max(int(mask.sum(1).max()), 1)
    score = mask & torch.as_tensor(seqs.selectmasks[rows])[:, 1:].bool()
    truth = None if seqs.truth is None else torch.as_tensor(seqs.truth[rows, 1:], dtype=torch.float)[:, :L]
    return Batch(c=c.clamp(min=0)[:, :L], r=rr[:, :-1].clamp(min=0)[:, :L], q=q.clamp(min=0)[:, :L],
                 y=rr[:, 1:].clamp(min=0).float()[:, :L], mask=mask[:, :L], score=score[:, :L],
                 rows=torch.as_tensor(rows, dtype=torch.long), truth=truth)


class StandIn(torch.nn.Module):
    """Concepts are 2k + r, so y_t = r_{t+1} = q_t % 2 can be read from q: mastery and gains are known
    functions of y. m_t[k] = 0.5 y_t + 0.1 k / C, g_t[k] = (1 - y_t)(k + 1) / C, z_t = (q_t % 3) - 1."""

    def __init__(self, mastery=True, gains=True):
        super().__init__()
        self.mastery, self.gains = mastery, gains
        self.seen = []  # (training, grad enabled) at each forward

    def forward(self, c, r, q, *, logits=True, interpretation=True, reduced=False):
        self.seen.append((self.training, torch.is_grad_enabled()))
        y = (q % 2).float()[..., None]
        k = torch.arange(C, dtype=torch.float)
        m = 0.5 * y + 0.1 * k / C if self.mastery and interpretation else None
        g = (1 - y) * (k + 1) / C if self.gains and interpretation else None
        z = ((q % 3) - 1).float() if logits else None
        if reduced:  # per-step values, as GainAKT3Exp's reduced pass gives them
            steps = steps_from_full(m, g, c, q) if m is not None or g is not None else None
            return Out(z, None, None, steps)
        return Out(z, m, g)


def _seqs(n=23, width=12, seed=0, truth=True):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, width + 1, size=n)
    lengths[0] = width
    resp = rng.integers(0, 2, size=(n, width))
    conc = 2 * rng.integers(0, C // 2, size=(n, width)) + resp
    sel = rng.integers(0, 2, size=(n, width)).astype(bool)
    valid = np.arange(width)[None, :] < lengths[:, None]
    tr = np.where(rng.random((n, width)) < 0.2, np.nan, rng.random((n, width))) if truth else None
    return SimpleNamespace(concepts=np.where(valid, conc, -1), responses=np.where(valid, resp, -1),
                           selectmasks=sel & valid, lengths=lengths,
                           truth=None if tr is None else np.where(valid, tr, np.nan))


@pytest.fixture
def local_batches(monkeypatch):
    monkeypatch.setattr(data, "make_batch", _make_batch, raising=False)


def _reference_steps(seqs, rows):
    """Per row (y, q, truth, score) over valid steps, straight from the arrays."""
    out = []
    for i in rows:
        n = max(int(seqs.lengths[i]) - 1, 0)
        q = seqs.concepts[i, 1:1 + n]
        out.append((seqs.responses[i, 1:1 + n].astype(float), q, seqs.truth[i, 1:1 + n], seqs.selectmasks[i, 1:1 + n]))
    return out


def _ragged(n, L, rng):
    lens = rng.integers(0, L + 1, size=n)
    return torch.as_tensor(np.arange(L)[None, :] < lens[:, None])


# ------------------------------------------------------------------------------------------ basics

def test_masked_row_pearson_matches_scipy_per_row_with_ragged_masks():
    rng = np.random.default_rng(1)
    N, L = 40, 30
    x = torch.as_tensor(rng.normal(size=(N, L)))
    y = 0.3 * x + torch.as_tensor(rng.normal(size=(N, L)))
    mask = _ragged(N, L, rng)
    mask[5] = torch.as_tensor(rng.random(L) < 0.5)  # a non-prefix mask too
    x_dirty = torch.where(mask, x, float("nan"))  # values outside the mask must be ignored
    corr, valid = stats.masked_row_pearson(x_dirty.float(), y.float(), mask)
    for i in range(N):
        k = mask[i].numpy()
        if k.sum() >= 2:
            assert bool(valid[i])
            assert float(corr[i]) == pytest.approx(pearsonr(x[i].numpy()[k], y[i].numpy()[k])[0], abs=1e-5)
        else:
            assert not bool(valid[i]) and math.isnan(float(corr[i]))


def test_masked_row_pearson_rows_with_one_step_or_constant_values_are_invalid():
    x = torch.tensor([[0.1, 0.1, 0.1, 0.1], [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 0.0, 0.0], [1.0, 2.0, 3.0, 9.0]])
    y = torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    corr, valid = stats.masked_row_pearson(x, y, mask)
    assert valid.tolist() == [False, False, False, True]
    assert float(corr[3]) == pytest.approx(pearsonr([1, 2, 3], [0, 1, 1])[0])
    assert torch.isnan(corr[:3]).all()
    _, valid3 = stats.masked_row_pearson(x, y, mask, min_count=4)
    assert not bool(valid3[3])


def test_roc_auc_and_accuracy_match_sklearn_with_ties():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, size=500)
    p = np.round(np.clip(0.5 + 0.2 * (y - 0.5) + rng.normal(0, 0.3, 500), 0, 1), 1)  # many ties
    assert stats.roc_auc(y, p) == pytest.approx(sk.roc_auc_score(y, p), abs=1e-12)
    assert stats.accuracy(y, p) == pytest.approx(sk.accuracy_score(y, p >= 0.5))
    assert math.isnan(stats.roc_auc(np.ones(5), p[:5]))


def test_count_violations_hand_computed():
    # one row, 3 steps valid of 4, 2 skills
    m = torch.tensor([[[0.2, 0.5], [0.1, 0.6], [0.1, 1.2], [0.0, 0.0]]])
    g = torch.tensor([[[0.0, -0.1], [0.3, 0.2], [-0.5, -0.2], [-9.0, -9.0]]])
    mask = torch.tensor([[True, True, True, False]])
    v = {k: (a.tolist(), b.tolist()) for k, (a, b) in stats.count_violations(m, g, mask).items()}
    # pairs (0,1), (1,2): decreases 0.2->0.1 only (0.1->0.1 is not a decrease; step 3 is padding)
    assert v["monotonicity"] == ([1], [4])
    assert v["negative_gain"] == ([3], [6])
    assert v["bounds"] == ([1], [6])
    assert stats.count_violations(m, None, mask).keys() == {"monotonicity", "bounds"}


def test_stratified_rows_are_deterministic_unique_and_spread_over_lengths():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 200, size=1000)
    a = stats.stratified_rows(lengths, 100)
    assert np.array_equal(a, stats.stratified_rows(lengths, 100))
    assert len(np.unique(a)) == 100
    order = np.lexsort((np.arange(1000), lengths))
    decile = np.empty(1000, dtype=int)
    decile[order] = np.arange(1000) // 100
    assert np.bincount(decile[a], minlength=10).tolist() == [10] * 10
    b = stats.stratified_rows(lengths, 37)
    assert len(np.unique(b)) == 37 and set(np.bincount(decile[b], minlength=10)) <= {3, 4}


def test_stratified_rows_returns_all_rows_when_n_exceeds_them():
    assert stats.stratified_rows(np.array([5, 3, 9]), 10).tolist() == [0, 1, 2]
    few = stats.stratified_rows(np.array([5, 3, 9, 1, 1]), 3)  # fewer rows than bins
    assert len(set(few.tolist())) == 3
    assert len(stats.stratified_rows(np.arange(19), 18)) == 18


def test_loss_shares_main_and_constraints_sum_to_one_and_rewards_stay_negative():
    s = trajectory.loss_shares({"bce": 0.6, "constraint_total": 0.3, "alignment": -0.02, "lag": -0.01,
                             "retention": 0.005})
    assert s["main"] + s["constraint_total"] == pytest.approx(1.0, abs=1e-12)
    assert s["main"] == pytest.approx(0.6 / 0.9)
    assert s["alignment"] == pytest.approx(-0.02 / 0.9) and s["alignment"] < 0
    assert s["lag"] < 0 and s["retention"] > 0
    assert trajectory.loss_shares({"bce": 0.0, "constraint_total": 0.0}) == dict.fromkeys(s)


# ------------------------------------------------------------------------------------ model passes

def test_semantic_metrics_match_known_functions_of_the_labels(local_batches):
    seqs = _seqs()
    model = StandIn()
    res = collect.semantic_metrics(model, seqs, 15, 4, "cpu")
    ref = _reference_steps(seqs, range(15))
    # M_t = 0.5 y + const -> +1 wherever defined; G_t = (1 - y) const -> -1
    defined = [i for i, (y, *_) in enumerate(ref) if len(y) >= 2 and y.min() < y.max()]
    assert res["mastery_correlation"] == pytest.approx(1.0)
    assert res["gain_correlation"] == pytest.approx(-1.0)
    assert res["correlation_students"] == len(defined) and res["n_students"] == 15
    tm = [pearsonr(0.5 * y + 0.1 * q / C, y)[0] for y, q, _, _ in (ref[i] for i in defined)]
    assert res["target_mastery_correlation"] == pytest.approx(np.mean(tm))
    y_all = np.concatenate([y for y, *_ in ref])
    q_all = np.concatenate([q for _, q, _, _ in ref])
    t_all = np.concatenate([t for *_, t, _ in ref])
    ok = np.isfinite(t_all)
    truth = stats.truth_from_outputs(collect.collect_outputs(model, seqs, np.arange(15), 4, "cpu"))
    assert truth["true_mastery_correlation"] == pytest.approx(
        pearsonr((0.5 * y_all + 0.1 * q_all / C)[ok], t_all[ok])[0])
    # var of m[:, :, k] over valid steps = 0.25 var(y) for every skill (population variance)
    assert res["mean_mastery_variance"] == pytest.approx(0.25 * y_all.var())
    assert res["min_mastery_variance"] == pytest.approx(0.25 * y_all.var())
    assert res["max_mastery_variance"] == pytest.approx(0.25 * y_all.var())
    drops = sum(int(((y[:-1] == 1) & (y[1:] == 0)).sum()) for y, *_ in ref)
    pairs = sum(max(len(y) - 1, 0) for y, *_ in ref)
    assert res["monotonicity_violation_rate"] == pytest.approx(drops / pairs)
    assert res["negative_gain_violation_rate"] == 0.0 and res["bounds_violation_rate"] == 0.0


def test_within_student_truth_correlation_equals_a_naive_per_row_loop(local_batches):
    """Per row: Pearson of m_t[q_t] and the truth over valid steps with a finite truth; mean over rows where it is
    defined (>= 2 such steps, both vary). Reference: np.corrcoef row by row."""
    seqs = _seqs(n=40, seed=23)
    out = collect.collect_outputs(StandIn(), seqs, np.arange(40), 6, "cpu")
    got = stats.truth_from_outputs(out)["true_mastery_correlation_within"]
    ref = _reference_steps(seqs, range(40))
    rows = []
    for y, q, t, _ in ref:
        m = 0.5 * y + 0.1 * q / C  # StandIn's m_t[q_t]
        ok = np.isfinite(t)
        if ok.sum() >= 2 and np.ptp(m[ok]) > 0 and np.ptp(t[ok]) > 0:
            rows.append(np.corrcoef(m[ok], t[ok])[0, 1])
    assert len(rows) >= 10
    assert got == pytest.approx(np.mean(rows), abs=1e-6)  # float32 inputs
    pooled = stats.truth_from_outputs(out)["true_mastery_correlation"]
    assert pooled != pytest.approx(got)  # two different questions


def test_semantic_metrics_do_not_depend_on_batch_size(local_batches):
    seqs = _seqs(n=31, seed=5)
    a = collect.semantic_metrics(StandIn(), seqs, 31, 3, "cpu")
    b = collect.semantic_metrics(StandIn(), seqs, 31, 100, "cpu")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-9), k


def test_one_pass_then_select_rows_equals_a_pass_over_those_rows(local_batches):
    seqs = _seqs(n=30, seed=11)
    out = collect.collect_outputs(StandIn(), seqs, np.arange(30), 7, "cpu")
    first = stats.semantic_from_outputs(stats.select_rows(out, np.arange(12)))
    assert first == pytest.approx(collect.semantic_metrics(StandIn(), seqs, 12, 5, "cpu"))
    strat = stats.stratified_rows(seqs.lengths, 10)
    glob = stats.global_alignment_from_outputs(stats.select_rows(out, strat))
    assert glob == pytest.approx(collect.global_alignment_metrics(StandIn(), seqs, 10, 4, "cpu"))
    assert stats.prediction_from_outputs(out, use_score_mask=True) == pytest.approx(
        collect.prediction_metrics(StandIn(), seqs, 30, "cpu", use_score_mask=True))


def _real_model_and_seqs(seed: int, mastery_gain_scale: float):
    """40 windows with truth and a small real GainAKT3Exp (gain head, clamp link) made after torch.manual_seed(0)."""
    from gainakt3exp.model.network import GainAKT3Exp

    ns = _seqs(n=40, seed=seed)
    seqs = data.Sequences(concepts=ns.concepts, responses=ns.responses, selectmasks=ns.selectmasks,
                          uids=np.arange(40), lengths=ns.lengths, truth=ns.truth.astype(np.float32),
                          source="memory", file_hash="0")
    torch.manual_seed(0)
    model = GainAKT3Exp(num_c=C, seq_len=12, d_model=16, n_heads=2, num_encoder_blocks=2, d_ff=24, dropout=0.1,
                        emb_type="qid", attention_bias="none", query_embedding="own", use_mastery_head=True,
                        use_gain_head=True, mastery_gain_scale=mastery_gain_scale, gain_scope="all_skills", mastery_link="clamp",
                        mastery_in_prediction="none", gain_head_init_scale=1.0, mastery_head_init_scale=1.0, shared_gain=False,
                        question_embedding="none")
    return seqs, model


def test_partial_passes_of_the_real_model_equal_one_full_pass():
    """semantic/global metrics run the model without its prediction head, prediction metrics without the
    mastery and gain heads (GainAKT3Exp.forward(logits=..., interpretation=...)): same numbers as a full pass."""
    seqs, model = _real_model_and_seqs(seed=17, mastery_gain_scale=0.1)
    out = collect.collect_outputs(model, seqs, np.arange(40), 8, "cpu")
    semantic = collect.semantic_metrics(model, seqs, 25, 8, "cpu")
    assert semantic["mastery_correlation"] is not None and semantic["gain_correlation"] is not None
    assert semantic == pytest.approx(stats.semantic_from_outputs(stats.select_rows(out, np.arange(25))),
                                     abs=1e-6)
    strat = stats.stratified_rows(seqs.lengths, 15)
    assert collect.global_alignment_metrics(model, seqs, 15, 8, "cpu") == pytest.approx(
        stats.global_alignment_from_outputs(stats.select_rows(out, strat)), abs=1e-6)
    assert collect.prediction_metrics(model, seqs, 8, "cpu", use_score_mask=False) == pytest.approx(
        stats.prediction_from_outputs(out, use_score_mask=False), abs=1e-6)


def test_reduced_pass_of_the_real_model_gives_the_full_pass_per_step_values():
    """collect_outputs(per_skill=False) runs the reduced pass (no (B, L, C) tensors): the same logits, skill means
    and target mastery as the full pass, so prediction, global and correlation metrics agree."""
    seqs, model = _real_model_and_seqs(seed=19, mastery_gain_scale=0.5)
    full = collect.collect_outputs(model, seqs, np.arange(40), 8, "cpu")
    reduced = collect.collect_outputs(model, seqs, np.arange(40), 8, "cpu", per_skill=False)
    for key in ("logits", "mastery_mean", "gain_mean", "target_mastery", "mask", "y", "truth"):
        torch.testing.assert_close(reduced[key], full[key], rtol=1e-5, atol=1e-6, equal_nan=True)
    assert reduced["mastery_row_mean"] is None and reduced["violations"] == {}
    strat = stats.stratified_rows(seqs.lengths, 15)
    assert stats.global_alignment_from_outputs(stats.select_rows(reduced, strat)) == pytest.approx(
        stats.global_alignment_from_outputs(stats.select_rows(full, strat)), abs=1e-6)


def test_real_make_batch_gives_the_same_metrics_as_the_local_builder(monkeypatch):
    ns = _seqs(n=25, seed=13)
    seqs = data.Sequences(concepts=ns.concepts, responses=ns.responses, selectmasks=ns.selectmasks,
                          uids=np.arange(25), lengths=ns.lengths, truth=ns.truth.astype(np.float32),
                          source="memory", file_hash="0")
    real = collect.semantic_metrics(StandIn(), seqs, 25, 6, "cpu")
    real_pred = collect.prediction_metrics(StandIn(), seqs, 6, "cpu", use_score_mask=True)
    monkeypatch.setattr(data, "make_batch", _make_batch)
    assert real == pytest.approx(collect.semantic_metrics(StandIn(), seqs, 25, 6, "cpu"), rel=1e-6)
    assert real_pred == pytest.approx(collect.prediction_metrics(StandIn(), seqs, 6, "cpu", use_score_mask=True))


def test_semantic_metrics_without_gain_head_or_truth_report_none(local_batches):
    res = collect.semantic_metrics(StandIn(gains=False), _seqs(truth=False), 10, 4, "cpu")
    assert res["gain_correlation"] is None and res["negative_gain_violation_rate"] is None
    assert stats.truth_from_outputs(collect.collect_outputs(StandIn(gains=False), _seqs(truth=False), np.arange(10),
                                                             4, "cpu"))["true_mastery_correlation"] is None
    assert res["mastery_correlation"] == pytest.approx(1.0)
    none = collect.semantic_metrics(StandIn(mastery=False, gains=False), _seqs(), 10, 4, "cpu")
    assert none["mastery_correlation"] is None and none["mean_mastery_variance"] is None
    assert none["correlation_students"] == 0


def test_collect_outputs_runs_in_eval_mode_without_grad_and_restores_training(local_batches):
    model = StandIn()
    model.train()
    out = collect.collect_outputs(model, _seqs(), np.array([4, 2, 7]), 2, "cpu")
    assert model.training and model.seen == [(False, False), (False, False)]
    assert out["rows"].tolist() == [4, 2, 7]


def test_prediction_metrics_use_score_mask_only_when_asked(local_batches):
    seqs = _seqs(n=40, seed=7)
    ref = _reference_steps(seqs, range(40))
    y = np.concatenate([r[0] for r in ref])
    z = np.concatenate([(r[1] % 3) - 1 for r in ref]).astype(float)
    s = np.concatenate([r[3] for r in ref]).astype(bool)
    p = 1 / (1 + np.exp(-z))
    for use, sel in ((False, np.ones_like(s)), (True, s)):
        res = collect.prediction_metrics(StandIn(), seqs, 8, "cpu", use_score_mask=use)
        bce = -np.mean(y[sel] * np.log(p[sel]) + (1 - y[sel]) * np.log(1 - p[sel]))
        assert res["n"] == int(sel.sum())
        assert res["loss"] == pytest.approx(bce)
        assert res["auc"] == pytest.approx(stats.roc_auc(y[sel], p[sel]))
        assert res["accuracy"] == pytest.approx(np.mean((p[sel] >= 0.5) == y[sel]))


def test_global_alignment_pools_all_valid_steps_of_stratified_rows(local_batches):
    seqs = _seqs(n=50, seed=9)
    res = collect.global_alignment_metrics(StandIn(), seqs, 20, 6, "cpu")
    rows = stats.stratified_rows(seqs.lengths, 20)
    y = np.concatenate([r[0] for r in _reference_steps(seqs, rows)])
    assert res["global_alignment_students"] == 20
    assert res["global_alignment_mastery_corr"] == pytest.approx(1.0)
    assert res["global_alignment_gain_corr"] == pytest.approx(-1.0)
    assert y.size > 20
    no_gain = collect.global_alignment_metrics(StandIn(gains=False), seqs, 500, 64, "cpu")
    assert no_gain["global_alignment_gain_corr"] is None and no_gain["global_alignment_students"] == 50


# ---------------------------------------------------------------------------- trajectory and keys

def _values():
    return {"mastery_correlation": 0.07, "gain_correlation": float("nan"), "warmup_scale": 0.25,
            "peak_mastery_corr": torch.tensor(0.07), "lag_corr_count": np.int64(0),
            "consistency_loss_weight_current": 0.3, "sparsity_loss_weight_current": 0.2,
            "loss_shares": trajectory.loss_shares({"bce": 0.6, "constraint_total": 0.3, "alignment": -0.01}),
            "mean_mastery_variance": 0.1, "per_lag_correlations": [0.1, float("nan")],
            "target_mastery_correlation": 0.2, "monotonicity_violation_rate": 0.0, "extra": 1}


def test_trajectory_entry_has_the_seed_keys_and_nulls_for_missing_values():
    e = trajectory.trajectory_entry(2, _values())
    assert list(e)[:24] == [
        "epoch", "mastery_correlation", "gain_correlation", "warmup_scale", "alignment_corr_mastery",
        "alignment_corr_gain", "global_alignment_mastery_corr", "global_alignment_gain_corr",
        "effective_alignment_weight", "peak_mastery_corr", "retention_loss_value", "mean_lag_corr",
        "lag_corr_count", "consistency_loss_weight_current", "sparsity_loss_weight_current", "loss_shares",
        "mean_mastery_variance", "min_mastery_variance", "max_mastery_variance", "per_lag_correlations",
        "target_mastery_correlation", "monotonicity_violation_rate", "negative_gain_violation_rate",
        "bounds_violation_rate"]
    assert "true_mastery_correlation" not in e and "extra" not in e
    assert e["gain_correlation"] is None and e["alignment_corr_mastery"] is None
    assert e["lag_corr_count"] == 0 and e["per_lag_correlations"] == [0.1, None]
    assert list(e["loss_shares"]) == ["main", "constraint_total", "alignment", "lag", "retention"]
    json.dumps(e, allow_nan=False)
    assert trajectory.trajectory_entry(1, {"true_mastery_correlation": 0.5})["true_mastery_correlation"] == 0.5


def test_epoch_metric_dict_groups_keys_and_drops_none_nan_and_lists():
    entry = trajectory.trajectory_entry(2, _values())
    d = trajectory.epoch_metric_dict({"loss": 0.5, "auc": 0.7, "learning_rate": 1e-3, "epoch seconds": 3.0},
                                  {"loss": 0.6, "auc": float("nan"), "accuracy": 0.7}, entry)
    assert all(re.fullmatch(r"[A-Za-z0-9_\-./]+", k) for k in d)
    assert all(isinstance(v, float) and math.isfinite(v) for v in d.values())
    assert d["train/loss"] == 0.5 and d["train/epoch_seconds"] == 3.0 and d["val/accuracy"] == 0.7
    assert "val/auc" not in d
    assert d["trajectory/mastery_correlation"] == 0.07 and d["trajectory/peak_mastery_corr"] == pytest.approx(0.07)
    assert d["weights/warmup_scale"] == 0.25 and d["weights/sparsity_loss_weight_current"] == 0.2
    assert d["loss_shares/main"] + d["loss_shares/constraint_total"] == pytest.approx(1.0)
    assert d["violations/monotonicity_violation_rate"] == 0.0
    assert not any("per_lag" in k or "gain_correlation" in k or "epoch" == k.split("/")[-1] for k in d)


def test_late_fusion_of_a_hand_made_table_follows_pykts_definitions():
    """Answers (qidx) 4: [0.9, 0.2] (1 of 2 high: vote takes the high mean, all the low), 7: [0.6, 0.7, 0.1]
    (2 of 3 high), 9: [0.3] (none high), 12: [0.55, 0.8] (all high); late_mean is rounded to 4 decimals."""
    p = np.array([0.9, 0.2, 0.6, 0.7, 0.1, 0.3, 0.55, 0.8, 0.123456])
    y = np.array([1, 1, 0, 0, 0, 1, 1, 1, 0])
    qidx = np.array([4, 4, 7, 7, 7, 9, 12, 12, 13])
    fused = stats.late_fusion(p, y, qidx)
    assert fused["late_mean"].tolist() == [0.55, round(1.4 / 3, 4), 0.3, 0.675, 0.1235]
    assert fused["late_vote"].tolist() == pytest.approx([0.9, 0.65, 0.3, 0.675, 0.123456])
    assert fused["late_all"].tolist() == pytest.approx([0.2, 0.1, 0.3, 0.675, 0.123456])
    assert fused["label"].tolist() == [1, 0, 1, 1, 0]
    metrics = stats.question_level_metrics(p, y, qidx)
    # labels 1,0,1,1,0; late_mean 0.55, 0.4667, 0.3, 0.675, 0.1235: positive vs negative pairs won 5 of 6
    assert metrics["auclate_mean"] == pytest.approx(5 / 6)
    assert metrics["acclate_mean"] == pytest.approx(4 / 5)  # only answer 9 (label 1, 0.3) is on the wrong side
    assert metrics["auclate_all"] == 1.0  # positives 0.2, 0.3, 0.675 all above negatives 0.1, 0.1235
    assert metrics["acclate_vote"] == pytest.approx(3 / 5) and metrics["answers"] == 5  # 0.65 and 0.3 wrong
    assert metrics["aucconcepts"] == pytest.approx(pytest.importorskip("sklearn.metrics").roc_auc_score(y, p))


# --- reliability bins and the students drawn by gakt-eval --------------------------------------------------------

def test_reliability_bins_match_a_hand_computation():
    p = np.array([0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95])
    y = np.array([0, 0, 0, 1, 0, 1, 1, 0, 1, 1])
    got = stats.reliability_bins(p, y, bins=5)  # quintile edges 0.05, 0.23, 0.41, 0.59, 0.77, 0.95: two per bin
    np.testing.assert_allclose(got["edges"], [0.05, 0.23, 0.41, 0.59, 0.77, 0.95])
    assert got["count"].tolist() == [2, 2, 2, 2, 2] and got["count"].sum() == p.size
    np.testing.assert_allclose(got["mean_p"], [0.10, 0.30, 0.50, 0.70, 0.90])
    np.testing.assert_allclose(got["rate"], [0.0, 0.5, 0.5, 0.5, 1.0])


def test_reliability_bins_put_ties_at_an_edge_in_the_higher_bin():
    p = np.array([0.2, 0.2, 0.2, 0.2, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0])
    y = np.array([0, 0, 1, 0, 1, 1, 1, 0, 1, 1])
    got = stats.reliability_bins(p, y, bins=4)  # edges 0.2, 0.2, 0.95, 1.0, 1.0
    assert got["count"].tolist() == [0, 5, 0, 5] and got["count"].sum() == p.size
    assert math.isnan(got["mean_p"][0]) and math.isnan(got["rate"][2])
    np.testing.assert_allclose(got["mean_p"][[1, 3]], [(0.8 + 0.9) / 5, 1.0])
    np.testing.assert_allclose(got["rate"][[1, 3]], [2 / 5, 4 / 5])


def test_reliability_bins_of_no_steps_are_empty():
    got = stats.reliability_bins(np.zeros(0), np.zeros(0))
    assert got["count"].tolist() == [0] * 10 and np.isnan(got["mean_p"]).all()


def test_longest_students_take_one_row_per_student_longest_first():
    lengths = np.array([50, 200, 200, 30, 200, 120])
    uids = np.array([7, 1, 1, 2, 3, 4])  # rows 1 and 2: one student's history cut into windows
    assert stats.longest_students(lengths, uids, 3).tolist() == [1, 4, 5]
    assert stats.longest_students(lengths, uids, 10).tolist() == [1, 4, 5, 0, 3]


def test_grouped_auc_averages_the_students_with_both_answers():
    from gainakt3exp.metrics.stats import grouped_auc, roc_auc

    y = np.array([1, 0, 1, 0, 1, 1, 0, 1])
    p = np.array([0.9, 0.1, 0.2, 0.8, 0.5, 0.6, 0.3, 0.7])
    group = np.array([0, 0, 1, 1, 2, 2, 3, 3])  # student 2 answered right twice: no AUC
    mean, n = grouped_auc(y, p, group)
    expected = [roc_auc(y[group == g], p[group == g]) for g in (0, 1, 3)]
    assert n == 3 and mean == pytest.approx(np.mean(expected)) and expected == [1.0, 0.0, 1.0]
    assert grouped_auc(np.array([1, 1]), np.array([0.2, 0.3]), np.array([0, 0])) == (None, 0)


def test_mastery_auc_ranks_the_answers_by_the_mastery_of_the_concept_answered_next():
    from gainakt3exp.metrics.stats import mastery_auc_from_outputs, roc_auc

    y = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    m = torch.tensor([[0.9, 0.2, 0.4, 0.5], [0.3, 0.6, 0.1, 0.7]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    score = torch.tensor([[False, False, True, False], [False, True, False, True]])
    out = {"y": y, "target_mastery": m, "mask": mask, "score": score}
    every = mastery_auc_from_outputs(out, use_score_mask=False, students=np.array([7, 8]))
    assert every["mastery_auc"] == pytest.approx(roc_auc(y[mask].numpy(), m[mask].numpy()))
    assert every["mastery_auc_within"] == pytest.approx((1.0 + 0.25) / 2) and every["mastery_auc_students"] == 2
    scored = mastery_auc_from_outputs(out, use_score_mask=True)
    assert scored["mastery_auc"] == pytest.approx(roc_auc(np.array([1, 1, 0]), np.array([0.4, 0.6, 0.7])))
    assert scored["mastery_auc_within"] is None
    assert mastery_auc_from_outputs({**out, "target_mastery": None}, use_score_mask=False)["mastery_auc"] is None
