"""What a study's parent records: its children's state, the aggregate (mean ± std), the table and the figure.

    from gainakt3exp import study_report, tracking
    client = tracking.connect()
    report = study_report.build_report(client, parent_run_id)      # read only (gakt-study show)
    print(study_report.format_report(report))
    study_report.publish_report(client, parent_run_id)             # metrics, tags, artifacts on the parent

Per child (the latest attempt of each slot): best val AUC = the maximum of val/auc over epochs; val accuracy,
mastery and gain correlation at that best epoch (the checkpoint's epoch); test AUC, window test AUC and test
accuracy from its evaluation (eval/*, when the study evaluates). Per grid point (or search trial): mean and sample
standard deviation (n - 1; none for one child) over its finished children, pyKT's `mean ± std`; the best point is
the one with the highest mean val AUC (test metrics never choose). Metrics on the parent: study/<metric>_mean and
_std of the best point (the only point without a grid), study/point_<k>/<metric>_mean and _std per point.
"""
from __future__ import annotations

import csv
import io
import json
import math
import statistics

from gainakt3exp import tracking
from gainakt3exp.service.compare import best_step
from gainakt3exp.study.lifecycle import is_finished, latest_children
from gainakt3exp.tracking.tags import (
    TAG_ATTEMPT,
    TAG_FINISHED,
    TAG_FOLD,
    TAG_OUTCOME_REASON,
    TAG_POINT,
    TAG_POINT_VALUES,
    TAG_SEED,
    TAG_TOTAL,
)

#: (name, label, how it is read): "best" = max of the history, "at_best" = at the best val AUC epoch, "eval" = eval/*
METRICS = (("val_auc", "val AUC", "best", "val/auc"), ("val_accuracy", "val accuracy", "at_best", "val/accuracy"),
           ("mastery_correlation", "mastery corr", "at_best", "trajectory/mastery_correlation"),
           ("gain_correlation", "gain corr", "at_best", "trajectory/gain_correlation"),
           ("test_auc", "test AUC", "eval", "eval/test_auc"),
           ("test_window_auc", "window test AUC", "eval", "eval/test_window_auc"),
           ("test_accuracy", "test accuracy", "eval", "eval/test_accuracy"),
           ("headline_auc", "headline AUC", "eval", "eval/headline_auc"),  # pyKT's final metric (gakt-eval)
           ("mastery_auc", "mastery AUC", "eval", "eval/mastery_auc"))  # the mastery's AUC on the headline's steps
TRAJECTORY = ("val/auc", "trajectory/mastery_correlation", "trajectory/gain_correlation",
              "trajectory/target_mastery_correlation")


# --- rows, points, the report -------------------------------------------------------------------------------------


def _child_row(client, slot: int, run, evaluate: bool) -> dict:
    tags = run.data.tags
    params = tracking.read_params(run)
    histories = {key: {int(m.step): float(m.value) for m in client.get_metric_history(run.info.run_id, key)}
                 for key in {m[3] for m in METRICS if m[2] != "eval"} | set(TRAJECTORY) if key in run.data.metrics}
    best = best_step(histories.get("val/auc", {}))
    row = {"slot": slot, "point": int(tags.get(TAG_POINT, "0")), "values": json.loads(tags.get(TAG_POINT_VALUES, "{}")),
           "fold": int(tags.get(TAG_FOLD, params.get("fold", -1))),
           "seed": int(tags.get(TAG_SEED, params.get("seed", -1))), "run_id": run.info.run_id,
           "exp_id": tags.get(tracking.TAG_EXP_ID, "-"), "attempt": int(tags.get(TAG_ATTEMPT, "1")),
           "status": run.info.status, "outcome": tags.get(tracking.TAG_OUTCOME, "-"),
           "finished": is_finished(run, evaluate), "reason": tags.get(TAG_OUTCOME_REASON, ""), "best_epoch": best,
           "trajectory": {k: sorted(histories.get(k, {}).items()) for k in TRAJECTORY}}
    for name, _label, how, key in METRICS:
        if how == "best":
            values = [v for v in histories.get(key, {}).values() if not math.isnan(v)]
            row[name] = max(values) if values else None
        elif how == "at_best":
            row[name] = histories.get(key, {}).get(best) if best is not None else None
        elif evaluate:  # test metrics are read only for a study that evaluates (never in a search)
            row[name] = run.data.metrics.get(key)
    return row


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def build_report(client, parent_id: str) -> dict:
    """Children (latest attempts), points with mean ± std, the best point: everything show/publish print."""
    from gainakt3exp.service.record import read_config

    parent = client.get_run(parent_id)
    config, _raw = read_config(client, parent_id)
    evaluate = bool(config.get("evaluate"))
    latest = latest_children(client, parent_id)
    rows = [_child_row(client, slot, latest[slot], evaluate) for slot in sorted(latest)]
    names = [m[0] for m in METRICS if evaluate or m[2] != "eval"]
    points = []
    for point in sorted({r["point"] for r in rows}):
        mine = [r for r in rows if r["point"] == point]
        done = [r for r in mine if r["finished"]]
        stats = {name: _mean_std([r[name] for r in done]) for name in names}
        points.append({"point": point, "values": mine[0]["values"], "n": len(done), "children": len(mine),
                       "mean": {k: v[0] for k, v in stats.items()}, "std": {k: v[1] for k, v in stats.items()}})
    scored = [p for p in points if p["mean"]["val_auc"] is not None]
    best = max(scored, key=lambda p: (p["mean"]["val_auc"], -p["point"]))["point"] if scored else None
    tags = parent.data.tags
    total = int(tags.get(TAG_TOTAL, len(rows)))
    return {"study_id": tags.get(tracking.TAG_EXP_ID), "run_id": parent_id, "short_title": tags.get(tracking.TAG_TITLE),
            "kind": tags.get(tracking.TAG_KIND), "reproduction_of": tags.get(tracking.TAG_REPRO_OF),
            "status": parent.info.status, "outcome": tags.get(tracking.TAG_OUTCOME),
            "outcome_reason": tags.get(TAG_OUTCOME_REASON, ""), "evaluate": evaluate, "metrics": names,
            "finished": sum(r["finished"] for r in rows), "total": total, "children": rows, "points": points,
            "best_point": best, "grid": bool(config.get("grid")) or config.get("kind") == "search"}


