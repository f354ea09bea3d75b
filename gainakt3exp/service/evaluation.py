"""Evaluation of a recorded run (gakt-eval and the MLproject `eval` entry point): its best checkpoint on train, valid,
test and the window test, logged as eval/* to the run, with eval_table.json and the mastery pictures (mastery_*.png)."""
from __future__ import annotations

import os

from gainakt3exp import tracking
from gainakt3exp.config.params import format_value, recorded_params, with_added_defaults
from gainakt3exp.errors import ReproError

# --- evaluation ------------------------------------------------------------------------------------------------


def evaluate_run(client, ref: str, *, max_correlation_students: int | None = None, batch_size: int | None = None,
                 device: str | None = None, echo=print) -> dict:
    """Evaluate a run (id or 6-digit id) and record the results in it. Options left None take the run's values."""
    from gainakt3exp.loops.checkpoint import metrics_csv
    from gainakt3exp.loops.evaluate import evaluate_model

    run = tracking.resolve_run(client, ref)
    run_id = run.info.run_id
    params, added = recorded_params(tracking.read_params(run))
    if added:
        echo(f"run {run_id} was made before these parameters existed; they take their defaults, which keep the "
             "code's behaviour from before: " + ", ".join(f"{k}={format_value(params[k])}" for k in added))
    checkpoint = read_checkpoint(client, run_id)[1]
    checkpoint["params"] = with_added_defaults(checkpoint["params"])
    if checkpoint["params"] != params:
        diffs = sorted(k for k in params if checkpoint["params"].get(k) != params[k])
        raise ReproError(f"model_best.pth of run {run_id} was trained with other parameters than the run logs "
                         f"({', '.join(diffs)}); the artifact was replaced — re-train the run")
    settings = {
        "max_correlation_students": max_correlation_students or params["max_correlation_students"],
        "batch_size": batch_size or params["batch_size"],
        "device": device or params["device"],
    }
    echo(f"evaluating run {run_id} (best epoch {checkpoint['epoch']}) with {settings}")
    results, pictures = evaluate_model(params, checkpoint,
                                       max_correlation_students=settings["max_correlation_students"],
                                       batch_size=settings["batch_size"], device_name=settings["device"])
    metrics = {f"eval/{k}": float(v) for k, v in results.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}
    sink = tracking.MlflowSink(client, run_id)
    sink.log_metrics(metrics, step=checkpoint["epoch"])
    config_eval = {"run_id": run_id, "settings": settings, "params": params,
                   "overridden": {k: v for k, v in settings.items() if v != params[k]}}
    tracking.publish_bytes(client, run_id, "eval_results.json", tracking.json_bytes(results))
    tracking.publish_bytes(client, run_id, "config_eval.json", tracking.json_bytes(config_eval))
    csv_text = metrics_csv([{"epoch": checkpoint["epoch"], **metrics}])
    tracking.publish_bytes(client, run_id, "metrics_epoch_eval.csv", csv_text.encode())
    tracking.publish_bytes(client, run_id, EVAL_TABLE, tracking.json_bytes(eval_table(results)))
    for name, png in mastery_picture_files(pictures).items():
        tracking.publish_bytes(client, run_id, name, png)
    echo(_pictures_line(pictures))
    protocol = "pykt-question" if "windowauclate_mean" in results else "pykt-concept"  # what headline_auc is
    sink.set_tags({tracking.TAG_EVALUATED: "true", tracking.TAG_EVAL_PROTOCOL: protocol,
                   **_table_artifact_tag(run, EVAL_TABLE)})
    _tag_entry_point_run(client, run_id, metrics, checkpoint["epoch"])
    return results


MASTERY_PICTURES = ("mastery_students.png", "mastery_calibration.png", "mastery_truth.png")


def mastery_picture_files(pictures: dict | None) -> dict[str, bytes]:
    """The mastery pictures of an evaluation (loops.evaluate.mastery_pictures) as {artifact name: PNG bytes}:
    mastery_students.png and mastery_calibration.png, and mastery_truth.png on data with a truth file; none
    without a mastery head (pictures None)."""
    from gainakt3exp.service import plots

    if pictures is None:
        return {}
    cal = pictures["calibration"]
    files = {"mastery_students.png": plots.mastery_students_png(pictures["students"],
                                                                "Mastery per concept, test students"),
             "mastery_calibration.png": plots.mastery_calibration_png(cal["mastery"], cal["predicted"], cal["y"])}
    truth = pictures["truth"]
    if truth is not None:
        files["mastery_truth.png"] = plots.mastery_truth_png(truth["label"], truth["learned"], truth["truth"],
                                                             truth["y"])
    return files


