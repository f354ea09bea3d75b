"""Compare a run with its reproduction: every metric history, read through the tracking API.

    from gainakt3exp import compare, tracking
    report = compare.compare_runs(tracking.connect(), "423891")     # the latest reproduction of 423891
    print(compare.format_report(report)); exit(compare.verdict_exit_code(report))

Verdict over the compared rows (summary rows + every metric history; timing and system metrics are INFO only):
    identical         every compared value is exactly equal (NaN == NaN) and both runs logged the same steps
    within tolerance  every max |a - b| <= tolerance, same steps, same keys
    differs           anything else (exit 1); the failing rows are named
Differences in code version, data hash, library versions, device and params are warnings: they explain a
difference but do not change the verdict. A metric that only the reproduction logs, made by other code than the
original (gakt.git_commit differs), is INFO: newer code may log more; what both logged is compared.
"""
from __future__ import annotations

import json
import math

from gainakt3exp import tracking
from gainakt3exp.errors import ConfigError, RunNotFoundError

PASS, FAIL, INFO = "PASS", "FAIL", "INFO"
# Tags whose difference makes a reproduction suspect (a warning, not a verdict change).
WARN_TAGS = (tracking.TAG_GIT_COMMIT, tracking.TAG_GIT_DIRTY, tracking.TAG_DATA_HASH, tracking.TAG_TORCH_VERSION, tracking.TAG_MLFLOW_VERSION,
             tracking.TAG_PYTHON_VERSION, tracking.TAG_DEVICE)
_TIMING_MARKERS = ("seconds", "per_second")
_INFO_PREFIXES = ("system/",)  # MLflow system metrics (CPU, memory): never reproducible
_EVAL_PREFIX = "eval/"


def is_info_metric(key: str) -> bool:
    """Timing and system metrics: shown, never part of the verdict (wall-clock time is not reproducible)."""
    return any(m in key for m in _TIMING_MARKERS) or key.startswith(_INFO_PREFIXES)


# --- finding the two runs -----------------------------------------------------------------------------------------


def latest_reproduction(client, original):
    """The newest run (by start_time) tagged gakt.reproduction_of = original's run id, or None."""
    run_id = original.info.run_id
    runs = tracking.search_runs(client, f"tags.`{tracking.TAG_REPRO_OF}` = '{run_id}'", max_results=1)
    return runs[0] if runs else None  # search_runs lists newest first


def _pick_runs(client, ref: str, repro: str | None):
    original = tracking.resolve_run(client, ref)
    if repro is not None:
        reproduction = tracking.resolve_run(client, repro)
        if reproduction.info.run_id == original.info.run_id:
            raise ConfigError(f"--repro {repro} is the original run {original.info.run_id} itself; pass the "
                              "reproduction's run id (gakt-runs lists them) or omit --repro to take the latest")
        return original, reproduction
    of = original.data.tags.get(tracking.TAG_REPRO_OF)
    if of:  # `gakt-compare <reproduction run id>`: compare it with the run it reproduces
        return tracking.resolve_run(client, of), original
    reproduction = latest_reproduction(client, original)
    if reproduction is None:
        exp_id = original.data.tags.get(tracking.TAG_EXP_ID) or original.info.run_id
        raise RunNotFoundError(f"run {original.info.run_id} (experiment {exp_id}) has no reproduction; "
                               f"run gakt-repro {exp_id}")
    return original, reproduction


def read_histories(client, run) -> dict[str, dict[int, float]]:
    """{metric key: {step: value}} for every metric the run logged (the last value logged at a step wins)."""
    out = {}
    for key in sorted(run.data.metrics):
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.timestamp)
        out[key] = {int(m.step): float(m.value) for m in history}
    return out


# --- rows ---------------------------------------------------------------------------------------------------------


def _diff(a: float | None, b: float | None) -> float | None:
    """|a - b|, with NaN == NaN (diff 0) and NaN vs a number = inf; None when either value is missing."""
    if a is None or b is None:
        return None
    if math.isnan(a) or math.isnan(b):
        return 0.0 if math.isnan(a) and math.isnan(b) else math.inf
    return abs(a - b)


