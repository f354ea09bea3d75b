"""Studies: folds x seeds x grid points as one tracked record, a parent run over ordinary child runs, on Ray.

    gakt-study launch --short_title paper --profile cpu-small --data_root ../shared/data --folds 0,1,2,3,4 \\
        --seeds 42 --eval
    gakt-study show 512034            # the table, read back from the store
    gakt-study resume 512034          # only the children that did not finish
    gakt-repro 512034 && gakt-compare 512034

The parent run (gakt.kind study, a 6-digit study id like any run) holds the study's definition as config.json:
base profiles and overrides, folds, seeds, grid, whether children are evaluated, the engine settings, the code
version. Every child is an ordinary run made the way gakt-repro makes one: the driver creates it (tags
mlflow.parentRunId, gakt.study_*), places its config.json (with commands.train_explicit, reproducible alone) and
a Ray task runs `mlflow run --run-id <child>` (engine.py). Results land on the parent (study_report.py).
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import signal
import sys
import time
from dataclasses import dataclass

from . import engine, experiment, study_report, tracking
from .errors import ConfigError, ReproError
from .study_plan import Plan, Slot, child_title, definition, launch_line, plan_from_definition

STUDY_KINDS = ("study", "search")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no download bars between progress lines
TAG_STUDY_ID = "gakt.study_id"
TAG_STUDY_RUN = study_report.TAG_STUDY_RUN
TAG_SLOT = study_report.TAG_SLOT
TAG_ATTEMPT = study_report.TAG_ATTEMPT
TAG_POINT = study_report.TAG_POINT
TAG_POINT_VALUES = study_report.TAG_POINT_VALUES


# --- the runs ------------------------------------------------------------------------------------------------------


def _driver_tags() -> dict:
    return {"gakt.host": platform.node(), "gakt.pid": str(os.getpid())}


def create_parent(client, experiment_id: str, *, kind: str, study_id: str, title: str, run_name: str,
                  total: int, tags: dict | None = None) -> str:
    run = client.create_run(experiment_id, run_name=run_name, tags={
        tracking.TAG_EXP_ID: study_id, tracking.TAG_TITLE: title, tracking.TAG_KIND: kind,
        tracking.TAG_OUTCOME: "running", study_report.TAG_TOTAL: str(total), study_report.TAG_FINISHED: "0",
        **_driver_tags(), **(tags or {})})
    return run.info.run_id


@dataclass
class Child:
    """A child run the driver created, and the Ray task that runs it."""

    slot: Slot
    run_id: str
    exp_id: str
    task: dict


def create_child(client, *, experiment_id: str, experiment_name: str, parent_id: str, top_id: str, study_id: str,
                 plan: Plan, slot: Slot, attempt: int, hashes: dict, code: dict) -> Child:
    """The child run (pending, tagged and nested), its config.json, and its task."""
    exp_id = experiment.new_experiment_id(client)
    title = child_title(plan, slot)
    run_name = experiment.make_run_name(title, exp_id)
    run = client.create_run(experiment_id, run_name=run_name, tags={
        "mlflow.parentRunId": parent_id, TAG_STUDY_RUN: top_id, TAG_STUDY_ID: study_id, TAG_SLOT: str(slot.index),
        TAG_ATTEMPT: str(attempt), TAG_POINT: str(slot.point),
        TAG_POINT_VALUES: json.dumps(slot.values, sort_keys=True),
        study_report.TAG_FOLD: str(slot.fold), study_report.TAG_SEED: str(slot.seed),
        tracking.TAG_EXP_ID: exp_id, tracking.TAG_TITLE: title, tracking.TAG_KIND: "train",
        tracking.TAG_OUTCOME: "pending", **_driver_tags()})
    config = experiment.build_config(slot.resolved, experiment_name=experiment_name, run_name=run_name,
                                     exp_id=exp_id, short_title=title, hashes=hashes, code=code)
    _pin_threads(config, plan.threads_per_run, exp_id)
    config["study"] = {"study_id": study_id, "parent_run_id": parent_id, "slot": slot.index, "point": slot.point,
                       "values": slot.values, "attempt": attempt, "threads_per_run": plan.threads_per_run}
    tracking.publish_bytes(client, run.info.run_id, experiment.CONFIG_NAME, experiment.config_bytes(config))
    return Child(slot, run.info.run_id, exp_id,
                 make_task(run.info.run_id, exp_id, experiment_id, slot.params, plan, code))


def _pin_threads(config: dict, threads: int, exp_id: str) -> None:
    """The child's commands run with the study's torch threads (the thread count can move the last float bits)."""
    pin = f"OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} "
    for key in ("train_explicit", "reproduce"):
        config["commands"][key] = pin + config["commands"][key]


def make_task(run_id: str, exp_id: str, experiment_id: str, params: dict, plan: Plan, code: dict) -> dict:
    return {"run_id": run_id, "exp_id": exp_id, "experiment_id": experiment_id, "params": params,
            "tracking_uri": tracking.redact(tracking.tracking_uri()), "threads_per_run": plan.threads_per_run,
            "evaluate": plan.evaluate, "git_commit": code["git_commit"],
            "gpus": 1 if params["device"].startswith("cuda") else 0}


def data_hashes_for(slots) -> dict:
    """Data file hashes of each slot's data set (computed once per data set)."""
    cache: dict = {}
    for slot in slots:
        key = (slot.params["dataset"], slot.params["data_root"])
        if key not in cache:
            cache[key] = experiment.data_hashes(slot.params)
    return {slot.index: cache[(slot.params["dataset"], slot.params["data_root"])] for slot in slots}


