"""Evaluation of a run's best checkpoint, and the MLproject `eval` entry point.

    gakt-eval 423891                       # or a run id; uses the run's own logged parameters
    mlflow run . --env-manager local -e eval -P run=423891

The model is rebuilt from the run's logged parameters (so architecture mismatches cannot happen) and loaded from
model_best.pth with weights_only=True. Results go to the evaluated run: metrics `eval/<split>_<name>` and the
artifacts eval_results.json, config_eval.json, metrics_epoch_eval.csv.
"""
from __future__ import annotations

import os
import sys
import time

import click

from . import data as data_mod
from . import tracking
from .errors import GaktError, ReproError
from .params import parse_param_strings


def evaluate_model(params: dict, checkpoint: dict, *, max_correlation_students: int, batch_size: int,
                   device_name: str) -> dict:
    """AUC/accuracy on train, valid, test and the pyKT window test; mastery/gain correlations on train and test."""
    import torch

    from .metrics import prediction_metrics, semantic_metrics
    from .model import GainAKT3Exp
    from .train import resolve_data_root, resolve_device

    device = resolve_device(device_name)
    spec = data_mod.dataset_spec(params["dataset"], resolve_data_root(params["data_root"]))
    model = GainAKT3Exp.from_params(params, checkpoint["num_c"]).to(device)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    results: dict = {"checkpoint_epoch": checkpoint["epoch"], "checkpoint_val_auc": checkpoint["val_auc"]}
    start = time.perf_counter()
    with torch.no_grad():
        for split in ("train", "valid", "test", "test_window"):
            seqs = data_mod.load_split(spec, split, params["fold"], params["seq_len"])
            pred = prediction_metrics(model, seqs, batch_size, device, use_score_mask=split == "test_window")
            for key in ("auc", "accuracy", "loss", "n"):
                results[f"{split}_{key}"] = pred[key]
            if split in ("train", "test"):
                sem = semantic_metrics(model, seqs, max_correlation_students, batch_size, device)
                for key in ("mastery_correlation", "gain_correlation", "target_mastery_correlation",
                            "true_mastery_correlation", "correlation_students"):
                    results[f"{split}_{key}"] = sem.get(key)
    results["eval_seconds"] = time.perf_counter() - start
    return results


def evaluate_run(client, ref: str, *, max_correlation_students: int | None = None, batch_size: int | None = None,
                 device: str | None = None, echo=print) -> dict:
    """Evaluate a run (id or 6-digit id) and record the results in it. Options left None take the run's values."""
    from .train import metrics_csv

    run = tracking.resolve_run(client, ref)
    run_id = run.info.run_id
    params = parse_param_strings(tracking.read_params(run))
    checkpoint = _read_checkpoint(client, run_id)
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
    results = evaluate_model(params, checkpoint, max_correlation_students=settings["max_correlation_students"],
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
    sink.set_tags({"gakt.evaluated": "true"})
    _tag_entry_point_run(client, run_id, metrics, checkpoint["epoch"])
    return results


_CHECKPOINT_KEYS = ("state_dict", "params", "num_c", "epoch", "val_auc")


def _read_checkpoint(client, run_id: str) -> dict:
    """model_best.pth of the run, loaded weights-only: a corrupt or code-carrying file is refused, never executed."""
    from .train import load_checkpoint

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
    return checkpoint


def _tag_entry_point_run(client, evaluated_run_id: str, metrics: dict, step: int) -> None:
    """Under `mlflow run -e eval` MLflow made a run of its own: point it at the evaluated run and copy the numbers."""
    own = os.environ.get("MLFLOW_RUN_ID")
    if not own or own == evaluated_run_id:
        return
    sink = tracking.MlflowSink(client, own)
    sink.set_tags({tracking.TAG_EVAL_OF: evaluated_run_id, tracking.TAG_KIND: "eval"})
    sink.log_metrics(metrics, step=step)


@click.command("python -m gainakt3exp.evaluate")
@click.option("--run", "ref", required=True, help="Run id or 6-digit experiment id to evaluate.")
def _entry(ref: str) -> None:
    """The MLproject `eval` entry point: evaluate RUN with its own logged parameters."""
    try:
        client = tracking.connect()
        evaluate_run(client, ref, echo=lambda m: click.echo(m, err=True))
    except GaktError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


def main(argv=None) -> None:
    _entry.main(args=argv, prog_name="python -m gainakt3exp.evaluate")


if __name__ == "__main__":
    main()