def study_metrics(report: dict) -> dict:
    """The parent's metrics: study/<metric>_mean/_std of the best point, study/point_<k>/... per point."""
    out = {"study/children_finished": float(report["finished"]), "study/children_total": float(report["total"])}
    for point in report["points"]:
        prefixes = [f"study/point_{point['point']}/"] if report["grid"] else []
        prefixes += ["study/"] if point["point"] == report["best_point"] else []
        for prefix in prefixes:
            for name in report["metrics"]:
                for stat in ("mean", "std"):
                    if point[stat][name] is not None:
                        out[f"{prefix}{name}_{stat}"] = point[stat][name]
    return out


def publish_report(client, parent_id: str, wall_seconds: float | None = None) -> dict:
    """Log the aggregate on the parent (metrics at step 0, tags) and its artifacts study_results.csv,
    study_summary.csv, study_results.md, study_trajectory.png. Returns the report."""
    report = build_report(client, parent_id)
    sink = tracking.MlflowSink(client, parent_id)
    metrics = study_metrics(report)
    if wall_seconds is not None:
        metrics["study/wall_seconds"] = float(wall_seconds)
    sink.log_metrics(metrics, step=0)
    tags = {TAG_FINISHED: str(report["finished"])}
    best = next((p for p in report["points"] if p["point"] == report["best_point"]), None)
    if best is not None:
        tags.update({tracking.TAG_BEST_VAL_AUC: f"{best['mean']['val_auc']:.6f}", tracking.TAG_STUDY_BEST_POINT: str(best["point"]),
                     tracking.TAG_STUDY_BEST_VALUES: json.dumps(best["values"], sort_keys=True)})
    sink.set_tags(tags)
    for name, data in (("study_results.csv", results_csv(report)), ("study_summary.csv", summary_csv(report)),
                       ("study_results.md", results_md(report))):
        tracking.publish_bytes(client, parent_id, name, data.encode())
    png = trajectory_png(report)
    if png:
        tracking.publish_bytes(client, parent_id, "study_trajectory.png", png)
    return report


# --- tables and the figure ----------------------------------------------------------------------------------------


def _grid_keys(report: dict) -> list[str]:
    return sorted({k for r in report["children"] for k in r["values"]})


def _fmt(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def pm(mean, std) -> str:
    """pyKT's reporting form: 0.7123 ± 0.0021 (only the mean for a single child)."""
    if mean is None:
        return "-"
    return f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f}"


def results_csv(report: dict) -> str:
    keys = _grid_keys(report)
    columns = ["slot", "point", "fold", "seed", *keys, "exp_id", "run_id", "attempt", "status", "outcome",
               "best_epoch", *report["metrics"]]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for r in report["children"]:
        writer.writerow([r["slot"], r["point"], r["fold"], r["seed"], *(r["values"].get(k) for k in keys),
                         r["exp_id"], r["run_id"], r["attempt"], r["status"], r["outcome"], r["best_epoch"],
                         *("" if r[m] is None else repr(r[m]) for m in report["metrics"])])
    return buffer.getvalue()


def summary_csv(report: dict) -> str:
    keys = _grid_keys(report)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["point", *keys, "best", "n", *(f"{m}_{s}" for m in report["metrics"] for s in ("mean", "std"))])
    for p in report["points"]:
        writer.writerow([p["point"], *(p["values"].get(k) for k in keys), p["point"] == report["best_point"], p["n"],
                         *("" if p[s][m] is None else repr(p[s][m])
                           for m in report["metrics"] for s in ("mean", "std"))])
    return buffer.getvalue()


def _labels(report: dict) -> list[str]:
    return [next(m[1] for m in METRICS if m[0] == name) for name in report["metrics"]]


