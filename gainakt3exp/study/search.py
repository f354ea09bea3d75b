"""Hyperparameter search with Optuna: each trial is a group of child runs (the search's folds x seeds) on Ray.

    gakt-study search --short_title lr --profile tiny --data_root data --space space.json --trials 3 \\
        --folds 0 --seeds 42 --sampler tpe --sampler_seed 0

space.json maps parameters to distributions:
    {"learning_rate": {"type": "float", "low": 0.0003, "high": 0.01, "log": true},
     "d_model": {"type": "categorical", "choices": [16, 32]},
     "num_encoder_blocks": {"type": "int", "low": 1, "high": 2}}

Ask/tell in the driver, one trial at a time (each trial's children run in parallel on the cluster), with a seeded
sampler. The objective is the mean over the trial's children of their best val AUC, read from `val/auc` alone:
test metrics are never evaluated nor read to choose or stop (the children are not evaluated; evaluate the
chosen configuration with the printed `gakt-study launch ... --eval` line). The Optuna storage is the MLflow
tracking store itself (mlflow.optuna.MlflowStorage): the search's parent run is the Optuna study's run, each
trial an MLflow run nested under it (its parameters, its objective as metric `value`), the trial's training
children nested under the trial. A trial whose children did not all finish is told FAIL (its mean would cover
other folds than the others').
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from gainakt3exp import tracking
from gainakt3exp.config.params import load_defaults, parse_value
from gainakt3exp.data import registry
from gainakt3exp.errors import ConfigError
from gainakt3exp.paths import CONFIG_DIR
from gainakt3exp.service import record as run_record
from gainakt3exp.study import driver as study
from gainakt3exp.study import engine, lifecycle
from gainakt3exp.study import report as study_report
from gainakt3exp.study.plan import Plan, build_plan, definition, launch_line

SELECTION_METRIC = "val/auc"  # the only metric a search reads to choose
SAMPLERS = ("tpe", "random")
_TYPES = ("float", "int", "categorical")


SPACES_DIR = CONFIG_DIR / "spaces"  # the shipped search spaces, named by file stem (--space cpu-default)


def space_path(name_or_path: str | Path) -> Path:
    """A shipped space's file (configs/spaces/<name>.json) for a bare name, else the path as given."""
    shipped = SPACES_DIR / f"{name_or_path}.json"
    if not Path(name_or_path).suffix and "/" not in str(name_or_path) and shipped.is_file():
        return shipped
    return Path(name_or_path)


def shipped_spaces() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.json"))


def load_space(path: str | Path) -> dict:
    """The search space file (or a shipped space's name), checked: every key a parameter, every distribution well
    formed and of the parameter's type. A malformed file is one ConfigError (exit 2) naming the file, the key and
    the fix."""
    path = space_path(path)
    try:
        space = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"space file {path} does not exist; name a shipped space ({', '.join(shipped_spaces())}) "
                          "or write one, e.g. "
                          '{"learning_rate": {"type": "float", "low": 0.0003, "high": 0.01, "log": true}}') from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f"line {exc.lineno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise ConfigError(f"space file {path} is not valid JSON ({where}); fix the file") from None
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"space file {path}: expected a non-empty JSON object of parameter -> distribution")
    defaults, problems = load_defaults(), []
    for key, spec in space.items():
        where = f"space file {path}: '{key}'"
        if key not in defaults.values or key in ("fold", "seed"):
            problems.append(f"{where} is not a searchable parameter (fold and seed come from --folds/--seeds; "
                            "see configs/parameters.csv)")
            continue
        if not isinstance(spec, dict) or spec.get("type") not in _TYPES:
            problems.append(f"{where}: expected {{\"type\": \"float\"|\"int\"|\"categorical\", ...}}")
            continue
        problems += _check_distribution(where, key, spec, defaults.kind(key))
    if problems:
        raise ConfigError("\n".join(problems) if len(problems) == 1 else
                          f"{len(problems)} problems in the space file:\n" + "\n".join(f"  - {p}" for p in problems))
    return space


