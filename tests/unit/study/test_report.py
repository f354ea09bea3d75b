"""What a study's parent records and what gakt-compare / gakt-runs say of a study, on runs made directly in a real
local SQLite store (no training, no Ray): the aggregate per grid point, the best point, attempts, the
comparison verdict and the run list."""
from __future__ import annotations

import csv
import io
import itertools
import json
import math
import statistics

import pytest
from click.testing import CliRunner
from mlflow.entities import Metric

from gainakt3exp import tracking
from gainakt3exp.cli import main
from gainakt3exp.service import runs
from gainakt3exp.study import driver as study
from gainakt3exp.study import lifecycle
from gainakt3exp.study import report as study_report
from gainakt3exp.study import repro as study_repro

_ids = itertools.count(610001)




@pytest.fixture
def experiment_id(client, request):
    return tracking.ensure_experiment(client, f"study_{request.node.name}"[:60])


def make_parent(client, experiment_id, *, grid=None, evaluate=False, repro_of=None, total=4):
    study_id = str(next(_ids))
    tags = {tracking.TAG_REPRO_OF: repro_of} if repro_of else {}
    parent_id = study.create_parent(client, experiment_id, kind="study", study_id=study_id, title="t",
                                    run_name=f"20260101_000000_gainakt3exp_t_{study_id}", total=total, tags=tags)
    config = {"kind": "study", "study_id": study_id, "grid": grid or {}, "evaluate": evaluate}
    tracking.publish_bytes(client, parent_id, "config.json", tracking.json_bytes(config))
    return parent_id


def make_child(client, experiment_id, parent_id, *, slot, fold, seed, val_auc, point=0, values=None, attempt=1,
               status="FINISHED", test_auc=None, repro_of=None, correlation=(0.1, 0.2, 0.3)):
    tags = {tracking.TAG_STUDY_RUN: parent_id, "mlflow.parentRunId": parent_id,
            tracking.TAG_SLOT: str(slot), tracking.TAG_ATTEMPT: str(attempt),
            tracking.TAG_POINT: str(point), tracking.TAG_POINT_VALUES: json.dumps(values or {}),
            tracking.TAG_FOLD: str(fold), tracking.TAG_SEED: str(seed), tracking.TAG_EXP_ID: str(next(_ids)),
            tracking.TAG_OUTCOME: "finished" if status == "FINISHED" else "failed"}
    if repro_of:
        tags[tracking.TAG_REPRO_OF] = repro_of
    if test_auc is not None:
        tags["gakt.evaluated"] = "true"
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    metrics = [Metric("val/auc", v, 1000 + i, i) for i, v in enumerate(val_auc, start=1)]
    metrics += [Metric("val/accuracy", 0.5 + v / 10, 1000 + i, i) for i, v in enumerate(val_auc, start=1)]
    metrics += [Metric("trajectory/mastery_correlation", c, 1000 + i, i) for i, c in enumerate(correlation, start=1)]
    if test_auc is not None:
        metrics.append(Metric("eval/test_auc", test_auc, 2000, 1))
    client.log_batch(run_id, metrics=metrics)
    client.set_terminated(run_id, status)
    return run_id


def test_a_grid_study_aggregates_each_point_and_marks_the_best_by_mean_val_auc(client, experiment_id):
    parent = make_parent(client, experiment_id, grid={"learning_rate": [0.001, 0.003]})
    aucs = {0: [[0.60, 0.62], [0.58, 0.61]], 1: [[0.55, 0.70], [0.66, 0.64]]}
    for point, (a, b) in aucs.items():
        for k, history in enumerate((a, b)):
            make_child(client, experiment_id, parent, slot=2 * point + k, fold=k, seed=42, val_auc=history,
                       point=point, values={"learning_rate": [0.001, 0.003][point]})
    report = study_report.publish_report(client, parent)
    metrics = client.get_run(parent).data.metrics
    best = {0: [0.62, 0.61], 1: [0.70, 0.66]}
    for point in (0, 1):
        assert metrics[f"study/point_{point}/val_auc_mean"] == math.fsum(best[point]) / 2
        assert metrics[f"study/point_{point}/val_auc_std"] == statistics.stdev(best[point])
    assert report["best_point"] == 1 and metrics["study/val_auc_mean"] == math.fsum(best[1]) / 2
    # accuracy and correlations are read at the best val AUC epoch (epoch 2 for 0.70, 1 for 0.66)
    assert metrics["study/point_1/mastery_correlation_mean"] == math.fsum([0.2, 0.1]) / 2
    tags = client.get_run(parent).data.tags
    assert tags["gakt.study_best_point"] == "1" and tags["gakt.study_best_values"] == '{"learning_rate": 0.003}'
    md = tracking.download_text(client, parent, "study_results.md").decode()
    assert "| 1 (best): learning_rate=0.003 | 2 | 0.6800 ± 0.0283 |" in md
    rows = list(csv.DictReader(io.StringIO(tracking.download_text(client, parent, "study_summary.csv").decode())))
    assert [(r["point"], r["learning_rate"], r["best"]) for r in rows] == [("0", "0.001", "False"),
                                                                           ("1", "0.003", "True")]