_SIGNALS: list[str] = []  # what interrupted the driver (Ray may re-raise a KeyboardInterrupt without its message)


def _raise_interrupt(signum, _frame):
    _SIGNALS.append(signal.Signals(signum).name)
    raise KeyboardInterrupt(_SIGNALS[-1])


def run_children(client, top_id: str, children: list[Child], plan: Plan) -> str | None:
    """Run the children on the joined Ray cluster and record each result (progress on stderr). Returns None, or the
    interruption (Ctrl-C / SIGTERM) after which every unfinished child was marked KILLED."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    progress = study_report.Progress(len(children), echo=lambda text: print(text, file=sys.stderr, flush=True))
    run_ids = {c.run_id for c in children}

    def on_done(task, result):
        progress.done(study_report.record_child_result(client, task["run_id"], result, plan.evaluate))
        client.set_tag(top_id, study_report.TAG_FINISHED, str(study_report.count_finished(client, top_id,
                                                                                        plan.evaluate)))

    def on_tick():
        progress.show(running=study_report.count_running(client, top_id, run_ids))

    _SIGNALS.clear()
    try:
        progress.show(running=0)
        _results, interrupted = engine.run_tasks([c.task for c in children], threads_per_run=plan.threads_per_run,
                                                 on_done=on_done, on_tick=on_tick)
    except KeyboardInterrupt as exc:  # during submission
        interrupted = str(exc) or "SIGINT"
    finally:
        signal.signal(signal.SIGTERM, previous)
    if interrupted and _SIGNALS:
        interrupted = _SIGNALS[0]
    progress.close()
    if interrupted:
        study_report.mark_unfinished(client, sorted(run_ids), f"the study driver received {interrupted}")
    return interrupted


def execute(client, parent_id: str, children: list[Child], plan: Plan, echo=print, label: str = "") -> int:
    """run_children, then the aggregate on the parent, the table, and the outcome. Returns 0 (all finished),
    1 (some failed) or 130 (interrupted)."""
    started = time.perf_counter()
    interrupted = run_children(client, parent_id, children, plan)
    report = study_report.publish_report(client, parent_id, wall_seconds=time.perf_counter() - started)
    return finish_parent(client, parent_id, report, interrupted, echo, label)


def finish_parent(client, parent_id: str, report: dict, interrupted: str | None, echo, label: str = "") -> int:
    """The parent's outcome (`finished N of M`, the failed children named), its status and the exit code."""
    done, total = report["finished"], report["total"]
    failed = [c for c in report["children"] if not c["finished"]]
    names = "; ".join(f"{c['exp_id']} (fold {c['fold']}, seed {c['seed']}): {c['reason']}" for c in failed[:10])
    summary = f"finished {done} of {total}"
    if interrupted:
        outcome, status, code = "killed", "KILLED", 130
        reason = f"interrupted by {interrupted}; {summary}"
    elif failed:
        outcome, status, code = "failed", "FAILED", 1
        reason = f"{summary}; failed: {names}"
    else:
        outcome, status, code, reason = "finished", "FINISHED", 0, summary
    tracking.MlflowSink(client, parent_id).set_tags({tracking.TAG_OUTCOME: outcome,
                                                     "gakt.outcome_reason": reason[:500]})
    client.set_terminated(parent_id, status)
    echo(study_report.format_report({**report, "status": status}))
    echo(f"{label or 'study'} {report['study_id']}: {reason}")
    return code