def _check_distribution(where: str, key: str, spec: dict, kind: str) -> list[str]:
    kind_of_type = spec["type"]
    if kind_of_type == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            return [f"{where}: a categorical needs a non-empty list \"choices\""]
        bad = []
        for choice in choices:
            try:
                if kind != "str" and isinstance(choice, str):
                    raise ValueError(f"expected a {kind}, not the string {choice!r}")
                parse_value(key, choice, kind)
            except ValueError as exc:
                bad.append(f"{where}: choice {choice!r}: {exc}")
        return bad
    if kind in ("bool", "str") or (kind == "int" and kind_of_type == "float"):
        return [f"{where}: a {kind} parameter takes \"type\": \"{'int' if kind == 'int' else 'categorical'}\""]
    low, high = spec.get("low"), spec.get("high")
    number = int if kind_of_type == "int" else (int, float)
    if not all(isinstance(v, number) and not isinstance(v, bool) for v in (low, high)):
        return [f"{where}: \"low\" and \"high\" must be {'integers' if kind_of_type == 'int' else 'numbers'}"]
    if not low < high:
        return [f"{where}: \"low\" {low} must be below \"high\" {high}"]
    if spec.get("log") and low <= 0:
        return [f"{where}: a log scale needs \"low\" > 0"]
    return []


def suggest(trial, space: dict) -> dict:
    """The trial's values, typed as the parameters (ask/tell: Optuna's trial.suggest_* per key, in file order)."""
    defaults, values = load_defaults(), {}
    for key, spec in space.items():
        if spec["type"] == "categorical":
            raw = trial.suggest_categorical(key, spec["choices"])
        elif spec["type"] == "int":
            raw = trial.suggest_int(key, spec["low"], spec["high"], log=bool(spec.get("log", False)))
        else:
            raw = trial.suggest_float(key, spec["low"], spec["high"], log=bool(spec.get("log", False)))
        values[key] = parse_value(key, raw, defaults.kind(key))
    return values


def trial_objective(client, run_ids: list[str]) -> float:
    """Mean over the runs of their best `val/auc` (max over epochs): the search's only read of any metric."""
    best = []
    for run_id in run_ids:
        values = [m.value for m in client.get_metric_history(run_id, SELECTION_METRIC) if not math.isnan(m.value)]
        if not values:
            raise ConfigError(f"run {run_id} logged no {SELECTION_METRIC}")
        best.append(max(values))
    return math.fsum(best) / len(best)


def _boundaries(space: dict) -> list[dict]:
    """One point per distribution edge (low, high, every choice): all are validated before the search starts."""
    points = []
    for key, spec in space.items():
        edges = spec["choices"] if spec["type"] == "categorical" else [spec["low"], spec["high"]]
        points += [{key: parse_value(key, edge, load_defaults().kind(key))} for edge in edges]
    return points


def _sampler(name: str, seed: int):
    import optuna

    if name not in SAMPLERS:
        raise ConfigError(f"--sampler {name!r}: use one of {', '.join(SAMPLERS)}")
    return optuna.samplers.TPESampler(seed=seed) if name == "tpe" else optuna.samplers.RandomSampler(seed=seed)