def test_the_newest_attempt_of_a_slot_counts_and_a_single_child_has_no_std(client, experiment_id):
    parent = make_parent(client, experiment_id, total=1)
    make_child(client, experiment_id, parent, slot=0, fold=0, seed=42, val_auc=[0.5], status="FAILED")
    newer = make_child(client, experiment_id, parent, slot=0, fold=0, seed=42, val_auc=[0.61], attempt=2)
    report = study_report.publish_report(client, parent)
    assert [r["run_id"] for r in report["children"]] == [newer] and report["finished"] == 1
    metrics = client.get_run(parent).data.metrics
    assert metrics["study/val_auc_mean"] == 0.61 and "study/val_auc_std" not in metrics
    assert study_report.pm(0.61, None) == "0.6100"


def test_an_evaluated_study_aggregates_test_auc(client, experiment_id):
    parent = make_parent(client, experiment_id, evaluate=True, total=2)
    for slot, test_auc in enumerate((0.70, 0.72)):
        make_child(client, experiment_id, parent, slot=slot, fold=slot, seed=42, val_auc=[0.6], test_auc=test_auc)
    study_report.publish_report(client, parent)
    metrics = client.get_run(parent).data.metrics
    assert metrics["study/test_auc_mean"] == math.fsum([0.70, 0.72]) / 2
    assert metrics["study/test_auc_std"] == statistics.stdev([0.70, 0.72])


def _study_with_reproduction(client, experiment_id, repro_aucs):
    original = make_parent(client, experiment_id, total=2)
    copy = make_parent(client, experiment_id, total=2, repro_of=original)
    client.set_tag(copy, tracking.TAG_EXP_ID, client.get_run(original).data.tags[tracking.TAG_EXP_ID])
    for slot, (auc, again) in enumerate(zip([[0.6, 0.65], [0.55, 0.6]], repro_aucs)):
        child = make_child(client, experiment_id, original, slot=slot, fold=slot, seed=42, val_auc=auc)
        make_child(client, experiment_id, copy, slot=slot, fold=slot, seed=42, val_auc=again, repro_of=child)
    return client.get_run(original).data.tags[tracking.TAG_EXP_ID]


def test_compare_of_a_study_is_identical_when_every_child_matches(client, experiment_id):
    study_id = _study_with_reproduction(client, experiment_id, [[0.6, 0.65], [0.55, 0.6]])
    report = study_repro.compare_study(client, study_id)
    assert report["verdict"] == "identical" and [r["verdict"] for r in report["children"]] == ["identical"] * 2


def test_compare_of_a_study_whose_child_differs_says_differs_and_exits_1(client, experiment_id):
    study_id = _study_with_reproduction(client, experiment_id, [[0.6, 0.65], [0.55, 0.61]])
    report = study_repro.compare_study(client, study_id)
    assert report["verdict"] == "differs"
    assert [r["verdict"] for r in report["children"]] == ["identical", "differs"]
    assert report["children"][1]["val_auc_diff"] == pytest.approx(0.01)
    result = CliRunner().invoke(main, ["compare", study_id])
    assert result.exit_code == 1, result.output
    assert result.output.strip().endswith("verdict: differs (1 of 2 children)")


def test_runs_lists_a_study_with_its_children_count_and_not_its_children(client, experiment_id):
    parent = make_parent(client, experiment_id, total=2)
    make_child(client, experiment_id, parent, slot=0, fold=0, seed=42, val_auc=[0.6])
    client.set_tag(parent, tracking.TAG_FINISHED, "1")
    name = client.get_experiment(experiment_id).name
    rows = runs.list_runs(client, experiment_name=name)
    assert [(r["run_id"], r["kind"], r["children"]) for r in rows] == [(parent, "study", "1/2")]
    assert "1/2" in runs.format_runs(rows).splitlines()[2]


def test_a_started_child_counts_as_running_until_its_task_returns(client, experiment_id):
    """Progress: a child is running from its start until the engine reports its task done (training, its
    evaluation, the end of its mlflow run); a pending child waits for a CPU."""
    parent = make_parent(client, experiment_id, evaluate=True, total=4)
    training = make_child(client, experiment_id, parent, slot=0, fold=0, seed=1, val_auc=[0.6])
    client.set_tag(training, tracking.TAG_OUTCOME, "running")
    evaluating = make_child(client, experiment_id, parent, slot=1, fold=1, seed=1, val_auc=[0.6])
    done = make_child(client, experiment_id, parent, slot=2, fold=2, seed=1, val_auc=[0.6], test_auc=0.7)
    waiting = make_child(client, experiment_id, parent, slot=3, fold=3, seed=1, val_auc=[0.6])
    client.set_tag(waiting, tracking.TAG_OUTCOME, "pending")
    not_returned = {training, evaluating, waiting}  # the engine returned `done`'s task
    assert lifecycle.count_running(client, parent, not_returned) == 2
    assert lifecycle.count_running(client, parent, not_returned | {done}) == 3