def _point_name(report: dict, point: dict) -> str:
    if not report["grid"]:
        return "all"
    values = ", ".join(f"{k}={v}" for k, v in point["values"].items()) or "-"
    return f"{point['point']}{' (best)' if point['point'] == report['best_point'] and report['grid'] else ''}: {values}"


def results_md(report: dict) -> str:
    labels = _labels(report)
    lines = [f"# Study {report['study_id']} ({report['short_title']})", "",
             f"{report['finished']} of {report['total']} children finished. Best val AUC = max over epochs; "
             "accuracy and correlations at that epoch; test metrics from the best checkpoint's evaluation. "
             "mean ± sample std over folds x seeds.", "",
             "| point | n | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for p in report["points"]:
        lines.append(f"| {_point_name(report, p)} | {p['n']} | "
                     + " | ".join(pm(p["mean"][m], p["std"][m]) for m in report["metrics"]) + " |")
    keys = _grid_keys(report)
    lines += ["", "## Children", "", "| slot | fold | seed | " + "".join(f"{k} | " for k in keys)
              + "run id | outcome | " + " | ".join(labels) + " |",
              "|---|---|---|" + "---|" * len(keys) + "---|---|" + "---|" * len(labels)]
    for r in report["children"]:
        lines.append(f"| {r['slot']} | {r['fold']} | {r['seed']} | " + "".join(f"{r['values'].get(k)} | " for k in keys)
                     + f"{r['run_id']} | {r['outcome']} | " + " | ".join(_fmt(r[m]) for m in report["metrics"]) + " |")
    return "\n".join(lines) + "\n"


def format_report(report: dict) -> str:
    """The terminal table: one row per point (mean ± std), then one per child."""
    head = (f"study {report['study_id']} ({report['short_title']}): {report['finished']} of {report['total']} "
            f"children finished, {report['status']}")
    if report["reproduction_of"]:
        head += f", reproduction of run {report['reproduction_of']}"
    labels = _labels(report)
    names = [_point_name(report, p) for p in report["points"]]
    width = max([5, *map(len, names)])
    lines = [head, "", f"{'point':<{width}}  {'n':>2}  " + "  ".join(f"{lb:>17}" for lb in labels)]
    for name, p in zip(names, report["points"]):
        lines.append(f"{name:<{width}}  {p['n']:>2}  "
                     + "  ".join(f"{pm(p['mean'][m], p['std'][m]):>17}" for m in report["metrics"]))
    lines += ["", f"{'slot':>4}  {'fold':>4}  {'seed':>5}  {'id':<6}  {'outcome':<8}  "
              + "  ".join(f"{lb:>15}" for lb in labels) + "  run id"]
    for r in report["children"]:
        lines.append(f"{r['slot']:>4}  {r['fold']:>4}  {r['seed']:>5}  {r['exp_id']:<6}  {r['outcome']:<8}  "
                     + "  ".join(f"{_fmt(r[m]):>15}" for m in report["metrics"]) + f"  {r['run_id']}")
        if not r["finished"] and r["reason"]:
            lines.append(f"{'':>4}  reason: {r['reason']}")
    return "\n".join(lines)


def report_json(report: dict) -> str:
    clean = {**report, "children": [{k: v for k, v in r.items() if k != "trajectory"} for r in report["children"]]}
    return json.dumps(clean, indent=2, sort_keys=True, default=str)


def _band(rows: list[dict], key: str) -> tuple[list, list, list]:
    """Per epoch: mean and std over the children that reached it."""
    by_epoch: dict = {}
    for r in rows:
        for step, value in r["trajectory"].get(key, []):
            if not math.isnan(value):
                by_epoch.setdefault(step, []).append(value)
    epochs = sorted(by_epoch)
    stats = [_mean_std(by_epoch[e]) for e in epochs]
    return epochs, [m for m, _ in stats], [s or 0.0 for _, s in stats]


def trajectory_png(report: dict) -> bytes:
    """val/auc and the main trajectory metrics: mean ± std band per epoch across the finished children of each
    point (at most 6 points drawn: the best and the next by mean val AUC)."""
    finished = [r for r in report["children"] if r["finished"]]
    if not finished:
        return b""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ranked = sorted(report["points"], key=lambda p: -(p["mean"]["val_auc"] or -1))[:6]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, key in zip(axes.flat, TRAJECTORY):
        for p in ranked:
            epochs, mean, std = _band([r for r in finished if r["point"] == p["point"]], key)
            if not epochs:
                continue
            line, = ax.plot(epochs, mean, marker="o", label=f"{_point_name(report, p)} (n={p['n']})")
            ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            alpha=0.2, color=line.get_color())
        ax.set(title=key, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_lines():
            ax.legend(fontsize=7)
        else:  # no child logged this metric (e.g. pure BCE has no mastery): say so instead of an empty legend
            ax.text(0.5, 0.5, "not logged by these children", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"study {report['study_id']} ({report['short_title']}): mean ± std across children")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
