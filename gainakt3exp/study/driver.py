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
a Ray task runs `mlflow run --run-id <child>` (engine.py). Results land on the parent (report.py).
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

from gainakt3exp import tracking
from gainakt3exp.errors import ConfigError, ReproError
from gainakt3exp.service import record as run_record
from gainakt3exp.study import engine, lifecycle
from gainakt3exp.study import report as study_report
from gainakt3exp.study.plan import Plan, Slot, child_title, definition, launch_line, plan_from_definition
from gainakt3exp.tracking.tags import TAG_ATTEMPT, TAG_POINT, TAG_POINT_VALUES, TAG_SLOT, TAG_STUDY_ID, TAG_STUDY_RUN

STUDY_KINDS = ("study", "search")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no download bars between progress lines


# --- the runs ------------------------------------------------------------------------------------------------------


def driver_tags() -> dict:
    return {tracking.TAG_HOST: platform.node(), tracking.TAG_PID: str(os.getpid())}


def create_parent(client, experiment_id: str, *, kind: str, study_id: str, title: str, run_name: str,
                  total: int, tags: dict | None = None) -> str:
    run = client.create_run(experiment_id, run_name=run_name, tags={
        tracking.TAG_EXP_ID: study_id, tracking.TAG_TITLE: title, tracking.TAG_KIND: kind,
        tracking.TAG_OUTCOME: "running", tracking.TAG_TOTAL: str(total), tracking.TAG_FINISHED: "0",
        **driver_tags(), **(tags or {})})
    return run.info.run_id


@dataclass
class Child:
    """A child run the driver created, and the Ray task that runs it."""

    slot: Slot
    run_id: str
    exp_id: str
    task: dict


def create_child(client, *, experiment_id: str, experiment_name: str, parent_id: str, top_id: str, study_id: str,
                 plan: Plan, slot: Slot, attempt: int, record: dict, code: dict) -> Child:
    """The child run (pending, tagged and nested), its config.json, and its task."""
    exp_id = run_record.new_experiment_id(client)
    title = child_title(plan, slot)
    run_name = run_record.make_run_name(title, exp_id)
    run = client.create_run(experiment_id, run_name=run_name, tags={
        "mlflow.parentRunId": parent_id, TAG_STUDY_RUN: top_id, TAG_STUDY_ID: study_id, TAG_SLOT: str(slot.index),
        TAG_ATTEMPT: str(attempt), TAG_POINT: str(slot.point),
        TAG_POINT_VALUES: json.dumps(slot.values, sort_keys=True),
        tracking.TAG_FOLD: str(slot.fold), tracking.TAG_SEED: str(slot.seed),
        tracking.TAG_EXP_ID: exp_id, tracking.TAG_TITLE: title, tracking.TAG_KIND: "train",
        tracking.TAG_OUTCOME: "pending", **driver_tags()})
    config = run_record.build_config(slot.resolved, experiment_name=experiment_name, run_name=run_name,
                                     exp_id=exp_id, short_title=title, hashes=record["file_hashes"], code=code,
                                     dataset=record)
    _pin_threads(config, plan.threads_per_run)
    config["study"] = {"study_id": study_id, "parent_run_id": parent_id, "slot": slot.index, "point": slot.point,
                       "values": slot.values, "attempt": attempt, "threads_per_run": plan.threads_per_run}
    tracking.publish_bytes(client, run.info.run_id, run_record.CONFIG_NAME, run_record.config_bytes(config))
    return Child(slot, run.info.run_id, exp_id,
                 make_task(run.info.run_id, exp_id, experiment_id, slot.params, plan, code))


def _pin_threads(config: dict, threads: int) -> None:
    """The child's commands run with the study's torch threads (the thread count can move the last float bits)."""
    pin = f"OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} "
    for key in ("train_explicit", "reproduce"):
        config["commands"][key] = pin + config["commands"][key]


def make_task(run_id: str, exp_id: str, experiment_id: str, params: dict, plan: Plan, code: dict) -> dict:
    return {"run_id": run_id, "exp_id": exp_id, "experiment_id": experiment_id, "params": params,
            "tracking_uri": tracking.redact(tracking.tracking_uri()), "threads_per_run": plan.threads_per_run,
            "evaluate": plan.evaluate, "git_commit": code["git_commit"],
            "gpus": 1 if params["device"].startswith("cuda") else 0}