# --- the verbs -----------------------------------------------------------------------------------------------------


def launch_study(plan: Plan, address: str | None, dry_run: bool, experiment_name: str | None = None,
                 echo=print) -> int:
    """Create the parent and its children and run them (see the module docstring). `plan` is validated."""
    address = engine.check_address(address)
    name = tracking.experiment_name(experiment_name)
    if dry_run:
        echo(f"# study of {len(plan.slots)} children on {address or 'a local Ray cluster'}; nothing written")
        echo(launch_line(plan))
        for slot in plan.slots:
            echo(shlex.join(experiment.train_command(slot.params, name, child_title(plan, slot))))
        return 0
    client = tracking.connect()
    experiment_id = tracking.ensure_experiment(client, name)
    hashes, code = data_hashes_for(plan.slots), experiment.code_version()
    with engine.ray_cluster(address, workers=plan.workers, threads_per_run=plan.threads_per_run) as facts:
        study_id = experiment.new_experiment_id(client)
        run_name = experiment.make_run_name(plan.short_title, study_id)
        parent_id = create_parent(client, experiment_id, kind=plan.kind, study_id=study_id, title=plan.short_title,
                                  run_name=run_name, total=len(plan.slots))
        config = definition(plan, study_id=study_id, run_name=run_name, experiment_name=name, facts=facts)
        tracking.publish_bytes(client, parent_id, experiment.CONFIG_NAME, tracking.json_bytes(config))
        client.log_metric(parent_id, "study/ray_startup_seconds", facts["startup_seconds"], step=0)
        echo(f"study {study_id}: {len(plan.slots)} children ({_shape(plan)}) on "
             f"{'a local Ray cluster' if address is None else address} ({plan.workers} workers x "
             f"{plan.threads_per_run} threads), parent run {parent_id}")
        children = _create_children(client, experiment_id, name, parent_id, parent_id, study_id, plan, plan.slots,
                                    hashes, code)
        return execute(client, parent_id, children, plan, echo)


def _shape(plan: Plan) -> str:
    parts = [f"{len(plan.folds)} folds", f"{len(plan.seeds)} seeds"]
    if plan.grid:
        parts.append(f"{len(plan.slots) // (len(plan.folds) * len(plan.seeds))} grid points")
    return " x ".join(parts)


def _create_children(client, experiment_id, name, parent_id, top_id, study_id, plan, slots, hashes, code,
                     attempts=None) -> list[Child]:
    return [create_child(client, experiment_id=experiment_id, experiment_name=name, parent_id=parent_id,
                         top_id=top_id, study_id=study_id, plan=plan, slot=slot,
                         attempt=(attempts or {}).get(slot.index, 1), hashes=hashes[slot.index], code=code)
            for slot in slots]


def _study_parent(client, ref: str):
    parent = tracking.resolve_run(client, ref)
    if parent.data.tags.get(tracking.TAG_KIND) not in STUDY_KINDS:
        raise ConfigError(f"run {parent.info.run_id} is not a study (gakt.kind "
                          f"{parent.data.tags.get(tracking.TAG_KIND, '-')}); list studies with gakt-runs")
    return parent


def resume_study(ref: str, address: str | None, workers: int | None, echo=print) -> int:
    """Run again only the children of a study that did not finish (new attempts of their slots), then aggregate."""
    address = engine.check_address(address)
    client = tracking.connect()
    parent = _study_parent(client, ref)
    if parent.data.tags.get(tracking.TAG_KIND) == "search":
        raise ConfigError("a search is not resumed; start a new one with gakt-study search (its trials are "
                          "chosen by the sampler, in order)")
    parent_id = parent.info.run_id
    config, _raw = experiment.read_config(client, parent_id)
    plan = plan_from_definition(config, workers)
    latest = study_report.latest_children(client, parent_id)
    todo = [s for s in plan.slots if s.index not in latest or not study_report.is_finished(latest[s.index],
                                                                                           plan.evaluate)]
    for slot in todo:
        if slot.index in latest:
            recorded = experiment.config_params(experiment.read_config(client, latest[slot.index].info.run_id)[0])
            if recorded != slot.params:
                changed = sorted(k for k in recorded if recorded[k] != slot.params.get(k))
                raise ReproError(f"slot {slot.index} (fold {slot.fold}, seed {slot.seed}) would now run with other "
                                 f"parameters than before ({', '.join(changed)}): a profile changed; check out "
                                 f"commit {config['code_version']['git_commit']} to resume this study")
    study_id = config["study_id"]
    if not todo:
        echo(f"study {study_id}: every child finished; nothing to resume")
        return 0
    hashes, code = data_hashes_for(todo), experiment.code_version()
    with engine.ray_cluster(address, workers=plan.workers, threads_per_run=plan.threads_per_run):
        client.update_run(parent_id, status="RUNNING")
        tracking.MlflowSink(client, parent_id).set_tags({tracking.TAG_OUTCOME: "running", **_driver_tags()})
        echo(f"study {study_id}: resuming {len(todo)} of {len(plan.slots)} children")
        attempts = {s.index: int(latest[s.index].data.tags.get(TAG_ATTEMPT, "1")) + 1 for s in todo
                    if s.index in latest}
        children = _create_children(client, parent.info.experiment_id, config["experiment_name"], parent_id,
                                    parent_id, study_id, plan, todo, hashes, code, attempts)
        return execute(client, parent_id, children, plan, echo)


