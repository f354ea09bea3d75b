"""What gakt-eval records in a run: the evaluation table (eval_table.json, a row per split, a column per metric) and
the mastery pictures (mastery_*.png), on a run recorded in a real local store with an untrained tiny model."""
from gainakt3exp import tracking
from gainakt3exp.config.choices import format_value
from gainakt3exp.config.params import resolve_params
from gainakt3exp.service.evaluation import eval_table, evaluate_run

PNG = b"\x89PNG\r\n\x1a\n"


def test_eval_table_has_a_row_per_split_and_a_column_per_metric():
    table = eval_table({"checkpoint_epoch": 3, "test_auc": 0.712345, "test_window_auc": 0.7, "test_n": 10,
                        "valid_auc": 0.69, "valid_mastery_correlation": float("nan"), "test_mastery_correlation": 0.1})
    assert table == {"columns": ["split", "auc", "n", "mastery_correlation"],
                     "data": [["valid", 0.69, None, None], ["test", 0.7123, 10, 0.1], ["test_window", 0.7, None, None]]}


def _recorded_run(client, params: dict) -> str:
    """A run as training leaves it (params and model_best.pth) with untrained weights: evaluation needs no more."""
    from mlflow.entities import Param

    from gainakt3exp.loops.checkpoint import checkpoint_bytes
    from gainakt3exp.model.network import GainAKT3Exp

    run_id = client.create_run(tracking.ensure_experiment(client, "eval-pictures")).info.run_id
    client.log_batch(run_id, params=[Param(k, format_value(v)) for k, v in params.items()])
    model = GainAKT3Exp.from_params(params, 20)
    tracking.publish_bytes(client, run_id, "model_best.pth", checkpoint_bytes(model, params, 20, 1, 0.5))
    return run_id


def _artifacts(client, run_id: str) -> dict[str, bytes]:
    return {f.path: tracking.download_text(client, run_id, f.path) for f in client.list_artifacts(run_id)
            if f.path.endswith(".png")}


def test_evaluation_publishes_the_mastery_pictures_on_synthetic_data(client, synthetic_root, monkeypatch):
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    params = resolve_params({"data_root": str(synthetic_root)}, ["tiny"]).params
    run_id = _recorded_run(client, params)
    lines = []
    evaluate_run(client, run_id, echo=lines.append)
    pngs = _artifacts(client, run_id)
    assert set(pngs) == {"mastery_students.png", "mastery_calibration.png", "mastery_truth.png"}
    assert all(data.startswith(PNG) for data in pngs.values())
    assert any(line.startswith("mastery pictures: mastery_students.png, mastery_calibration.png, "
                               "mastery_truth.png (test rows ") for line in lines), lines


def test_evaluation_without_a_mastery_head_skips_the_pictures_and_says_so(client, synthetic_root, monkeypatch):
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    params = resolve_params({"data_root": str(synthetic_root)}, ["tiny", "pure-bce"]).params
    run_id = _recorded_run(client, params)
    lines = []
    results = evaluate_run(client, run_id, echo=lines.append)
    assert results["test_auc"] == results["test_auc"]  # the evaluation itself ran
    assert _artifacts(client, run_id) == {}
    assert "mastery pictures skipped: the model has no mastery head (use_mastery_head false)" in lines


def test_a_run_older_than_a_parameter_is_evaluated_and_its_model_logged_with_the_default(client, synthetic_root,
                                                                                        monkeypatch, reset_mlflow_uri):
    """A run whose logged params and checkpoint lack parameters added since (here the two newest): gakt-eval and
    the logged model fill in their defaults, which keep the code's behaviour from before, and say so."""
    import mlflow
    import pandas as pd

    from gainakt3exp.service.models import log_run_model

    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(tracking.tracking_uri())  # the module's store (the client fixture's)
    params = resolve_params({"data_root": str(synthetic_root)}, ["tiny"]).params
    older = {k: v for k, v in params.items() if k not in ("mastery_performance_target", "log_system_metrics")}
    run_id = _recorded_run(client, older)
    lines = []
    results = evaluate_run(client, run_id, echo=lines.append)
    assert results["test_auc"] == results["test_auc"]
    assert any("was made before these parameters existed" in line and "log_system_metrics=false" in line
               and "mastery_performance_target=answered" in line for line in lines), lines
    model_id = log_run_model(client, run_id, tracking.download_text(client, run_id, "model_best.pth"), step=1)
    loaded = mlflow.pyfunc.load_model(f"models:/{model_id}")
    out = loaded.predict(pd.DataFrame({"student": ["a", "a"], "concept": [1, 2], "response": [1, None]}))
    assert list(out["student"]) == ["a"] and 0 < out.loc[0, "p_correct"] < 1
