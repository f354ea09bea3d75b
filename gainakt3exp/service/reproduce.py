"""Reproducing a run (gakt-repro): check its config.json, logged params and data set, then re-run it with
`mlflow run --run-id` into a new run tagged as its reproduction.

    gakt-repro 423891 --eval && gakt-compare 423891
"""
from __future__ import annotations

from gainakt3exp import tracking
from gainakt3exp.config.params import (
    format_value,
    load_defaults,
)
from gainakt3exp.errors import ReproError
from gainakt3exp.paths import PROJECT_ROOT
from gainakt3exp.service.launch import execute, mlflow_executable
from gainakt3exp.service.record import (
    CONFIG_NAME,
    _fixed_constants,
    added_since,
    check_inputs,
    compare_logged,
    config_params,
    data_record,
    make_run_name,
    param_args,
    read_config,
)


def check_data_unchanged(config: dict, params: dict, run_id: str, echo=print) -> None:
    """Refuse (ReproError) when the run's data set entry or files changed since the run, naming what changed.

    config.json "dataset" holds the entry, origin, folder and file hashes the run used; a moved folder whose files
    hash the same is only noted. A run from before entries were recorded has data_hashes only: its files are
    checked, and a warning says the entry cannot be."""
    from gainakt3exp.data.registry import record_differences

    current = data_record(params)
    recorded = config.get("dataset")
    if recorded is None:
        echo(f"warning: run {run_id} was made before runs recorded their data set entry (config.json has no "
             f"'dataset'); only its data files are checked against the hashes it recorded")
        recorded = {"entry": current["entry"], "origin": current["origin"], "root": current["root"],
                    "file_hashes": config.get("data_hashes", {})}
    changed, moved = record_differences(recorded, current)
    if changed:
        raise ReproError(f"run {run_id}: data set {params['dataset']!r} changed since the run (now defined in "
                         f"{current['origin']}); refusing to reproduce:\n" + "\n".join(f"  - {c}" for c in changed)
                         + "\nrestore the entry/files the run used, or launch a new run on the data as it is now")
    for note in moved:
        echo(f"note: data set {params['dataset']!r}: {note}; its files hash as at the run")


def reproduce(ref: str, echo=print, evaluate: bool = False) -> int:
    """Re-run a finished run from its logged parameters, after checking them against its config.json.

    With evaluate, the reproduction's best checkpoint is evaluated too (so gakt-compare can compare test AUCs).
    """
    client = tracking.connect()
    original, new_id, _params, command = prepare_reproduction(client, ref, echo)
    exp_id = original.data.tags.get(tracking.TAG_EXP_ID) or ""
    echo(f"reproducing experiment {exp_id} (run {original.info.run_id}) as run {new_id}")
    status = execute(command)
    echo(f"reproduction run {new_id} exited with status {status}; compare with: gakt-compare {exp_id}")
    if status == 0 and evaluate:
        from gainakt3exp.service.evaluation import evaluate_run

        evaluate_run(client, new_id, echo=echo)
    return status


def prepare_reproduction(client, ref: str, echo=print, extra_tags: dict | None = None):
    """The checks of gakt-repro, then the reproduction run (tagged, config.json copied byte for byte), not started.

    Returns (original run, new run id, typed params, the `mlflow run --run-id` command); `extra_tags` go on the
    new run (a study nests it under its reproduction parent).
    """
    original = tracking.resolve_run(client, ref)
    run_id = original.info.run_id
    config, raw = read_config(client, run_id)
    defaults = load_defaults()
    params = config_params(config, defaults)
    added = added_since(config, defaults)
    if added:
        echo(f"warning: run {run_id} was made before these parameters existed; they take their defaults, which "
             "keep the code's behaviour from before: " + ", ".join(f"{k}={format_value(params[k])}" for k in added))
    logged = tracking.read_params(original)
    diffs = compare_logged(logged, {k: v for k, v in params.items() if k not in added or k in logged})
    if diffs:
        raise ReproError(f"run {run_id}: its logged params disagree with its config.json; refusing to reproduce:\n"
                         + "\n".join(f"  - {d}" for d in diffs))
    check_data_unchanged(config, params, run_id, echo)  # entry or files changed since the run: refuse, naming what
    check_inputs(params)  # corrupted since the original run, or a device this machine lacks: refuse before a run
    constants = _fixed_constants()
    moved = sorted(k for k in set(constants) | set(config.get("fixed_constants", {}))
                   if config.get("fixed_constants", {}).get(k) != constants.get(k))
    if moved:
        echo(f"warning: fixed constants of the code differ from the original run's: {', '.join(moved)} "
             "(results may differ; gakt-compare will flag the code version)")
    tags = original.data.tags
    exp_id = tags.get(tracking.TAG_EXP_ID) or config.get("experiment_id", "")
    title = tags.get(tracking.TAG_TITLE) or config.get("short_title", "run")
    run_name = make_run_name(title, exp_id) + "_repro"
    new = client.create_run(original.info.experiment_id, run_name=run_name, tags={
        tracking.TAG_REPRO_OF: run_id, tracking.TAG_EXP_ID: exp_id, tracking.TAG_TITLE: title,
        tracking.TAG_KIND: "repro", tracking.TAG_OUTCOME: "pending", **(extra_tags or {})})
    new_id = new.info.run_id
    tracking.publish_bytes(client, new_id, CONFIG_NAME, raw)  # byte for byte
    command = [mlflow_executable(), "run", str(PROJECT_ROOT), "--env-manager", "local", "--experiment-id",
               original.info.experiment_id, "--run-id", new_id, *param_args(params)]
    return original, new_id, params, command
