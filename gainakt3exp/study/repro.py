"""Reproducing a study and comparing it with its reproduction (gakt-repro / gakt-compare of a study).

    gakt-repro 512034          # a new study tagged gakt.reproduction_of: every child reproduced, nested under it
    gakt-compare 512034        # every child with its reproduction: one row each, one verdict

Each child is reproduced with gakt-repro's own checks (reproduce.prepare_reproduction: logged params against
config.json, its md5, the data) and compared with gakt-compare's own comparison (compare.compare_runs).
"""
from __future__ import annotations

import json

from gainakt3exp import tracking
from gainakt3exp.errors import ReproError
from gainakt3exp.service import record, reproduce
from gainakt3exp.study import engine, lifecycle
from gainakt3exp.study.driver import (
    STUDY_KINDS,
    Child,
    create_guarded,
    create_parent,
    driver_tags,
    execute,
    make_task,
)
from gainakt3exp.study.plan import Plan, Slot
from gainakt3exp.tracking.tags import (
    TAG_ATTEMPT,
    TAG_POINT,
    TAG_POINT_VALUES,
    TAG_SLOT,
    TAG_STUDY_ID,
    TAG_STUDY_RUN,
)


def reproduce_study(client, parent, evaluate: bool, echo=print) -> int:
    """A new study tagged gakt.reproduction_of the original: one reproduction (gakt-repro's checks) per child
    (per finished child of a search: a failed trial has nothing to reproduce)."""
    parent_id = parent.info.run_id
    config, raw = record.read_config(client, parent_id)
    latest = lifecycle.latest_children(client, parent_id)
    evaluate = evaluate or bool(config.get("evaluate"))
    unfinished = [str(s["slot"]) for s in config["slots"]
                  if s["slot"] not in latest or not lifecycle.is_finished(latest[s["slot"]], False)]
    if unfinished:
        raise ReproError(f"study {config['study_id']}: children of slot(s) {', '.join(unfinished)} did not finish; "
                         f"finish them first (gakt-study resume {config['study_id']})")
    originals = [latest[i] for i in sorted(latest) if lifecycle.is_finished(latest[i], False)]
    threads = config["engine"]["threads_per_run"]
    plan = Plan(config["short_title"], config["profiles"], config["overrides"], config["folds"], config["seeds"],
                config["grid"], evaluate, config["engine"]["workers"], threads, kind=config["kind"])
    address = engine.check_address(None)
    code = record.code_version()
    study_id = config["study_id"]
    with engine.ray_cluster(address, workers=plan.workers, threads_per_run=threads):
        repro_id = create_parent(client, parent.info.experiment_id, kind=config["kind"], study_id=study_id,
                                 title=config["short_title"], run_name=record.make_run_name(
                                     config["short_title"], study_id) + "_repro",
                                 total=len(originals), tags={tracking.TAG_REPRO_OF: parent_id})
        tracking.publish_bytes(client, repro_id, record.CONFIG_NAME, raw)  # byte for byte
        echo(f"reproducing study {study_id} (run {parent_id}) as run {repro_id}: {len(originals)} children")
        children = create_guarded(client, repro_id, lambda: [
            _reproduction(client, original, repro_id, study_id, plan, code, echo) for original in originals], echo)
        if children is None:
            return 130
        status = execute(client, repro_id, children, plan, echo, label="reproduction of study")
    echo(f"compare with: gakt-compare {study_id}")
    return status


def _reproduction(client, original, repro_id: str, study_id: str, plan: Plan, code: dict, echo) -> Child:
    """The reproduction of one child (gakt-repro's checks and config.json copy), nested under repro_id."""
    tags, params = original.data.tags, tracking.read_params(original)
    extra = {"mlflow.parentRunId": repro_id, TAG_STUDY_RUN: repro_id, TAG_STUDY_ID: study_id,
             TAG_SLOT: tags[TAG_SLOT], TAG_ATTEMPT: "1", TAG_POINT: tags.get(TAG_POINT, "0"),
             TAG_POINT_VALUES: tags.get(TAG_POINT_VALUES, "{}"), tracking.TAG_FOLD: params["fold"],
             tracking.TAG_SEED: params["seed"], **driver_tags()}
    _orig, new_id, typed, _command = reproduce.prepare_reproduction(client, original.info.run_id, echo=echo,
                                                                     extra_tags=extra)
    exp_id = tags.get(tracking.TAG_EXP_ID, "")
    slot = Slot(int(tags[TAG_SLOT]), int(tags.get(TAG_POINT, "0")), typed["fold"], typed["seed"],
                json.loads(tags.get(TAG_POINT_VALUES, "{}")), typed)
    return Child(slot, new_id, exp_id, make_task(new_id, exp_id, original.info.experiment_id, typed, plan, code))


def is_study(run) -> bool:
    return run.data.tags.get(tracking.TAG_KIND) in STUDY_KINDS


def compare_any(ref: str, repro: str | None, tolerance: float) -> tuple[dict, bool]:
    """What gakt-compare compares: a study's children with their reproductions, or one run with its reproduction.
    Returns (report, whether RUN is a study)."""
    from gainakt3exp.service.compare import compare_runs

    client = tracking.connect()
    if is_study(tracking.resolve_run(client, ref)):
        return compare_study(client, ref, repro, tolerance), True
    return compare_runs(client, ref, repro, tolerance), False


def compare_study(client, ref: str, repro: str | None = None, tolerance: float = 1e-4) -> dict:
    """Compare every child of study `ref` with its reproduction (compare.compare_runs each) and give one verdict:
    identical, within tolerance, or differs (also when a child has no reproduction)."""
    from gainakt3exp.errors import RunNotFoundError
    from gainakt3exp.service.compare import compare_runs, latest_reproduction

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
    ours, theirs = (lifecycle.latest_children(client, r.info.run_id) for r in (original, reproduction))
    rows = []
    for slot in sorted(ours):
        child = ours[slot]
        tags = child.data.tags
        row = {"slot": slot, "fold": tags.get(tracking.TAG_FOLD), "seed": tags.get(tracking.TAG_SEED),
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
    from gainakt3exp.service.compare import verdict_line

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
    """gakt-repro: a study reproduces every child (reproduce_study), any other run as reproduce.reproduce does."""
    client = tracking.connect()
    run = tracking.resolve_run(client, ref)
    if is_study(run):
        return reproduce_study(client, run, evaluate, echo)
    return reproduce.reproduce(ref, echo=echo, evaluate=evaluate)