def reproduce_study(client, parent, evaluate: bool, echo=print) -> int:
    """A new study tagged gakt.reproduction_of the original: one reproduction (gakt-repro's checks) per child."""
    parent_id = parent.info.run_id
    config, raw = experiment.read_config(client, parent_id)
    latest = study_report.latest_children(client, parent_id)
    evaluate = evaluate or bool(config.get("evaluate"))
    unfinished = [str(s["slot"]) for s in config["slots"]
                  if s["slot"] not in latest or not study_report.is_finished(latest[s["slot"]], False)]
    if unfinished:
        raise ReproError(f"study {config['study_id']}: children of slot(s) {', '.join(unfinished)} did not finish; "
                         f"finish them first (gakt-study resume {config['study_id']})")
    threads = config["engine"]["threads_per_run"]
    plan = Plan(config["short_title"], config["profiles"], config["overrides"], config["folds"], config["seeds"],
                config["grid"], evaluate, config["engine"]["workers"], threads, kind=config["kind"])
    address = engine.check_address(None)
    code = experiment.code_version()
    with engine.ray_cluster(address, workers=plan.workers, threads_per_run=threads):
        study_id = config["study_id"]
        repro_id = create_parent(client, parent.info.experiment_id, kind=config["kind"], study_id=study_id,
                                 title=config["short_title"], run_name=experiment.make_run_name(
                                     config["short_title"], study_id) + "_repro",
                                 total=len(latest), tags={tracking.TAG_REPRO_OF: parent_id})
        tracking.publish_bytes(client, repro_id, experiment.CONFIG_NAME, raw)  # byte for byte
        echo(f"reproducing study {study_id} (run {parent_id}) as run {repro_id}: {len(latest)} children")
        children = []
        for index in sorted(latest):
            original = latest[index]
            tags = original.data.tags
            extra = {"mlflow.parentRunId": repro_id, TAG_STUDY_RUN: repro_id, TAG_STUDY_ID: study_id,
                     TAG_SLOT: str(index), TAG_ATTEMPT: "1", TAG_POINT: tags.get(TAG_POINT, "0"),
                     TAG_POINT_VALUES: tags.get(TAG_POINT_VALUES, "{}"), **_driver_tags(),
                     **{t: str(tracking.read_params(original)[k]) for t, k in (
                         (study_report.TAG_FOLD, "fold"), (study_report.TAG_SEED, "seed"))}}
            _orig, new_id, params, _command = experiment.prepare_reproduction(client, original.info.run_id,
                                                                               echo=echo, extra_tags=extra)
            exp_id = tags.get(tracking.TAG_EXP_ID, "")
            slot = Slot(index, int(tags.get(TAG_POINT, "0")), params["fold"], params["seed"],
                        json.loads(tags.get(TAG_POINT_VALUES, "{}")), params)
            children.append(Child(slot, new_id, exp_id,
                                  make_task(new_id, exp_id, parent.info.experiment_id, params, plan, code)))
        code_status = execute(client, repro_id, children, plan, echo, label="reproduction of study")
    echo(f"compare with: gakt-compare {study_id}")
    return code_status


# --- comparing a study with its reproduction ----------------------------------------------------------------------


def is_study(run) -> bool:
    return run.data.tags.get(tracking.TAG_KIND) in STUDY_KINDS