def _pictures_line(pictures: dict | None) -> str:
    if pictures is None:
        return "mastery pictures skipped: the model has no mastery head (use_mastery_head false)"
    drawn = [n for n in MASTERY_PICTURES if n != "mastery_truth.png" or pictures["truth"] is not None]
    rows = ", ".join(str(s["row"]) for s in pictures["students"])
    return (f"mastery pictures: {', '.join(drawn)} (test rows {rows})"
            + ("" if pictures["truth"] is not None else "; no mastery_truth.png: no true mastery for these students "
               "(the data set has no truth file)"))


EVAL_TABLE = "eval_table.json"
_EVAL_SPLITS = ("train", "valid", "test", "test_window")
_EVAL_COLUMNS = ("auc", "mastery_auc", "mastery_auc_within", "accuracy", "loss", "n", "mastery_correlation",
                 "gain_correlation",
                 "target_mastery_correlation", "true_mastery_correlation", "correlation_students")


def eval_table(results: dict) -> dict:
    """The evaluation numbers as one table, a row per split, floats to 4 decimals (MLflow's table artifact layout:
    columns + data; the UI's Artifacts tab shows it as a table): readable at a glance, where 29 single-point
    eval/* charts are not. Full precision stays in eval_results.json and the eval/* metrics."""
    rows: dict[str, dict] = {}
    for key, value in results.items():
        split = max((s for s in _EVAL_SPLITS if key.startswith(s + "_")), key=len, default=None)
        if split is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.setdefault(split, {})[key[len(split) + 1:]] = (None if value != value else  # NaN -> null
                                                                 round(value, 4) if isinstance(value, float) else value)
    names = {n for r in rows.values() for n in r}
    columns = [c for c in _EVAL_COLUMNS if c in names] + sorted(names - set(_EVAL_COLUMNS))
    return {"columns": ["split", *columns],
            "data": [[s, *(rows[s].get(c) for c in columns)] for s in _EVAL_SPLITS if s in rows]}


def _table_artifact_tag(run, name: str) -> dict:
    """The mlflow.loggedArtifacts tag (what mlflow.log_table sets) with `name` listed as a table."""
    import json

    try:
        listed = json.loads(run.data.tags.get("mlflow.loggedArtifacts", "[]"))
    except json.JSONDecodeError:
        listed = []
    if not any(a.get("path") == name for a in listed):
        listed.append({"path": name, "type": "table"})
    return {"mlflow.loggedArtifacts": json.dumps(listed)}


_CHECKPOINT_KEYS = ("state_dict", "params", "num_c", "epoch", "val_auc")


def read_checkpoint(client, run_id: str) -> tuple[bytes, dict]:
    """model_best.pth of the run (its bytes and the checkpoint), loaded weights-only: a corrupt or code-carrying
    file is refused, never executed."""
    from gainakt3exp.loops.checkpoint import load_checkpoint

    raw = tracking.download_text(client, run_id, "model_best.pth")
    try:
        checkpoint = load_checkpoint(raw)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        detail = next((line for line in lines if "GLOBAL" in line),
                      f"{type(exc).__name__}: {next((ln for ln in lines if ln.startswith('Unsupported')), lines[0])}")
        raise ReproError(f"model_best.pth of run {run_id} is not a weights-only checkpoint ({detail[:200]}); "
                         "nothing in it was executed. The artifact is corrupt or was replaced: re-train the run "
                         "(gakt-repro) or restore the file") from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise ReproError(f"model_best.pth of run {run_id} lacks {', '.join(missing)}: not a gainakt3exp checkpoint; "
                         "re-train the run (gakt-repro) or restore the file")
    return raw, checkpoint


def _tag_entry_point_run(client, evaluated_run_id: str, metrics: dict, step: int) -> None:
    """Under `mlflow run -e eval` MLflow made a run of its own: point it at the evaluated run and copy the numbers."""
    own = os.environ.get("MLFLOW_RUN_ID")
    if not own or own == evaluated_run_id:
        return
    sink = tracking.MlflowSink(client, own)
    sink.set_tags({tracking.TAG_EVAL_OF: evaluated_run_id, tracking.TAG_KIND: "eval"})
    sink.log_metrics(metrics, step=step)
