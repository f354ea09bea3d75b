"""The benchmark scripts still run and print one JSON line per measurement (smoke test on tiny synthetic data).

Timing claims live in benchmarks/ and docs/results.md; this test only keeps the scripts from rotting.
"""
import json
import subprocess
import sys

import pytest

from gainakt3exp.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow
ROOT = PROJECT_ROOT


def _run(script, *args):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_train_throughput_reports_interactions_per_second(synthetic_root):
    (line,) = _run("train_throughput.py", "--profile", "tiny", "--data_root", str(synthetic_root), "--batches", "2",
                   "--warmup_batches", "1")
    r = line["results"]
    assert r["batches"] == 2 and r["rows"] == 2 * line["params"]["batch_size"]
    assert r["interactions"] == r["padding"]["real_interactions"] > 0
    assert r["interactions_per_second"] == pytest.approx(r["interactions"] / r["seconds"])
    assert r["interactions_per_cpu_second"] == pytest.approx(r["interactions"] / r["cpu_seconds"])
    assert r["ms_per_batch"] == pytest.approx(1000 * r["seconds"] / 2)
    padding = r["padding"]
    assert padding["padding_fraction"] == pytest.approx(1 - r["interactions"] / padding["computed_cells"])
    assert padding["computed_cells"] <= padding["cells_without_bucketing"] <= padding["cells_without_trimming"]
    assert r["peak_rss_kib"] >= r["peak_rss_kib_before_training"] > 0


def test_train_throughput_counts_the_matrix_work_of_the_gain_head_exactly(synthetic_root):
    """--count_flops: the gain head's weight gradient (the one in-place addmm_ of a step) is 2 C (D + 1) per computed
    cell, exactly; the same batches without the heads keep the encoder's attention work and lose at least the gain
    head's three products, 2 C (3 D + 2) per cell (tiny: D 16, synthetic: C 20)."""
    common = ("--data_root", str(synthetic_root), "--batches", "1", "--warmup_batches", "1", "--count_flops", "2")
    _, full = _run("train_throughput.py", "--profile", "tiny", *common)
    _, pure = _run("train_throughput.py", "--profile", "tiny", "--profile", "pure-bce", *common)
    d, c = 16, 20
    f, b = full["results"], pure["results"]
    assert f["computed_cells"] == b["computed_cells"] > 0 and f["interactions"] == b["interactions"]
    cells = f["computed_cells"]
    assert f["flops_by_op"]["aten.addmm_"] == 2 * c * (d + 1) * cells
    assert "aten.addmm_" not in b["flops_by_op"]
    for op in ("aten._scaled_dot_product_flash_attention_for_cpu",
               "aten._scaled_dot_product_flash_attention_for_cpu_backward"):
        assert f["flops_by_op"][op] == b["flops_by_op"][op] > 0
    assert f["flops"] - b["flops"] >= 2 * c * (3 * d + 2) * cells


def test_extras_cost_trains_both_configurations_on_the_same_batches(synthetic_root):
    """extras_cost.py: A (tiny) and B (tiny + pure-bce) train the same interactions, chunk by chunk, validation
    included; the time ratio is A's seconds over B's."""
    (line,) = _run("extras_cost.py", "--profile", "tiny", "--data_root", str(synthetic_root), "--chunk", "1",
                   "--rounds", "2", "--validate")
    r = line["results"]
    assert r["chunks"] == 2 * len(range(0, 3, 1)) and r["validation_included"]  # 120 students: 3 batches of 32
    assert r["interactions"] > 0 and r["a_seconds"] > 0 and r["b_seconds"] > 0
    assert r["time_ratio"] == pytest.approx(r["a_seconds"] / r["b_seconds"])
    assert r["chunk_time_ratio_min"] <= r["chunk_time_ratio_median"] <= r["chunk_time_ratio_max"]
    assert line["versus"] == ["pure-bce"] and line["b_params"]["use_gain_head"] is False
    assert line["params"]["use_gain_head"] is True and line["machine"]["matmul_gflops"] > 0