def compare_study(client, ref: str, repro: str | None = None, tolerance: float = 1e-4) -> dict:
    """Compare every child of study `ref` with its reproduction (compare.compare_runs each) and give one verdict:
    identical, within tolerance, or differs (also when a child has no reproduction)."""
    from .compare import compare_runs, latest_reproduction
    from .errors import RunNotFoundError

    original = tracking.resolve_run(client, ref)
    if repro is not None:
        reproduction = tracking.resolve_run(client, repro)
    elif original.data.tags.get(tracking.TAG_REPRO_OF):  # the reproduction's id: compare it with its original
        original, reproduction = tracking.resolve_run(client, original.data.tags[tracking.TAG_REPRO_OF]), original
    else:
        reproduction = latest_reproduction(client, original)
        if reproduction is None:
            study_id = original.data.tags.get(tracking.TAG_EXP_ID, original.info.run_id)
            raise RunNotFoundError(f"study {study_id} (run {original.info.run_id}) has no reproduction; run "
                                   f"gakt-repro {study_id}")
    ours, theirs = (study_report.latest_children(client, r.info.run_id) for r in (original, reproduction))
    rows = []
    for slot in sorted(ours):
        child = ours[slot]
        tags = child.data.tags
        row = {"slot": slot, "fold": tags.get(study_report.TAG_FOLD), "seed": tags.get(study_report.TAG_SEED),
               "values": json.loads(child.data.tags.get(TAG_POINT_VALUES, "{}")), "original": child.info.run_id,
               "reproduction": None, "verdict": "missing", "failing": [], "val_auc": None, "val_auc_diff": None}
        other = theirs.get(slot)
        if other is not None and other.data.tags.get(tracking.TAG_REPRO_OF) == child.info.run_id:
            report = compare_runs(client, child.info.run_id, other.info.run_id, tolerance)
            best = next(r for r in report["summary"] if r["name"] == "Best Val AUC")
            row.update(reproduction=other.info.run_id, verdict=report["verdict"], failing=report["failing"],
                       val_auc=best["original"], val_auc_diff=best["diff"])
        rows.append(row)
    verdicts = {r["verdict"] for r in rows}
    verdict = ("differs" if verdicts & {"differs", "missing"} or not rows
               else "identical" if verdicts == {"identical"} else "within tolerance")
    info = {r.info.run_id: r for r in (original, reproduction)}
    return {"study_id": original.data.tags.get(tracking.TAG_EXP_ID), "tolerance": float(tolerance),
            "original": original.info.run_id, "reproduction": reproduction.info.run_id,
            "statuses": {k: v.info.status for k, v in info.items()}, "children": rows, "verdict": verdict}


def format_study_comparison(report: dict) -> str:
    from .compare import verdict_line

    lines = [f"study {report['study_id']}, tolerance {report['tolerance']:.0e}",
             f"  original      {report['original']}  {report['statuses'][report['original']]}",
             f"  reproduction  {report['reproduction']}  {report['statuses'][report['reproduction']]}", "",
             f"{'slot':>4}  {'fold':>4}  {'seed':>5}  {'best val AUC':>12}  {'diff':>9}  {'verdict':<16}  "
             "original child                    reproduction child"]
    for r in report["children"]:
        diff = "-" if r["val_auc_diff"] is None else f"{r['val_auc_diff']:.2e}" if r["val_auc_diff"] else "0"
        auc = "-" if r["val_auc"] is None else f"{r['val_auc']:.6f}"
        lines.append(f"{r['slot']:>4}  {r['fold']:>4}  {r['seed']:>5}  {auc:>12}  {diff:>9}  {r['verdict']:<16}  "
                     f"{r['original']}  {r['reproduction'] or '-'}")
        if r["failing"]:
            lines.append(f"{'':>6}failing: {', '.join(r['failing'][:8])}")
    failing = sum(r["verdict"] in ("differs", "missing") for r in report["children"])
    lines.append("")
    line = verdict_line({"verdict": report["verdict"], "tolerance": report["tolerance"], "failing": []})
    lines.append(f"verdict: differs ({failing} of {len(report['children'])} children)"
                 if report["verdict"] == "differs" else line)
    return "\n".join(lines)


def reproduce_any(ref: str, echo=print, evaluate: bool = False) -> int:
    """gakt-repro: a study reproduces every child (reproduce_study), any other run as experiment.reproduce does."""
    client = tracking.connect()
    run = tracking.resolve_run(client, ref)
    if is_study(run):
        return reproduce_study(client, run, evaluate, echo)
    return experiment.reproduce(ref, echo=echo, evaluate=evaluate)