def run_search(*, short_title: str, profiles: list, overrides: dict, space_path: str, trials: int, folds: str,
               seeds: str, sampler: str, sampler_seed: int, workers: int, threads_per_run: int,
               address: str | None, experiment_name: str | None = None, echo=print) -> int:
    """Validate everything, then ask/tell `trials` trials; print the best trial as a `gakt-study launch` line."""
    space = load_space(space_path)
    if not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"--trials {trials}: must be a whole number >= 1, e.g. --trials 20")
    clash = sorted(set(space) & set(overrides))
    if clash:
        raise ConfigError(f"{', '.join(clash)}: given as --<param> and in the space file; give each once")
    base = build_plan(short_title, profiles, overrides, folds, seeds, [], False, workers, threads_per_run,
                      points=_boundaries(space), kind="search")
    every_fold = _every_fold(base)  # the best trial's launch line reports it on all of them
    _sampler(sampler, sampler_seed)
    address = engine.check_address(address)
    import optuna
    from mlflow.optuna import MlflowStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    client = tracking.connect()
    name = tracking.experiment_name(experiment_name)
    experiment_id = tracking.ensure_experiment(client, name)
    code = run_record.code_version()
    per_trial = len(base.folds) * len(base.seeds)
    with engine.ray_cluster(address, workers=workers, threads_per_run=threads_per_run) as facts:
        study_id = run_record.new_experiment_id(client)
        run_name = run_record.make_run_name(short_title, study_id)
        storage = MlflowStorage(experiment_id=experiment_id)
        # its writes, like ours, must not be cut short by Ctrl-C / SIGTERM (tracking.interruptions); MLflow 3.17's
        # MlflowStorage keeps its client in _mlflow_client
        storage._mlflow_client = tracking.WholeCallClient(storage._mlflow_client)
        optuna_study = optuna.create_study(storage=storage, study_name=run_name, direction="maximize",
                                           sampler=_sampler(sampler, sampler_seed))
        parent_id = optuna_study._study_id  # the MLflow run MlflowStorage made for the Optuna study
        tracking.MlflowSink(client, parent_id).set_tags({
            tracking.TAG_EXP_ID: study_id, tracking.TAG_TITLE: short_title, tracking.TAG_KIND: "search",
            tracking.TAG_OUTCOME: "running", tracking.TAG_TOTAL: str(trials * per_trial),
            tracking.TAG_FINISHED: "0", **study.driver_tags()})
        base.slots = []
        search = {"space": space, "trials": trials, "sampler": sampler, "sampler_seed": sampler_seed,
                  "direction": "maximize", "objective": f"mean over the trial's children of max({SELECTION_METRIC})",
                  "storage": {"type": "mlflow.optuna.MlflowStorage", "experiment_id": experiment_id,
                              "study_name": run_name, "study_run_id": parent_id,
                              "tracking_uri": tracking.redact(tracking.tracking_uri())}}
        config = definition(base, study_id=study_id, run_name=run_name, experiment_name=name, facts=facts,
                            extra={"search": search})
        config["commands"].pop("resume")
        tracking.publish_bytes(client, parent_id, run_record.CONFIG_NAME, tracking.json_bytes(config))
        echo(f"search {study_id}: {trials} trials x {per_trial} children ({sampler} sampler, seed {sampler_seed}) on "
             f"{'a local Ray cluster' if address is None else address}, parent run {parent_id}")
        started = time.perf_counter()
        table: list = []
        try:
            with study.interruptions():
                interrupted = _trials(client, optuna_study, space, base, trials, per_trial, experiment_id, name,
                                      parent_id, study_id, code, table, echo)
        except KeyboardInterrupt as exc:  # between two trials' children: mark what still runs
            interrupted = study.interrupted_by(exc)
            lifecycle.mark_unfinished(client, [r.info.run_id for r in lifecycle.study_children(
                client, parent_id)], f"the study driver received {interrupted}")
        storage.flush_all_batches()
        report = study_report.publish_report(client, parent_id, wall_seconds=time.perf_counter() - started)
        _publish_best(client, parent_id, optuna_study, base, every_fold, table, echo)
        return study.finish_parent(client, parent_id, report, interrupted, echo, label="search")