def data_records_for(slots) -> dict:
    """Each slot's data set record (run_record.data_record: entry, origin, folder, file hashes; once per set)."""
    cache: dict = {}
    for slot in slots:
        key = (slot.params["dataset"], slot.params["data_root"])
        if key not in cache:
            cache[key] = run_record.data_record(slot.params)
    return {slot.index: cache[(slot.params["dataset"], slot.params["data_root"])] for slot in slots}


_SIGNALS: list[str] = []  # what interrupted the driver (Ray may re-raise a KeyboardInterrupt without its message)


def _interrupt(name: str) -> KeyboardInterrupt:
    _SIGNALS.append(name)
    return KeyboardInterrupt(name)


def interrupted_by(exc: KeyboardInterrupt) -> str:
    return _SIGNALS[0] if _SIGNALS else (str(exc) or "SIGINT")


@contextmanager
def interruptions():
    """SIGTERM and Ctrl-C raise KeyboardInterrupt(<signal name>) in the block, once, so both end a study the same
    way; neither cuts a store call short (tracking.interruptions)."""
    _SIGNALS.clear()
    with tracking.interruptions(_interrupt):
        yield


def abort(client, top_id: str, why: str, echo=print) -> int:
    """An interruption outside the children's execution (while creating them, between trials): every run of the
    study still RUNNING and the parent become KILLED. Returns 130."""
    lifecycle.mark_unfinished(client, [r.info.run_id for r in lifecycle.study_children(client, top_id)],
                                 f"the study driver received {why}")
    tracking.MlflowSink(client, top_id).set_tags({tracking.TAG_OUTCOME: "killed",
                                                  tracking.TAG_OUTCOME_REASON: f"interrupted by {why} while starting"})
    client.set_terminated(top_id, "KILLED")
    echo(f"study run {top_id}: interrupted by {why}; marked KILLED")
    return 130


def create_guarded(client, top_id: str, make, echo=print):
    """make() (creating the children), with Ctrl-C / SIGTERM leading to abort(): returns the children or None."""
    try:
        with interruptions():
            return make()
    except KeyboardInterrupt as exc:
        abort(client, top_id, interrupted_by(exc), echo)
        return None


def run_children(client, top_id: str, children: list[Child], plan: Plan) -> str | None:
    """Run the children on the joined Ray cluster and record each result (progress on stderr). Returns None, or the
    interruption (Ctrl-C / SIGTERM) after which every unfinished child was marked KILLED."""
    progress = lifecycle.Progress(len(children), echo=lambda text: print(text, file=sys.stderr, flush=True))
    run_ids, done_ids = {c.run_id for c in children}, set()

    def on_done(task, result):
        done_ids.add(task["run_id"])
        progress.done(lifecycle.record_child_result(client, task["run_id"], result, plan.evaluate))
        client.set_tag(top_id, tracking.TAG_FINISHED, str(lifecycle.count_finished(client, top_id,
                                                                                        plan.evaluate)))

    def on_tick():
        progress.show(running=lifecycle.count_running(client, top_id, run_ids - done_ids))

    try:
        with interruptions():
            progress.show(running=0)
            _results, interrupted = engine.run_tasks([c.task for c in children],
                                                     threads_per_run=plan.threads_per_run, on_done=on_done,
                                                     on_tick=on_tick)
            if interrupted:
                interrupted = _SIGNALS[0] if _SIGNALS else interrupted
    except KeyboardInterrupt as exc:  # during submission
        interrupted = interrupted_by(exc)
    progress.close()
    if interrupted:
        lifecycle.wait_stopped(client, sorted(run_ids), engine.CANCEL_GRACE_SECONDS)
        lifecycle.mark_unfinished(client, sorted(run_ids), f"the study driver received {interrupted}")
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
                                                     tracking.TAG_OUTCOME_REASON: reason[:500]})
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
            echo(shlex.join(run_record.train_command(slot.params, name, child_title(plan, slot))))
        return 0
    client = tracking.connect()
    experiment_id = tracking.ensure_experiment(client, name)
    records, code = data_records_for(plan.slots), run_record.code_version()
    with engine.ray_cluster(address, workers=plan.workers, threads_per_run=plan.threads_per_run) as facts:
        study_id = run_record.new_experiment_id(client)
        run_name = run_record.make_run_name(plan.short_title, study_id)
        parent_id = create_parent(client, experiment_id, kind=plan.kind, study_id=study_id, title=plan.short_title,
                                  run_name=run_name, total=len(plan.slots))
        config = definition(plan, study_id=study_id, run_name=run_name, experiment_name=name, facts=facts)
        tracking.publish_bytes(client, parent_id, run_record.CONFIG_NAME, tracking.json_bytes(config))
        client.log_metric(parent_id, "study/ray_startup_seconds", facts["startup_seconds"], step=0)
        echo(f"study {study_id}: {len(plan.slots)} children ({_shape(plan)}) on "
             f"{'a local Ray cluster' if address is None else address} ({plan.workers} workers x "
             f"{plan.threads_per_run} threads), parent run {parent_id}")
        children = create_guarded(client, parent_id, lambda: create_children(
            client, experiment_id, name, parent_id, parent_id, study_id, plan, plan.slots, records, code), echo)
        return 130 if children is None else execute(client, parent_id, children, plan, echo)


