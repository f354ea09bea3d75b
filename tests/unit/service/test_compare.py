"""gakt-compare: runs made directly in a real local SQLite store (no training), compared through the tracking API.

One store per module (creating MLflow's tables takes seconds); each test uses its own 6-digit ids.
"""
from __future__ import annotations

import itertools
import json

import pytest
from mlflow.entities import Metric, Param

from gainakt3exp import tracking
from gainakt3exp.errors import RunNotFoundError
from gainakt3exp.service import compare

_ids = itertools.count(310001)
BASE = {
    "val/auc": [0.60, 0.70, 0.68],
    "val/accuracy": [0.61, 0.66, 0.67],
    "val/loss": [0.69, 0.60, 0.62],
    "train/loss": [0.70, 0.58, 0.50],
    "trajectory/mastery_correlation": [0.10, 0.30, 0.35],
    "trajectory/gain_correlation": [0.05, 0.20, 0.22],
    "loss_shares/main": [0.9, 0.8, 0.8],
    "train/epoch_seconds": [1.5, 1.4, 1.6],
    "train/interactions_per_second": [1000.0, 1100.0, 1050.0],
}
TAGS = {"gakt.git_commit": "abc123", "gakt.git_dirty": "false", "gakt.data_hash": "d1", "gakt.torch_version": "2.13.0",
        "gakt.mlflow_version": "3.17.2", "gakt.python_version": "3.12.3", "gakt.device": "cpu",
        tracking.TAG_OUTCOME: "finished"}
