"""The MLproject entry points: typed parameters in, one tracked MLflow run out; evaluation recorded in a run.

    python -m gainakt3exp.runner train --dataset synthetic --data_root data --fold 0 ... (all parameters, no defaults)
    python -m gainakt3exp.runner eval --run 423891

`train` (the `main` entry point): under `mlflow run` this attaches to the run MLflow created (MLFLOW_RUN_ID) and
does not re-log the parameters it logged; run directly it creates a run itself. It writes config.json (or checks
the one a reproduction placed), tags the run, trains (train.train_model, which never imports mlflow), and stores
model_best.pth, results.json, metrics_epoch.csv and trajectory.png. Ctrl-C / SIGTERM marks the run KILLED, a
crash FAILED; `gakt.outcome` keeps the truth even where `mlflow run` later overwrites the status.

`eval` (the `eval` entry point, also `gakt-eval`): rebuilds the model from the run's logged parameters (so
architecture mismatches cannot happen), loads model_best.pth weights-only, runs evaluate.evaluate_model and
records metrics `eval/<split>_<name>` and eval_results.json, eval_table.json (a split x metric table),
config_eval.json, metrics_epoch_eval.csv in the run.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import platform
import sys

import click

from . import experiment, tracking
from .errors import ConfigError, GaktError, ReproError
from .params import format_value, load_defaults, parse_param_strings

CONFIG_NAME = experiment.CONFIG_NAME


def _meanings() -> dict:
    with open(experiment.PROJECT_ROOT / "configs" / "parameters.csv", newline="") as handle:
        return {row["name"]: f"{row['meaning']} [{row['type']}, default {row['default']}]"
                for row in csv.DictReader(handle)}


def build_train_command() -> click.Command:
    """One required option per parameter of configs/parameter_default.json (no defaults, values parsed by us)."""
    meanings = _meanings()
    options = [click.Option([f"--{key}"], required=True, type=str, help=meanings.get(key, ""))
               for key in load_defaults().values]
    return click.Command(
        "train", params=options, callback=_train_callback,
        help="Train GainAKT3Exp as one MLflow run. Every parameter is required (see configs/parameters.csv); "
             "gakt-launch and `mlflow run .` fill them in.\n\nExample: gakt-launch --dry_run --short_title demo "
             "--profile quickstart prints a complete command.")


def _train_callback(**strings) -> None:
    try:
        params = parse_param_strings(strings)
        run_training(params)
    except GaktError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


def run_training(params: dict) -> dict:
    """Attach to (or create) the run, record everything, train. Returns the results dict."""
    from .params import resolve_params
    from .train import Interrupted, load_train_data, train_model

    resolved = resolve_params(params)
    data = load_train_data(params)  # missing/malformed data fails before the run is touched further
    client = tracking.connect()
    import mlflow

    run_id = os.environ.get("MLFLOW_RUN_ID")
    with tracking.whole_call():
        if run_id is None:
            exp_id = tracking.ensure_experiment(client, tracking.experiment_name())
            run = mlflow.start_run(experiment_id=exp_id)
        else:
            run = mlflow.start_run()
    run_id = run.info.run_id
    sink = tracking.MlflowSink(client, run_id)
    with tracking.interruptions(lambda name: Interrupted(f"received {name}")):
        try:
            _record_run(client, run_id, resolved, data)
            _report_objective(sink, params)
            results = train_model(
                params, sink, data,
                on_checkpoint=lambda blob: tracking.publish_bytes(client, run_id, "model_best.pth", blob),
                on_epoch=_echo_epoch,
            )
            _store_results(client, run_id, results)
            sink.set_tags({tracking.TAG_OUTCOME: "finished",
                           "gakt.best_val_auc": f"{results['best_val_auc']:.6f}",
                           "gakt.best_epoch": results["best_epoch"]})
            _end_run("FINISHED")
            return results
        except (Interrupted, KeyboardInterrupt) as exc:
            _finish(sink, "killed", str(exc) or "KeyboardInterrupt")
            _end_run("KILLED")
            click.echo(f"training interrupted ({exc or 'Ctrl-C'}); run {run_id} marked KILLED, artifacts kept",
                       err=True)
            sys.exit(130)
        except BaseException as exc:
            _finish(sink, "failed", f"{type(exc).__name__}: {exc}")
            _end_run("FAILED")
            raise


def _end_run(status: str) -> None:
    import mlflow

    with tracking.whole_call():
        mlflow.end_run(status)


def _report_objective(sink, params: dict) -> None:
    """Which objective terms act, which are identically zero and why: printed and tagged (also in config.json)."""
    from .losses import format_objective_report, objective_report

    report = objective_report(params)
    click.echo(format_objective_report(report), err=True)
    sink.set_tags({f"gakt.objective.{term}": entry["status"] for term, entry in report.items()})


def _echo_epoch(info: dict) -> None:
    """One line per epoch on stderr, so a log shows progress even without a terminal."""
    m = info["metrics"]
    parts = [f"epoch {info['epoch']}"] + [f"{key} {m[key]:.4f}" for key in
                                          ("train/loss", "train/objective", "val/loss", "val/auc", "val/accuracy",
                                           "trajectory/mastery_correlation",
                                           "trajectory/gain_correlation") if key in m]
    click.echo("  ".join(parts) + f"  ({m.get('train/epoch_seconds', 0):.1f} s)", err=True)


def _finish(sink, outcome: str, reason: str) -> None:
    try:
        sink.set_tags({tracking.TAG_OUTCOME: outcome, "gakt.outcome_reason": reason[:500]})
    except Exception as exc:  # noqa: BLE001 - the store may be what failed; the status below still tries
        click.echo(f"warning: could not tag the run's outcome '{outcome}' ({exc})", err=True)


def _record_run(client, run_id: str, resolved, data) -> None:
    """Params (unless `mlflow run` logged them), config.json (or check the one placed there), tags."""
    from mlflow.entities import Param

    params = resolved.params
    run = client.get_run(run_id)
    logged = tracking.read_params(run)
    if logged:
        diffs = experiment.compare_logged(logged, params)
        if diffs:
            raise ConfigError("the run's logged params differ from the parameters given:\n"
                              + "\n".join(f"  - {d}" for d in diffs))
    else:
        entries = [Param(k, format_value(v)) for k, v in params.items()]
        for i in range(0, len(entries), 100):
            client.log_batch(run_id, params=entries[i:i + 100])

    tags = run.data.tags
    parsed = experiment.parse_run_name(run.info.run_name)
    title, exp_id = parsed if parsed else (tags.get(tracking.TAG_TITLE, "adhoc"),
                                           tags.get(tracking.TAG_EXP_ID) or experiment.new_experiment_id(client))
    exp_id = tags.get(tracking.TAG_EXP_ID, exp_id)
    title = tags.get(tracking.TAG_TITLE, title)
    from .data import dataset_record, file_hashes
    from .registry import user_registry_path

    hashes = file_hashes(data.spec)  # the files training just loaded
    code = experiment.code_version()
    if tracking.has_artifact(client, run_id, CONFIG_NAME):
        config, _raw = experiment.read_config(client, run_id)
        recorded = experiment.config_params(config)
        diffs = [f"'{k}': config.json {recorded.get(k)!r}, this run {params.get(k)!r}"
                 for k in sorted(set(recorded) | set(params)) if recorded.get(k) != params.get(k)]
        if diffs:
            raise ReproError("config.json of this run records other parameters:\n"
                             + "\n".join(f"  - {d}" for d in diffs))
        if config.get("data_hashes") != hashes:
            click.echo("warning: the data files differ from those config.json records (data hashes)", err=True)
    else:
        experiment_name = client.get_experiment(run.info.experiment_id).name
        config = experiment.build_config(resolved, experiment_name=experiment_name, run_name=run.info.run_name,
                                         exp_id=exp_id, short_title=title, hashes=hashes, code=code,
                                         dataset=dataset_record(data.spec, hashes))
        tracking.publish_bytes(client, run_id, CONFIG_NAME, experiment.config_bytes(config))

    import mlflow
    import torch

    from .train import resolve_device

    data_hash = hashlib.sha256("".join(f"{k}:{v};" for k, v in sorted(hashes.items())).encode()).hexdigest()
    kind = "repro" if tracking.TAG_REPRO_OF in tags else "train"
    new_tags = {
        tracking.TAG_EXP_ID: exp_id, tracking.TAG_TITLE: title, tracking.TAG_KIND: kind,
        tracking.TAG_OUTCOME: "running",
        "gakt.git_commit": code["git_commit"], "gakt.git_dirty": str(code["git_dirty"]).lower(),
        "gakt.package_version": code["package_version"],
        "gakt.torch_version": torch.__version__, "gakt.mlflow_version": mlflow.__version__,
        "gakt.python_version": platform.python_version(),
        "gakt.device": str(resolve_device(params["device"])), "gakt.torch_threads": str(torch.get_num_threads()),
        "gakt.data_hash": data_hash, "gakt.host": platform.node(), "gakt.pid": str(os.getpid()),
        "gakt.data_root_resolved": str(data.spec.root),
        "gakt.data_registry": str(user_registry_path()), "gakt.data_source": data.spec.origin,
    }
    tracking.MlflowSink(client, run_id).set_tags(new_tags)


def _store_results(client, run_id: str, results: dict) -> None:
    from .train import metrics_csv

    csv_text = metrics_csv(results["train_history"]["epochs"])
    tracking.publish_bytes(client, run_id, "metrics_epoch.csv", csv_text.encode())
    tracking.publish_bytes(client, run_id, "results.json", tracking.json_bytes(results))
    png = trajectory_png(results["train_history"]["semantic_trajectory"])
    if png:
        tracking.publish_bytes(client, run_id, "trajectory.png", png)


def trajectory_png(trajectory: list[dict]) -> bytes:
    """Correlations and loss shares per epoch, as a PNG (the UI's charts hold the same numbers)."""
    if not trajectory:
        return b""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e["epoch"] for e in trajectory]

    def series(key, sub=None):
        values = [(e.get(sub) or {}).get(key) if sub else e.get(key) for e in trajectory]
        return [float("nan") if v is None else v for v in values]

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("mastery_correlation", "gain_correlation", "target_mastery_correlation",
                "global_alignment_mastery_corr", "peak_mastery_corr"):
        left.plot(epochs, series(key), marker="o", label=key)
    left.set(title="Interpretability trajectory", xlabel="epoch", ylabel="Pearson r")
    left.legend(fontsize=7)
    for key in ("main", "constraint_total", "alignment", "lag", "retention"):
        right.plot(epochs, series(key, "loss_shares"), marker="o", label=key)
    right.set(title="Loss shares", xlabel="epoch", ylabel="share of BCE + constraints")
    right.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