def _shape(plan: Plan) -> str:
    parts = [f"{len(plan.folds)} folds", f"{len(plan.seeds)} seeds"]
    if plan.grid:
        parts.append(f"{len(plan.slots) // (len(plan.folds) * len(plan.seeds))} grid points")
    return " x ".join(parts)


def create_children(client, experiment_id, name, parent_id, top_id, study_id, plan, slots, records, code,
                     attempts=None) -> list[Child]:
    return [create_child(client, experiment_id=experiment_id, experiment_name=name, parent_id=parent_id,
                         top_id=top_id, study_id=study_id, plan=plan, slot=slot,
                         attempt=(attempts or {}).get(slot.index, 1), record=records[slot.index], code=code)
            for slot in slots]


def load_report(ref: str) -> dict:
    """The report of study REF (a run id or its 6-digit id), read from the store (gakt-study show)."""
    client = tracking.connect()
    return study_report.build_report(client, study_parent(client, ref).info.run_id)


def study_parent(client, ref: str):
    parent = tracking.resolve_run(client, ref)
    if parent.data.tags.get(tracking.TAG_KIND) not in STUDY_KINDS:
        raise ConfigError(f"run {parent.info.run_id} is not a study (gakt.kind "
                          f"{parent.data.tags.get(tracking.TAG_KIND, '-')}); list studies with gakt-runs")
    return parent


def resume_study(ref: str, address: str | None, workers: int | None, echo=print) -> int:
    """Run again only the children of a study that did not finish (new attempts of their slots), then aggregate."""
    address = engine.check_address(address)
    client = tracking.connect()
    parent = study_parent(client, ref)
    if parent.data.tags.get(tracking.TAG_KIND) == "search":
        raise ConfigError("a search is not resumed; start a new one with gakt-study search (its trials are "
                          "chosen by the sampler, in order)")
    parent_id = parent.info.run_id
    config, _raw = run_record.read_config(client, parent_id)
    plan = plan_from_definition(config, workers)
    latest = lifecycle.latest_children(client, parent_id)
    todo = [s for s in plan.slots if s.index not in latest or not lifecycle.is_finished(latest[s.index],
                                                                                           plan.evaluate)]
    for slot in todo:
        if slot.index in latest:
            recorded = run_record.config_params(run_record.read_config(client, latest[slot.index].info.run_id)[0])
            if recorded != slot.params:
                changed = sorted(k for k in recorded if recorded[k] != slot.params.get(k))
                raise ReproError(f"slot {slot.index} (fold {slot.fold}, seed {slot.seed}) would now run with other "
                                 f"parameters than before ({', '.join(changed)}): a profile changed; check out "
                                 f"commit {config['code_version']['git_commit']} to resume this study")
    study_id = config["study_id"]
    if not todo:
        echo(f"study {study_id}: every child finished; nothing to resume")
        return 0
    records, code = data_records_for(todo), run_record.code_version()
    with engine.ray_cluster(address, workers=plan.workers, threads_per_run=plan.threads_per_run):
        client.update_run(parent_id, status="RUNNING")
        tracking.MlflowSink(client, parent_id).set_tags({tracking.TAG_OUTCOME: "running", **driver_tags()})
        echo(f"study {study_id}: resuming {len(todo)} of {len(plan.slots)} children")
        attempts = {s.index: int(latest[s.index].data.tags.get(TAG_ATTEMPT, "1")) + 1 for s in todo
                    if s.index in latest}
        children = create_guarded(client, parent_id, lambda: create_children(
            client, parent.info.experiment_id, config["experiment_name"], parent_id, parent_id, study_id, plan, todo,
            records, code, attempts), echo)
        return 130 if children is None else execute(client, parent_id, children, plan, echo)