PARAMS = {"lr": "0.001", "epochs": "3", "seed": "42"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("compare_store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path}/mlflow.db")
        client = tracking.connect()
        yield client, tracking.ensure_experiment(client, "test")


def make_run(store, exp_id, metrics=None, tags=None, params=None, repro_of=None, start_time=None, batch=None):
    """A FINISHED run with per-epoch metrics (step = epoch, 1-based), tags and params."""
    client, experiment = store
    all_tags = {**TAGS, tracking.TAG_EXP_ID: exp_id, tracking.TAG_TITLE: "baseline",
                tracking.TAG_KIND: "repro" if repro_of else "train", **(tags or {})}
    if repro_of:
        all_tags[tracking.TAG_REPRO_OF] = repro_of
    run = client.create_run(experiment, start_time=start_time, tags=all_tags)
    rid = run.info.run_id
    ms = [Metric(k, float(v), 1000 + step, step) for k, vs in (BASE if metrics is None else metrics).items()
          for step, v in enumerate(vs, start=1)]
    ms += [Metric("batch/loss", float(v), 1000 + step, step) for step, v in enumerate(batch or [])]
    client.log_batch(rid, metrics=ms, params=[Param(k, v) for k, v in (PARAMS if params is None else params).items()])
    client.set_terminated(rid, "FINISHED")
    return rid


def pair(store, repro_metrics=None, repro_tags=None, repro_params=None, original_metrics=None):
    exp_id = str(next(_ids))
    original = make_run(store, exp_id, metrics=original_metrics)
    repro = make_run(store, exp_id, metrics=repro_metrics, tags=repro_tags, params=repro_params, repro_of=original)
    return exp_id, original, repro


def shifted(key, delta, base=BASE):
    return {**base, key: [v + delta for v in base[key]]}


def test_identical_histories_give_identical_and_exit_0(store):
    exp_id, original, repro = pair(store)
    report = compare.compare_runs(store[0], exp_id)
    assert report["original"]["run_id"] == original and report["reproduction"]["run_id"] == repro
    assert report["verdict"] == "identical" and report["failing"] == []
    assert compare.verdict_exit_code(report) == 0
    assert compare.format_report(report).splitlines()[-1] == "verdict: identical"


def test_summary_rows_read_best_epoch_values(store):
    exp_id, _, _ = pair(store, repro_metrics=shifted("trajectory/mastery_correlation", 1e-6))
    rows = {r["name"]: r for r in compare.compare_runs(store[0], exp_id)["summary"]}
    assert rows["Best Val AUC"]["original"] == pytest.approx(0.70)
    assert rows["Best Val Accuracy"]["original"] == pytest.approx(0.67)  # max over epochs, not at the best epoch
    assert rows["Mastery Correlation"]["original"] == pytest.approx(0.30)  # at epoch 2 = argmax val/auc
    assert rows["Mastery Correlation"]["repro"] == pytest.approx(0.30 + 1e-6)
    assert rows["Gain Correlation"]["original"] == pytest.approx(0.20)
    assert rows["Best Epoch"]["original"] == 2 and rows["Best Epoch"]["status"] == "INFO"
    assert "Test AUC" not in rows


def test_tiny_difference_is_within_tolerance(store):
    exp_id, _, _ = pair(store, repro_metrics=shifted("train/loss", 1e-6))
    report = compare.compare_runs(store[0], exp_id, tolerance=1e-4)
    assert report["verdict"] == "within tolerance"
    assert compare.verdict_exit_code(report) == 0
    assert compare.format_report(report).splitlines()[-1] == "verdict: within tolerance (1e-04)"


def test_metric_off_by_a_hundredth_differs_and_is_named(store):
    exp_id, _, _ = pair(store, repro_metrics=shifted("val/loss", 0.01))
    report = compare.compare_runs(store[0], exp_id)
    assert report["verdict"] == "differs" and report["failing"] == ["val/loss"]
    assert compare.verdict_exit_code(report) == 1
    row = next(r for r in report["metrics"] if r["name"] == "val/loss")
    assert row["status"] == "FAIL" and row["diff"] == pytest.approx(0.01)
    text = compare.format_report(report)
    assert "val/loss" in text and "FAIL" in text
    assert text.splitlines()[-1] == "verdict: differs (1 metric)"


def test_different_epoch_counts_differ(store):
    short = {k: v[:2] for k, v in BASE.items()}
    exp_id, _, _ = pair(store, repro_metrics=short)
    report = compare.compare_runs(store[0], exp_id)
    assert report["verdict"] == "differs"
    assert "val/auc" in report["failing"] and "train/loss" in report["failing"]
    row = next(r for r in report["metrics"] if r["name"] == "val/auc")
    assert row["diff"] == 0 and "steps differ" in row["note"]


def test_metric_in_one_run_only_differs(store):
    exp_id, _, _ = pair(store, repro_metrics={**BASE, "violations/monotonicity": [0.0, 0.0, 0.0]})
    report = compare.compare_runs(store[0], exp_id)
    assert report["failing"] == ["violations/monotonicity"]


def test_batch_metrics_are_compared_per_global_step(store):
    exp_id = str(next(_ids))
    original = make_run(store, exp_id, batch=[0.7, 0.6, 0.5, 0.4])
    make_run(store, exp_id, batch=[0.7, 0.6, 0.5, 0.45], repro_of=original)
    row = next(r for r in compare.compare_runs(store[0], exp_id)["metrics"] if r["name"] == "batch/loss")
    assert row["status"] == "FAIL" and row["diff"] == pytest.approx(0.05) and "step 3" in row["note"]


def test_latest_reproduction_is_picked(store):
    exp_id = str(next(_ids))
    original = make_run(store, exp_id, start_time=1_000_000)
    make_run(store, exp_id, metrics=shifted("val/loss", 0.5), repro_of=original, start_time=2_000_000)
    newest = make_run(store, exp_id, repro_of=original, start_time=3_000_000)
    report = compare.compare_runs(store[0], exp_id)
    assert report["reproduction"]["run_id"] == newest and report["verdict"] == "identical"


def test_explicit_repro_and_reproduction_id_as_ref(store):
    exp_id = str(next(_ids))
    original = make_run(store, exp_id, start_time=1_000_000)
    older = make_run(store, exp_id, metrics=shifted("val/loss", 0.5), repro_of=original, start_time=2_000_000)
    make_run(store, exp_id, repro_of=original, start_time=3_000_000)
    assert compare.compare_runs(store[0], exp_id, repro=older)["reproduction"]["run_id"] == older
    report = compare.compare_runs(store[0], older)
    assert report["original"]["run_id"] == original and report["reproduction"]["run_id"] == older


def test_six_digit_id_and_run_id_resolve_to_the_same_original(store):
    exp_id, original, repro = pair(store)
    by_exp = compare.compare_runs(store[0], exp_id)
    by_run = compare.compare_runs(store[0], original)
    assert by_exp["original"]["run_id"] == by_run["original"]["run_id"] == original
    assert by_exp["reproduction"]["run_id"] == repro


def test_unknown_ids_raise_run_not_found(store):
    with pytest.raises(RunNotFoundError, match="no run has experiment id 999999"):
        compare.compare_runs(store[0], "999999")
    with pytest.raises(RunNotFoundError, match="does not exist"):
        compare.compare_runs(store[0], "0" * 32)


def test_run_without_reproduction_says_how_to_make_one(store):
    exp_id = str(next(_ids))
    make_run(store, exp_id)
    with pytest.raises(RunNotFoundError, match=f"has no reproduction; run gakt-repro {exp_id}"):
        compare.compare_runs(store[0], exp_id)


def test_differing_code_and_data_are_warnings_not_failures(store):
    exp_id, _, _ = pair(store, repro_tags={"gakt.git_commit": "def456", "gakt.data_hash": "d2"},
                        repro_params={**PARAMS, "lr": "0.002"})
    report = compare.compare_runs(store[0], exp_id)
    assert report["verdict"] == "identical"
    assert "tag gakt.git_commit differs: abc123 -> def456" in report["warnings"]
    assert "tag gakt.data_hash differs: d1 -> d2" in report["warnings"]
    assert "params differ: lr 0.001 -> 0.002" in report["warnings"]
    text = compare.format_report(report)
    assert "Warnings:" in text and "gakt.git_commit" in text and "gakt.data_hash" in text


def test_timing_metrics_are_info_and_do_not_change_the_verdict(store):
    slower = {**shifted("train/epoch_seconds", 3.0), "train/interactions_per_second": [1.0, 2.0, 3.0]}
    exp_id, _, _ = pair(store, repro_metrics=slower)
    report = compare.compare_runs(store[0], exp_id)
    assert report["verdict"] == "identical"
    statuses = {r["name"]: r["status"] for r in report["metrics"]}
    assert statuses["train/epoch_seconds"] == "INFO" and statuses["train/interactions_per_second"] == "INFO"
    assert "train/epoch_seconds" in compare.format_report(report)


def test_test_auc_compared_when_both_evaluated_and_info_when_one(store):
    evaluated = {**BASE, "eval/test_auc": [0.7, 0.7, 0.71]}
    exp_id, _, _ = pair(store, original_metrics=evaluated, repro_metrics={**BASE, "eval/test_auc": [0.7, 0.7, 0.75]})
    report = compare.compare_runs(store[0], exp_id)
    test_row = next(r for r in report["summary"] if r["name"] == "Test AUC")
    assert test_row["status"] == "FAIL" and test_row["diff"] == pytest.approx(0.04)
    exp_id, _, _ = pair(store, original_metrics=evaluated)
    report = compare.compare_runs(store[0], exp_id)
    assert report["verdict"] == "identical"
    assert next(r for r in report["summary"] if r["name"] == "Test AUC")["status"] == "INFO"


def test_json_output_parses_and_holds_the_verdict(store):
    exp_id, _, _ = pair(store, repro_metrics=shifted("val/loss", 0.01))
    data = json.loads(compare.report_json(compare.compare_runs(store[0], exp_id)))
    assert data["verdict"] == "differs" and data["exit_code"] == 1 and data["failing"] == ["val/loss"]
    assert {r["name"] for r in data["metrics"]} >= set(BASE)


def test_an_evaluation_metric_only_the_reproduction_logs_is_information_one_it_lost_differs(store):
    """A run evaluated before gakt-eval logged pyKT's names (eval/headline_auc ...) still reproduces identical;
    an evaluation metric the reproduction lost is a difference."""
    evaluated = {**BASE, "eval/test_auc": [0.7, 0.7, 0.71]}
    newer = {**evaluated, "eval/headline_auc": [0.7, 0.7, 0.71]}
    exp_id, _, _ = pair(store, original_metrics=evaluated, repro_metrics=newer)
    report = compare.compare_runs(store[0], exp_id)
    assert report["verdict"] == "identical"
    row = next(r for r in report["metrics"] if r["name"] == "eval/headline_auc")
    assert row["status"] == "INFO" and "did not log" in row["note"]
    exp_id, _, _ = pair(store, original_metrics=newer, repro_metrics=evaluated)
    assert compare.compare_runs(store[0], exp_id)["failing"] == ["eval/headline_auc"]


def test_a_metric_only_the_reproduction_logs_is_information_only_when_its_code_is_newer():
    from gainakt3exp.service.compare import FAIL, INFO, PASS, history_rows

    original = {"val/auc": {1: 0.7, 2: 0.71}}
    reproduction = {"val/auc": {1: 0.7, 2: 0.71}, "trajectory/mastery_auc": {1: 0.6, 2: 0.62}}
    same_code = {r["name"]: r["status"] for r in history_rows(original, reproduction, 1e-4)}
    newer_code = {r["name"]: r for r in history_rows(original, reproduction, 1e-4, newer_code=True)}
    assert same_code == {"val/auc": PASS, "trajectory/mastery_auc": FAIL}
    assert newer_code["val/auc"]["status"] == PASS and newer_code["trajectory/mastery_auc"]["status"] == INFO
    assert "original's code did not log" in newer_code["trajectory/mastery_auc"]["note"]
    missing_in_repro = {r["name"]: r["status"] for r in history_rows(reproduction, original, 1e-4, newer_code=True)}
    assert missing_in_repro["trajectory/mastery_auc"] == FAIL  # a metric the reproduction lost still fails