def _row(name: str, a, b, diff, status: str, note: str = "") -> dict:
    return {"name": name, "original": a, "repro": b, "diff": diff, "status": status, "note": note}


def _value_row(name: str, a: float | None, b: float | None, tolerance: float, info: bool = False,
               missing_note: str = "") -> dict:
    """One compared number. Both missing counts as equal (e.g. a correlation undefined in both runs)."""
    if a is None and b is None:
        return _row(name, None, None, 0.0, INFO if info else PASS, missing_note or "logged by neither run")
    d = _diff(a, b)
    if d is None:
        return _row(name, a, b, None, INFO if info else FAIL,
                    "only in original" if b is None else "only in reproduction")
    return _row(name, a, b, d, INFO if info else (PASS if d <= tolerance else FAIL))


def best_step(history: dict[int, float]) -> int | None:
    """The step of the highest val AUC (the earliest on ties, as training keeps the first best epoch)."""
    finite = {s: v for s, v in history.items() if not math.isnan(v)}
    return max(sorted(finite), key=lambda s: finite[s]) if finite else None


def summary_rows(ho: dict, hr: dict, tolerance: float) -> list[dict]:
    """Best val AUC / accuracy (max over epochs), mastery and gain correlation at each run's best-val-AUC epoch,
    the best epoch itself (INFO: a tie within tolerance may flip it) and test AUC when evaluated."""
    def best(h, key):
        values = [v for v in h.get(key, {}).values() if not math.isnan(v)]
        return max(values) if values else None

    bo, br = best_step(ho.get("val/auc", {})), best_step(hr.get("val/auc", {}))
    rows = [_value_row("Best Val AUC", best(ho, "val/auc"), best(hr, "val/auc"), tolerance),
            _value_row("Best Val Accuracy", best(ho, "val/accuracy"), best(hr, "val/accuracy"), tolerance)]
    for name, key in (("Mastery Correlation", "trajectory/mastery_correlation"),
                      ("Gain Correlation", "trajectory/gain_correlation")):
        a = ho.get(key, {}).get(bo) if bo is not None else None
        b = hr.get(key, {}).get(br) if br is not None else None
        rows.append(_value_row(name, a, b, tolerance, missing_note="not logged at the best epoch"))
    rows.append(_row("Best Epoch", bo, br, None if bo is None or br is None else float(abs(bo - br)), INFO))
    ta, tb = ho.get("eval/test_auc"), hr.get("eval/test_auc")
    if ta and tb:
        rows.append(_value_row("Test AUC", ta[max(ta)], tb[max(tb)], tolerance))
    elif ta or tb:
        rows.append(_value_row("Test AUC", ta[max(ta)] if ta else None, tb[max(tb)] if tb else None, tolerance,
                               info=True))
    return rows


def history_rows(ho: dict, hr: dict, tolerance: float, newer_code: bool = False) -> list[dict]:
    """One row per metric key of either run: the last values, max |diff| over common steps, and a FAIL when the
    key or its steps exist in one run only. Timing/system metrics are INFO; eval/* metrics are INFO when only one
    run is evaluated (evaluating is a separate, optional step). newer_code (the reproduction ran other code than
    the original): a metric only the reproduction logs is INFO, a metric that code added; every metric both
    logged is still compared."""
    both_evaluated = any(k.startswith(_EVAL_PREFIX) for k in ho) and any(k.startswith(_EVAL_PREFIX) for k in hr)
    rows = []
    for key in sorted(set(ho) | set(hr)):
        info = is_info_metric(key) or (key.startswith(_EVAL_PREFIX) and not both_evaluated)
        a, b = ho.get(key), hr.get(key)
        if a is None or b is None:
            have = a if a is not None else b
            note = "only in original" if b is None else "only in reproduction"
            # an evaluation metric newer than the original's evaluation: information, not a difference
            newer = a is None and (key.startswith(_EVAL_PREFIX) or newer_code)
            if newer:
                note += (" (an evaluation metric the original's evaluation did not log)" if key.startswith(_EVAL_PREFIX)
                         else " (a metric the original's code did not log)")
            rows.append(_row(key, have[max(have)] if a is not None else None,
                             have[max(have)] if b is not None else None, None, INFO if info or newer else FAIL, note))
            continue
        common = sorted(set(a) & set(b))
        diffs = [_diff(a[s], b[s]) for s in common]
        worst = max(diffs) if diffs else None
        note = ""
        mismatch = set(a) != set(b)
        if mismatch:
            note = f"steps differ: {_steps(a)} vs {_steps(b)}"
        elif worst:
            note = f"max at step {common[diffs.index(worst)]}"
        ok = not mismatch and worst is not None and worst <= tolerance
        rows.append(_row(key, a[max(a)], b[max(b)], worst, INFO if info else (PASS if ok else FAIL), note))
    return rows