# --- evaluation ------------------------------------------------------------------------------------------------


def evaluate_run(client, ref: str, *, max_correlation_students: int | None = None, batch_size: int | None = None,
                 device: str | None = None, echo=print) -> dict:
    """Evaluate a run (id or 6-digit id) and record the results in it. Options left None take the run's values."""
    from .evaluate import evaluate_model
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
    tracking.publish_bytes(client, run_id, EVAL_TABLE, tracking.json_bytes(eval_table(results)))
    sink.set_tags({"gakt.evaluated": "true", **_table_artifact_tag(run, EVAL_TABLE)})
    _tag_entry_point_run(client, run_id, metrics, checkpoint["epoch"])
    return results


EVAL_TABLE = "eval_table.json"
_EVAL_SPLITS = ("train", "valid", "test", "test_window")
_EVAL_COLUMNS = ("auc", "accuracy", "loss", "n", "mastery_correlation", "gain_correlation",
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


@click.command("eval")
@click.option("--run", "ref", required=True, help="Run id or 6-digit experiment id to evaluate.")
def _eval_entry(ref: str) -> None:
    """The MLproject `eval` entry point: evaluate RUN with its own logged parameters."""
    try:
        client = tracking.connect()
        evaluate_run(client, ref, echo=lambda m: click.echo(m, err=True))
    except GaktError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


def main(argv=None) -> None:
    """`python -m gainakt3exp.runner train ...` / `... eval --run R` (what MLproject's entry points run)."""
    group = click.Group("python -m gainakt3exp.runner", commands=[build_train_command(), _eval_entry],
                        help="The MLproject entry points: train (main) and eval.")
    group.main(args=argv, prog_name="python -m gainakt3exp.runner", standalone_mode=True)


if __name__ == "__main__":
    main()