def _trials(client, optuna_study, space, base: Plan, trials, per_trial, experiment_id, name, parent_id, study_id,
            code, table: list, echo) -> str | None:
    """Ask, run the trial's children, tell; one row per trial appended to `table`. Returns the interruption."""
    from optuna.trial import TrialState

    interrupted = None
    for number in range(trials):
        trial = optuna_study.ask()
        values = suggest(trial, space)
        trial_run = trial._trial_id  # MlflowStorage: the trial's MLflow run, nested under the search's parent
        client.update_run(trial_run, name=f"{base.short_title}-t{number}")
        tracking.MlflowSink(client, trial_run).set_tags({
            tracking.TAG_KIND: "trial", tracking.TAG_STUDY_ID: study_id, tracking.TAG_STUDY_RUN: parent_id,
            tracking.TAG_TITLE: base.short_title, tracking.TAG_OUTCOME: "running", tracking.TAG_TRIAL: str(number),
            tracking.TAG_POINT_VALUES: json.dumps(values, sort_keys=True), **study.driver_tags()})
        row = {"trial": number, "run_id": trial_run, "values": values, "value": None, "state": "FAIL", "reason": ""}
        table.append(row)
        try:
            plan = build_plan(base.short_title, base.profiles, base.overrides, ",".join(map(str, base.folds)),
                              ",".join(map(str, base.seeds)), [], False, base.workers, base.threads_per_run,
                              points=[values], kind="search")
        except ConfigError as exc:
            row["reason"] = f"invalid parameters: {exc}"
        else:
            for slot in plan.slots:
                slot.index, slot.point = number * per_trial + slot.index, number
            records = study.data_records_for(plan.slots)
            children = study.create_children(client, experiment_id, name, trial_run, parent_id, study_id, plan,
                                              plan.slots, records, code)
            echo(f"trial {number}: {json.dumps(values, sort_keys=True)}")
            interrupted = study.run_children(client, parent_id, children, plan)
            done = [c.run_id for c in children if lifecycle.is_finished(client.get_run(c.run_id), False)]
            if len(done) == len(children) and not interrupted:
                row.update(value=trial_objective(client, done), state="COMPLETE")
            else:
                row["reason"] = "interrupted" if interrupted else f"{len(children) - len(done)} children did not finish"
        if row["state"] == "COMPLETE":
            optuna_study.tell(trial, row["value"])
            client.log_metric(parent_id, "search/trial_val_auc", row["value"], step=number)
        else:
            optuna_study.tell(trial, state=TrialState.FAIL)
        tracking.MlflowSink(client, trial_run).set_tags({
            tracking.TAG_OUTCOME: "finished" if row["state"] == "COMPLETE" else "failed",
            tracking.TAG_OUTCOME_REASON: (row["reason"] or f"mean best val AUC {row['value']:.6f}")[:500]})
        echo(f"trial {number}: {row['state'].lower()}"
             + (f", mean best val AUC {row['value']:.6f}" if row["value"] is not None else f" ({row['reason']})"))
        if interrupted:
            break
    return interrupted


def _every_fold(plan: Plan) -> list[int]:
    """The folds of the searched data set (its registry entry's `folds`), from the validated plan's first child."""
    return list(registry.lookup(plan.slots[0].params["dataset"]).entry["folds"])


def _publish_best(client, parent_id: str, optuna_study, base: Plan, every_fold: list[int], table: list,
                  echo) -> None:
    """The best trial (by mean val AUC) as a ready `gakt-study launch` line, on the parent and printed."""
    complete = [row for row in table if row["state"] == "COMPLETE"]
    summary = {"trials": table, "best_trial": None, "launch": None}
    if complete:
        best = optuna_study.best_trial
        row = next(r for r in table if r["run_id"] == best._trial_id)
        final = Plan(f"{base.short_title}-best", base.profiles, base.overrides, every_fold, base.seeds, {},
                     True, base.workers, base.threads_per_run)
        summary.update(best_trial=row["trial"], launch=launch_line(final, row["values"]))
        tracking.MlflowSink(client, parent_id).set_tags({tracking.TAG_SEARCH_BEST_TRIAL: str(row["trial"]),
                                                         tracking.TAG_SEARCH_BEST_VALUES: json.dumps(row["values"],
                                                                                               sort_keys=True)})
        client.log_metric(parent_id, "search/best_val_auc", row["value"], step=0)
        tracking.publish_bytes(client, parent_id, "best_launch.txt", (summary["launch"] + "\n").encode())
        echo(f"best trial {row['trial']}: mean best val AUC {row['value']:.6f} with "
             f"{json.dumps(row['values'], sort_keys=True)}\nreport it on every fold of the data set, evaluated:\n"
             f"  {summary['launch']}")
    tracking.publish_bytes(client, parent_id, "search_trials.json", tracking.json_bytes(summary))
