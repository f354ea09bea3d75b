"""One tracked training run: the MLflow run of `mlflow run` (or a direct call) with its params, tags, config.json,
data set record, the training loop's metrics through the MLflow sink, the checkpoint, results and the trajectory
figure; the outcome is recorded in `finally`, whatever ends the run."""
from __future__ import annotations

import hashlib
import os
import platform
import sys

import click

from gainakt3exp import tracking
from gainakt3exp.config.params import format_value
from gainakt3exp.errors import ConfigError, ReproError
from gainakt3exp.service import record as run_record
from gainakt3exp.service.plots import trajectory_png
from gainakt3exp.service.record import CONFIG_NAME


def run_training(params: dict) -> dict:
    """Attach to (or create) the run, record everything, train. Returns the results dict."""
    from gainakt3exp.config.params import resolve_params
    from gainakt3exp.loops.train import Interrupted, load_train_data, train_model

    resolved = resolve_params(params)
    data = load_train_data(params)  # missing/malformed data fails before the run is touched further
    client = tracking.connect()
    import mlflow

    run_id = os.environ.get("MLFLOW_RUN_ID")
    system = bool(params["log_system_metrics"])  # explicit either way: MLflow's environment switch does not decide
    with tracking.whole_call():
        if run_id is None:
            exp_id = tracking.ensure_experiment(client, tracking.experiment_name())
            run = mlflow.start_run(experiment_id=exp_id, log_system_metrics=system)
        else:
            run = mlflow.start_run(log_system_metrics=system)
    run_id = run.info.run_id
    sink = tracking.MlflowSink(client, run_id)
    with tracking.interruptions(lambda name: Interrupted(f"received {name}")):
        try:
            _record_run(client, run_id, resolved, data)
            _report_objective(sink, params)
            best: dict = {}

            def on_checkpoint(blob: bytes) -> None:
                tracking.publish_bytes(client, run_id, "model_best.pth", blob)
                best["checkpoint"] = blob

            results = train_model(params, sink, data, on_checkpoint=on_checkpoint, on_epoch=_echo_epoch)
            _store_results(client, run_id, results)
            if "checkpoint" in best:  # no epoch improved on the start (a NaN validation AUC): nothing to log
                _log_model(client, run_id, best["checkpoint"], results["best_epoch"])
            sink.set_tags({tracking.TAG_OUTCOME: "finished",
                           tracking.TAG_BEST_VAL_AUC: f"{results['best_val_auc']:.6f}",
                           tracking.TAG_BEST_EPOCH: results["best_epoch"]})
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
    from gainakt3exp.objective.report import format_objective_report, objective_report

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
        sink.set_tags({tracking.TAG_OUTCOME: outcome, tracking.TAG_OUTCOME_REASON: reason[:500]})
    except Exception as exc:  # noqa: BLE001 - the store may be what failed; the status below still tries
        click.echo(f"warning: could not tag the run's outcome '{outcome}' ({exc})", err=True)


def _record_run(client, run_id: str, resolved, data) -> None:
    """Params (unless `mlflow run` logged them), config.json (or check the one placed there), tags."""
    from mlflow.entities import Param

    params = resolved.params
    run = client.get_run(run_id)
    logged = tracking.read_params(run)
    if logged:
        diffs = run_record.compare_logged(logged, params)
        if diffs:
            raise ConfigError("the run's logged params differ from the parameters given:\n"
                              + "\n".join(f"  - {d}" for d in diffs))
    else:
        entries = [Param(k, format_value(v)) for k, v in params.items()]
        for i in range(0, len(entries), 100):
            client.log_batch(run_id, params=entries[i:i + 100])

    tags = run.data.tags
    parsed = run_record.parse_run_name(run.info.run_name)
    title, exp_id = parsed if parsed else (tags.get(tracking.TAG_TITLE, "adhoc"),
                                           tags.get(tracking.TAG_EXP_ID) or run_record.new_experiment_id(client))
    exp_id = tags.get(tracking.TAG_EXP_ID, exp_id)
    title = tags.get(tracking.TAG_TITLE, title)
    from gainakt3exp.data.registry import user_registry_path
    from gainakt3exp.data.sequences import dataset_record, file_hashes

    hashes = file_hashes(data.spec)  # the files training just loaded
    code = run_record.code_version()
    if tracking.has_artifact(client, run_id, CONFIG_NAME):
        config, _raw = run_record.read_config(client, run_id)
        recorded = run_record.config_params(config)
        diffs = [f"'{k}': config.json {recorded.get(k)!r}, this run {params.get(k)!r}"
                 for k in sorted(set(recorded) | set(params)) if recorded.get(k) != params.get(k)]
        if diffs:
            raise ReproError("config.json of this run records other parameters:\n"
                             + "\n".join(f"  - {d}" for d in diffs))
        if config.get("data_hashes") != hashes:
            click.echo("warning: the data files differ from those config.json records (data hashes)", err=True)
    else:
        experiment_name = client.get_experiment(run.info.experiment_id).name
        config = run_record.build_config(resolved, experiment_name=experiment_name, run_name=run.info.run_name,
                                         exp_id=exp_id, short_title=title, hashes=hashes, code=code,
                                         dataset=dataset_record(data.spec, hashes))
        tracking.publish_bytes(client, run_id, CONFIG_NAME, run_record.config_bytes(config))

    import mlflow
    import torch

    from gainakt3exp.loops.runtime import resolve_device

    data_hash = hashlib.sha256("".join(f"{k}:{v};" for k, v in sorted(hashes.items())).encode()).hexdigest()
    kind = "repro" if tracking.TAG_REPRO_OF in tags else "train"
    new_tags = {
        tracking.TAG_EXP_ID: exp_id, tracking.TAG_TITLE: title, tracking.TAG_KIND: kind,
        tracking.TAG_OUTCOME: "running",
        tracking.TAG_GIT_COMMIT: code["git_commit"], tracking.TAG_GIT_DIRTY: str(code["git_dirty"]).lower(),
        tracking.TAG_PACKAGE_VERSION: code["package_version"],
        tracking.TAG_TORCH_VERSION: torch.__version__, tracking.TAG_MLFLOW_VERSION: mlflow.__version__,
        tracking.TAG_PYTHON_VERSION: platform.python_version(),
        tracking.TAG_DEVICE: str(resolve_device(params["device"])), tracking.TAG_TORCH_THREADS: str(torch.get_num_threads()),
        tracking.TAG_DATA_HASH: data_hash, tracking.TAG_HOST: platform.node(), tracking.TAG_PID: str(os.getpid()),
        tracking.TAG_DATA_ROOT_RESOLVED: str(data.spec.root),
        tracking.TAG_DATA_REGISTRY: str(user_registry_path()), tracking.TAG_DATA_SOURCE: data.spec.origin,
    }
    from gainakt3exp.config.choices import resolve_question_embedding

    # settings derived from the data by a rule (config/choices.py), recorded beside the parameter that asked for it
    new_tags[f"{tracking.TAG_DERIVED_PREFIX}question_embedding"] = resolve_question_embedding(
        params["question_embedding"], data.spec.num_q)
    tracking.MlflowSink(client, run_id).set_tags(new_tags)
    _log_datasets(client, run_id, data.spec, hashes, params["fold"])