def _steps(history: dict) -> str:
    steps = sorted(history)
    if steps == list(range(steps[0], steps[-1] + 1)):
        return f"{steps[0]}-{steps[-1]} ({len(steps)})" if len(steps) > 1 else f"{steps[0]}"
    return f"{len(steps)} steps in {steps[0]}-{steps[-1]}"


def run_warnings(original, reproduction) -> list[str]:
    """Reasons a difference may be expected: code, data, library or device differences, differing params,
    a dirty tree, a run that is not finished."""
    out = []
    to, tr = original.data.tags, reproduction.data.tags
    for tag in WARN_TAGS:
        a, b = to.get(tag), tr.get(tag)
        if a != b:
            out.append(f"tag {tag} differs: {a or '(missing)'} -> {b or '(missing)'}")
    for label, tags in (("original", to), ("reproduction", tr)):
        if tags.get(tracking.TAG_GIT_DIRTY) == "true":
            out.append(f"the {label} ran from a git tree with uncommitted changes (gakt.git_dirty=true): its code "
                       "is not fully recorded by gakt.git_commit")
    po, pr = tracking.read_params(original), tracking.read_params(reproduction)
    if po and not pr:
        out.append("the reproduction has no logged params; cannot check them against the original's")
    else:
        for key in sorted(set(po) | set(pr)):
            if po.get(key) != pr.get(key):
                out.append(f"params differ: {key} {po.get(key, '(missing)')} -> {pr.get(key, '(missing)')}")
    for label, run in (("original", original), ("reproduction", reproduction)):
        outcome = run.data.tags.get(tracking.TAG_OUTCOME, "-")
        if run.info.status != "FINISHED" or outcome not in ("finished", "-"):
            out.append(f"the {label} run {run.info.run_id} is {run.info.status} (gakt.outcome={outcome}): its "
                       "history may be incomplete")
    return out


def _run_info(run) -> dict:
    tags = run.data.tags
    return {"run_id": run.info.run_id, "run_name": run.info.run_name, "experiment_id": tags.get(tracking.TAG_EXP_ID),
            "short_title": tags.get(tracking.TAG_TITLE), "status": run.info.status,
            "outcome": tags.get(tracking.TAG_OUTCOME), "start_time": run.info.start_time}


def compare_runs(client, ref: str, repro: str | None = None, tolerance: float = 1e-4) -> dict:
    """Compare run `ref` (run id or 6-digit id) with `repro` (default: its latest reproduction).

    A reproduction's run id as `ref` (without `repro`) compares it with the run it reproduces.
    Returns {"original", "reproduction", "tolerance", "summary", "metrics", "warnings", "failing", "verdict"};
    rows are {"name", "original", "repro", "diff", "status", "note"}.
    """
    if not isinstance(tolerance, (int, float)) or not tolerance >= 0 or math.isinf(tolerance):
        raise ConfigError(f"tolerance {tolerance!r}: must be a finite number >= 0, e.g. --tolerance 1e-4")
    original, reproduction = _pick_runs(client, ref, repro)
    ho, hr = read_histories(client, original), read_histories(client, reproduction)
    commits = [r.data.tags.get(tracking.TAG_GIT_COMMIT) for r in (original, reproduction)]
    summary, metrics = summary_rows(ho, hr, tolerance), history_rows(ho, hr, tolerance, commits[0] != commits[1])
    warnings = run_warnings(original, reproduction)
    if not ho and not hr:
        warnings.append("neither run logged any metric: nothing was compared")
    compared = [r for r in summary + metrics if r["status"] != INFO]
    failing = [r["name"] for r in compared if r["status"] == FAIL]
    if failing:
        verdict = "differs"
    elif all(r["diff"] == 0 for r in compared):
        verdict = "identical"
    else:
        verdict = "within tolerance"
    return {"original": _run_info(original), "reproduction": _run_info(reproduction), "tolerance": float(tolerance),
            "summary": summary, "metrics": metrics, "warnings": warnings, "failing": failing, "verdict": verdict}