def test_eval_correlations_reports_one_line_per_student_count(synthetic_root):
    from gainakt3exp.data.sequences import dataset_spec, load_split, num_interactions

    lines = _run("eval_correlations.py", "--profile", "tiny", "--data_root", str(synthetic_root),
                 "--students", "10", "all")
    assert [line["results"]["students_requested"] for line in lines] == ["10", "all"]
    few, every = (line["results"] for line in lines)
    test = load_split(dataset_spec("synthetic", synthetic_root), "test", 0, lines[0]["params"]["seq_len"])
    assert few["split"] == every["split"] == "test" and every["split_rows"] == len(test.lengths)
    assert few["students"] == 10 and every["students"] == len(test.lengths)
    assert every["interactions"] == num_interactions(test) > few["interactions"] > 0
    for r in (few, every):
        assert r["correlation_students"] <= r["students"]
        assert -1 <= r["mastery_correlation"] <= 1 and r["seconds"] > 0 and r["collect_outputs_seconds"] > 0


def test_epoch_overhead_reports_the_share_of_logging(synthetic_root, tmp_path):
    (line,) = _run("epoch_overhead.py", "--profile", "tiny", "--data_root", str(synthetic_root), "--batches", "2")
    r = line["results"]
    for part, percent in r["percent_of_epoch"].items():  # every share is its seconds over the epoch's
        assert percent == pytest.approx(100 * r[f"{part}_seconds"] / r["epoch_seconds"]), part
    assert r["overhead_seconds"] == pytest.approx(r["trajectory_seconds"] + r["mlflow_logging_seconds"])
    assert 0 < r["percent_of_epoch"]["overhead"] < 100


def test_study_overhead_reports_the_engine_overhead_and_the_parallel_ratio(synthetic_root):
    (line,) = _run("study_overhead.py", "--profile", "tiny", "--data_root", str(synthetic_root), "--folds", "0",
                   "--override", "epochs=1")
    results = line["results"]
    for config in ("workers2_threads1", "workers1_threads2"):
        assert results[config]["children"] == 1 and results[config]["children_own_seconds_sum"] > 0
        assert results[config]["wall_seconds"] > results[config]["study_execute_seconds"] > 0
    assert results["parallel_over_serial_wall_ratio"] > 0 and "engine_overhead_per_child_seconds" in results


def test_dkt_baseline_trains_the_field_baseline_on_a_runs_splits_and_repeats_itself(synthetic_root):
    args = ("--dataset", "synthetic", "--data_root", str(synthetic_root), "--emb_size", "32", "--learning_rate",
            "0.01", "--epochs", "3", "--patience", "1")
    (first,), (second,) = _run("dkt_baseline.py", *args), _run("dkt_baseline.py", *args)
    results = first["results"]
    assert 1 <= results["best_epoch"] <= results["epochs_run"] <= 3
    assert results["val_auc"] == max(results["val_auc_by_epoch"])
    for key in ("val_auc", "test_auc", "test_window_auc"):
        assert 0.6 < results[key] < 0.9, (key, results[key])  # 120 students: it learns (measured ~0.72)
    for key in ("val_auc_by_epoch", "test_auc", "test_window_auc"):
        assert second["results"][key] == results[key]  # seeded: the same command gives the same AUCs


def test_interpretability_measures_mastery_against_truth_on_multi_concept_questions(tmp_path):
    (line,) = _run("interpretability.py", "--profile", "tiny", "--students", "80", "--skills", "6", "--questions",
                   "12", "--max_concepts", "3", "--epochs", "1", "--override", "question_embedding=rasch",
                   "--data_root", str(tmp_path))
    r = line["results"]
    assert r["data"]["questions"] == 12 and r["data"]["max_concepts"] == 3
    assert r["data"]["answers"] < r["data"]["interactions"]  # multi-concept answers are several steps
    assert line["params"]["dataset"] == "synthetic_questions" and line["params"]["question_embedding"] == "rasch"
    assert r["oracle_auc"] is None and r["bayes_auc"] is None and r["feature_logistic_auc"] is None
    for source in ("mastery", "prediction", "practice_count", "running_accuracy"):
        truth = r["measured"]["test"]["truth"][source]
        assert -1 <= truth["pooled"] <= 1 and truth["steps"] > 100
    assert 0 < r["auc"] < 1