#: dataset context (MLflow's "mlflow.data.context" input tag) -> which file of the data set
_DATASET_CONTEXTS = (("training", "train_valid_file"), ("validation", "train_valid_file"), ("test", "test_file"),
                     ("test_window", "test_window_file"))


def _log_datasets(client, run_id: str, spec, hashes: dict, fold: int) -> None:
    """The data set's files as the run's dataset inputs (the UI's Datasets column, `datasets.digest` searches).
    The digest is the file's sha256 cut to MLflow's 36-character limit (32 hex digits); the whole hash is the input
    tag gakt.sha256. MLflow's own digest of a pandas frame would read only its first 10,000 rows."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    for context, attribute in _DATASET_CONTEXTS:
        name = getattr(spec, attribute)
        if name not in hashes:
            continue
        split = {"training": f"folds other than {fold}", "validation": f"fold {fold}"}.get(context, "all rows")
        # one name per context: MLflow keeps one input per (name, digest), and training and validation read one file
        with warnings.catch_warnings():  # MLflow registers its local-file source twice and warns that it picks one
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(spec.root / name))
        dataset = MetaDataset(source, name=f"{spec.name} {context}", digest=hashes[name][:32])
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[
            InputTag(MLFLOW_DATASET_CONTEXT, context), InputTag(tracking.TAG_DATASET_SHA256, hashes[name]),
            InputTag(tracking.TAG_DATASET_ROWS, split)]))
    _log_inputs_racing(client, run_id, inputs)


def _log_inputs_racing(client, run_id: str, inputs: list, attempts: int = 4) -> None:
    """client.log_inputs, tried again when a concurrent run of the same experiment created the same dataset between
    the store's lookup and its insert (MLflow's get-or-create is not atomic: UNIQUE constraint failed on datasets);
    the next attempt finds the dataset and links it."""
    import time

    for attempt in range(attempts):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except Exception as exc:  # noqa: BLE001 - RestException over HTTP, IntegrityError on a local store
            if "UNIQUE constraint" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _log_model(client, run_id: str, checkpoint: bytes, best_epoch: int) -> None:
    """The best checkpoint as the run's MLflow model (service/models.py), linked to the metrics of the best epoch."""
    from gainakt3exp.service.models import log_run_model

    model_id = log_run_model(client, run_id, checkpoint, step=int(best_epoch))
    click.echo(f"logged model {model_id} (models:/{model_id}) from the checkpoint of epoch {best_epoch}", err=True)


def _store_results(client, run_id: str, results: dict) -> None:
    from gainakt3exp.loops.checkpoint import metrics_csv

    csv_text = metrics_csv(results["train_history"]["epochs"])
    tracking.publish_bytes(client, run_id, "metrics_epoch.csv", csv_text.encode())
    tracking.publish_bytes(client, run_id, "results.json", tracking.json_bytes(results))
    png = trajectory_png(results["train_history"]["semantic_trajectory"])
    if png:
        tracking.publish_bytes(client, run_id, "trajectory.png", png)