def verdict_exit_code(report: dict) -> int:
    """0 for identical / within tolerance, 1 for differs."""
    return 1 if report["verdict"] == "differs" else 0


def verdict_line(report: dict) -> str:
    if report["verdict"] == "within tolerance":
        return f"verdict: within tolerance ({report['tolerance']:.0e})"
    if report["verdict"] == "differs":
        n = len(report["failing"])
        return f"verdict: differs ({n} metric{'s' if n != 1 else ''})"
    return "verdict: identical"


# --- output -------------------------------------------------------------------------------------------------------


def _num(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.6f}" if math.isfinite(value) else str(value)


def _dnum(value) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return f"{value:.3e}" if math.isfinite(value) else str(value)


def _table(rows: list[dict], width: int, heads=("Original", "Repro", "Diff")) -> list[str]:
    head = f"{'Metric':<{width}}  {heads[0]:>13}  {heads[1]:>13}  {heads[2]:>10}  Status  Note"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['name']:<{width}}  {_num(r['original']):>13}  {_num(r['repro']):>13}  "
                     f"{_dnum(r['diff']):>10}  {r['status']:<6}  {r['note']}".rstrip())
    return lines


def format_report(report: dict) -> str:
    """The human report: runs, summary table, the metric histories that are not PASS (plus a count), warnings,
    failing names and the verdict line last. Plain ASCII."""
    o, r = report["original"], report["reproduction"]
    lines = [f"experiment {o['experiment_id'] or '-'} ({o['short_title'] or '-'}), tolerance "
             f"{report['tolerance']:.0e}",
             f"  original      {o['run_id']}  {o['status']:<9} {o['run_name'] or ''}".rstrip(),
             f"  reproduction  {r['run_id']}  {r['status']:<9} {r['run_name'] or ''}".rstrip(), ""]
    lines += _table(report["summary"], 22)
    metrics = report["metrics"]
    counts = {s: sum(1 for m in metrics if m["status"] == s) for s in (PASS, FAIL, INFO)}
    lines += ["", f"Metric histories, max |diff| over common steps: {len(metrics)} metrics, {counts[PASS]} PASS, "
                  f"{counts[FAIL]} FAIL, {counts[INFO]} INFO (not in the verdict)"]
    shown = [m for m in metrics if m["status"] != PASS]
    if shown:
        lines += _table(shown, max(22, *(len(m["name"]) for m in shown)), ("Last orig", "Last repro", "Max |diff|"))
    if counts[PASS]:
        lines.append(f"({counts[PASS]} PASSing metrics not listed; --json lists all)")
    if report["warnings"]:
        lines += ["", "Warnings:"] + [f"  - {w}" for w in report["warnings"]]
    lines.append("")
    if report["failing"]:
        lines.append("failing: " + ", ".join(report["failing"]))
    lines.append(verdict_line(report))
    return "\n".join(lines)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # 'nan' / 'inf': strict JSON has no such numbers
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def report_json(report: dict) -> str:
    """The report as stable JSON (sorted keys, strict: non-finite numbers become strings), plus the exit code."""
    return json.dumps(_jsonable({**report, "exit_code": verdict_exit_code(report)}), indent=2, sort_keys=True,
                      allow_nan=False)
