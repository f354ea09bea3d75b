"""The run list (gakt-runs) and stale runs: RUNNING in MLflow although nothing runs them any more.

    from gainakt3exp import runs, tracking
    client = tracking.connect()
    print(runs.format_runs(runs.list_runs(client, limit=20)))
    stale = runs.find_stale_runs(client, older_than_minutes=120)
    runs.mark_stale_runs(client, stale)          # KILLED + gakt.outcome=stale, gakt.outcome_reason=<why>

A killed `mlflow run` (SIGKILL, a closed laptop, a crashed host) can leave its run RUNNING forever.
A RUNNING run is stale when
    (a) it ran on this host (gakt.host == platform.node()) and its process gakt.pid no longer exists, or
    (b) its last activity (newest metric timestamp, else start_time) is older than `older_than_minutes`,
        unless (a) shows its process alive on this host.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import time

from gainakt3exp import tracking
from gainakt3exp.errors import ConfigError, RunNotFoundError
from gainakt3exp.tracking.tags import TAG_BEST_VAL_AUC, TAG_HOST, TAG_OUTCOME_REASON, TAG_PID

_PAGE = 200


def open_store(experiment: str | None = None):
    """The tracking client of $MLFLOW_TRACKING_URI (or the embedded store) and the experiment name the command
    asked for (None: every experiment, as `gakt-runs` lists by default)."""
    return tracking.connect(), (tracking.experiment_name(experiment) if experiment else None)


def _experiment_ids(client, experiment_name: str | None) -> list[str]:
    if experiment_name is None:
        return [e.experiment_id for e in client.search_experiments()]
    found = client.get_experiment_by_name(experiment_name)
    if found is None or found.lifecycle_stage == "deleted":
        names = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise RunNotFoundError(f"experiment '{experiment_name}' does not exist in "
                               f"{tracking.redact(tracking.tracking_uri())} (experiments: {names}); "
                               "pass one of those names or omit it to list every experiment")
    return [found.experiment_id]


def _iter_runs(client, experiment_ids: list[str], filter_string: str = ""):
    """Runs newest first, page by page (stops as soon as the caller has enough)."""
    if not experiment_ids:
        return
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=_PAGE,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _latest_metrics(run) -> dict:
    """{key: Metric} of each key's latest value, with its step and timestamp (the public proto form of RunData)."""
    from mlflow.entities import Metric

    return {m.key: Metric.from_proto(m) for m in run.data.to_proto().metrics}


def is_evaluation(run) -> bool:
    tags = run.data.tags
    return tracking.TAG_EVAL_OF in tags or tags.get(tracking.TAG_KIND) == "eval"


def is_study_member(run) -> bool:
    """A study's child or a search trial: listed under its study (gakt-study show), not on its own."""
    tags = run.data.tags
    return tracking.TAG_STUDY_RUN in tags or tags.get(tracking.TAG_KIND) == "trial"


def kind_of(run) -> str:
    tags = run.data.tags
    if tags.get(tracking.TAG_KIND):
        return tags[tracking.TAG_KIND]
    if tracking.TAG_REPRO_OF in tags:
        return "repro"
    return "train" if tracking.TAG_EXP_ID in tags else "-"


def _float(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def best_val_auc(client, run) -> float | None:
    """Tag gakt.best_val_auc (written when training finishes), else the max of the val/auc history so far."""
    tagged = _float(run.data.tags.get(TAG_BEST_VAL_AUC))
    if tagged is not None or "val/auc" not in run.data.metrics:
        return tagged
    values = [m.value for m in client.get_metric_history(run.info.run_id, "val/auc") if math.isfinite(m.value)]
    return max(values) if values else None


def reproduction_state(run, latest) -> str:
    """For an original, from its latest reproduction `latest` (None if none): '-' (never reproduced), 'matched' /
    'differs' (tags gakt.best_val_auc of both equal or not; the full check is gakt-compare), else the
    reproduction's outcome while it has no best val AUC ('running', 'failed', 'killed', 'stale', ...), or '?'
    when the original has none."""
    if latest is None:
        return "-"
    mine, theirs = _float(run.data.tags.get(TAG_BEST_VAL_AUC)), _float(latest.data.tags.get(TAG_BEST_VAL_AUC))
    if theirs is None:
        return latest.data.tags.get(tracking.TAG_OUTCOME) or latest.info.status.lower()
    if mine is None:
        return "?"
    return "matched" if mine == theirs else "differs"


def _when(ms) -> str:
    if not ms:
        return "-"
    return _dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M")


def list_runs(client, limit: int = 20, experiment_name: str | None = None) -> list[dict]:
    """The `limit` newest training runs and reproductions (evaluation runs skipped), of one experiment or of all.

    Each row: run_id, run_name, exp_id (6 digits), short_title, kind, status (MLflow), outcome (gakt.outcome),
    start_time (ms) and started (local 'YYYY-MM-DD HH:MM'), best_val_auc, epochs (last val/auc step),
    test_auc (eval/test_auc or None), reproduced ('-'/'matched'/'differs'/<repro outcome> for originals, '' for
    reproductions), reproduction_of (the original's run id, reproductions only) and registered (the Model
    Registry versions of its model: "NAME v2 @champion", comma-separated, '' if none).
    Studies are rows of their own (kind study/search; best_val_auc = the mean over the best point's children,
    children = 'finished/total'); their children and trials are not listed (gakt-study show lists them).
    """
    if not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"limit {limit!r}: must be a whole number >= 1, e.g. --limit 20")
    from gainakt3exp.service.models import registrations

    rows = []
    registered = registrations(client)
    latest_repro: dict[str, object] = {}  # original run id -> its newest reproduction
    for run in _iter_runs(client, _experiment_ids(client, experiment_name)):
        if is_evaluation(run) or is_study_member(run):
            continue
        tags, latest = run.data.tags, _latest_metrics(run)
        kind = kind_of(run)
        val = latest.get("val/auc")
        repro_of = tags.get(tracking.TAG_REPRO_OF)
        if repro_of:  # newest first, and a reproduction starts after its original (same experiment): seen first
            latest_repro.setdefault(repro_of, run)
        rows.append({
            "run_id": run.info.run_id, "run_name": run.info.run_name, "exp_id": tags.get(tracking.TAG_EXP_ID, "-"),
            "short_title": tags.get(tracking.TAG_TITLE, "-"), "kind": kind, "status": run.info.status,
            "outcome": tags.get(tracking.TAG_OUTCOME, "-"), "start_time": run.info.start_time,
            "started": _when(run.info.start_time), "best_val_auc": best_val_auc(client, run),
            "epochs": int(val.step) if val is not None else None if tracking.TAG_TOTAL in tags else 0,
            "test_auc": run.data.metrics.get("eval/test_auc", run.data.metrics.get("study/test_auc_mean")),
            "children": (f"{tags.get(tracking.TAG_FINISHED, '0')}/{tags[tracking.TAG_TOTAL]}"
                         if tracking.TAG_TOTAL in tags else ""),
            "reproduced": "" if repro_of else reproduction_state(run, latest_repro.get(run.info.run_id)),
            "reproduction_of": repro_of,
            "registered": ", ".join(registered.get(run.info.run_id, [])),
        })
        if len(rows) >= limit:
            break
    return rows


def latest_training_exp_id(client, experiment_name: str | None = None) -> str:
    """The 6-digit id of the newest training run (not a reproduction or evaluation): what `--latest_id` prints.
    Reads only run tags, never metric histories."""
    for run in _iter_runs(client, _experiment_ids(client, experiment_name)):
        if not is_evaluation(run) and not is_study_member(run) and kind_of(run) == "train":
            return run.data.tags.get(tracking.TAG_EXP_ID, "-")
    raise RunNotFoundError("no training run yet; start one with gakt-launch")


_COLUMNS = (("exp_id", "id", 6), ("short_title", "title", 16), ("kind", "kind", 5), ("status", "status", 8),
            ("outcome", "outcome", 8), ("started", "started", 16), ("best_val_auc", "best val AUC", 12),
            ("epochs", "epochs", 6), ("test_auc", "test AUC", 8), ("reproduced", "repro", 7),
            ("children", "children", 8), ("run_id", "run id", 32), ("registered", "registered", 10))


def _cell(key: str, value) -> str:
    if value is None or value == "":
        return "-" if key not in ("reproduced", "children", "registered") else ""
    if key in ("best_val_auc", "test_auc"):
        return f"{value:.4f}"
    return str(value)


def format_runs(rows: list[dict]) -> str:
    """A fixed-width table, newest first; numbers right-aligned."""
    if not rows:
        return "no runs yet; start one with gakt-launch --short_title <title> ..."
    cells = [[_cell(k, r.get(k)) for k, _, _ in _COLUMNS] for r in rows]
    widths = [max(w, len(h), *(len(c[i]) for c in cells)) for i, (_, h, w) in enumerate(_COLUMNS)]
    right = {"best_val_auc", "epochs", "test_auc"}

    def line(values):
        return "  ".join(v.rjust(w) if k in right else v.ljust(w)
                         for (k, _, _), v, w in zip(_COLUMNS, values, widths)).rstrip()

    header = line([h for _, h, _ in _COLUMNS])
    return "\n".join([header, "-" * len(header)] + [line(c) for c in cells])


# --- stale runs ---------------------------------------------------------------------------------------------------


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (signal 0 checks without signalling)."""
    if pid <= 0:  # os.kill(0 or -n, ...) would address process groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _is_ours(run) -> bool:
    """Only runs this service made are judged (a shared server holds other people's runs too)."""
    from gainakt3exp.service.record import parse_run_name

    tags = run.data.tags
    return (any(t in tags for t in (tracking.TAG_EXP_ID, tracking.TAG_KIND, tracking.TAG_REPRO_OF,
                                    tracking.TAG_EVAL_OF)) or parse_run_name(run.info.run_name) is not None)


def stale_reason(run, older_than_minutes: float, now_ms: int | None = None, host: str | None = None) -> str | None:
    """Why a RUNNING run is stale, or None when it is not (see the module docstring for the rule)."""
    if run.info.status != "RUNNING":
        return None
    host = host or platform.node()
    tags = run.data.tags
    pid = _float(tags.get(TAG_PID))
    if tags.get(TAG_HOST) == host and pid is not None and pid == int(pid):
        if not process_alive(int(pid)):
            return f"process {int(pid)} on {host} no longer exists"
        return None  # its process is alive here: slow, not stale
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    last = max([run.info.start_time or 0] + [m.timestamp for m in _latest_metrics(run).values()])
    idle = (now_ms - last) / 60000.0
    if idle > older_than_minutes:
        return f"no activity for {idle:.0f} min (last at {_when(last)}, limit {older_than_minutes:g} min)"
    return None


def find_stale_runs(client, older_than_minutes: float, experiment_name: str | None = None) -> list[dict]:
    """RUNNING runs of this service that nothing runs any more: [{run_id, run_name, exp_id, short_title, kind,
    host, pid, reason}], newest first. Reads only; mark_stale_runs changes them."""
    # inf is allowed: it means "only the dead-process rule" (gakt-runs --stale without --older_than)
    if not isinstance(older_than_minutes, (int, float)) or not older_than_minutes > 0:
        raise ConfigError(f"older_than_minutes {older_than_minutes!r}: must be a number > 0, e.g. "
                          "--older-than 120 (minutes without any logged metric)")
    now_ms, host = int(time.time() * 1000), platform.node()
    out = []
    for run in _iter_runs(client, _experiment_ids(client, experiment_name), "attributes.status = 'RUNNING'"):
        if not _is_ours(run):
            continue
        reason = stale_reason(run, older_than_minutes, now_ms, host)
        if reason:
            tags = run.data.tags
            out.append({"run_id": run.info.run_id, "run_name": run.info.run_name,
                        "exp_id": tags.get(tracking.TAG_EXP_ID, "-"), "short_title": tags.get(tracking.TAG_TITLE, "-"),
                        "kind": kind_of(run), "host": tags.get(TAG_HOST, "-"), "pid": tags.get(TAG_PID, "-"),
                        "reason": reason})
    return out


def mark_stale_runs(client, runs: list[dict]) -> int:
    """Set each run KILLED with gakt.outcome=stale and gakt.outcome_reason=<reason>; returns how many were marked.

    The status is read again first: a run that finished meanwhile (not RUNNING) is left untouched. When its
    process is known to be gone (this host, pid dead), temp files of an artifact write it never finished are
    removed (local stores; the artifacts themselves are complete, publish_bytes renames only whole files):
    paths in item["removed_partials"], any that could not be removed in item["kept_partials"]. A run judged
    stale by idleness alone (another host) keeps them: its process may still be writing.
    """
    from mlflow.entities import RunTag

    marked = 0
    for item in runs:
        run_id = item["run_id"]
        run = client.get_run(run_id)
        if run.info.status != "RUNNING":
            continue
        client.log_batch(run_id, tags=[RunTag(tracking.TAG_OUTCOME, "stale"),
                                       RunTag(TAG_OUTCOME_REASON, str(item.get("reason", "marked stale"))[:500])])
        client.set_terminated(run_id, "KILLED")
        item["removed_partials"], item["kept_partials"] = [], []
        if _process_gone_here(run):
            for path in tracking.partial_artifacts(run.info.artifact_uri):
                try:
                    path.unlink(missing_ok=True)
                    item["removed_partials"].append(str(path))
                except OSError as e:
                    item["kept_partials"].append(f"{path} ({e.strerror or e})")
        marked += 1
    return marked


def _process_gone_here(run) -> bool:
    tags = run.data.tags
    pid = _float(tags.get(TAG_PID))
    return (tags.get(TAG_HOST) == platform.node() and pid is not None and pid == int(pid)
            and not process_alive(int(pid)))


def format_stale(runs: list[dict]) -> str:
    if not runs:
        return "no stale runs"
    return "\n".join(f"{r['run_id']}  {r['exp_id']:<6}  {r['short_title']:<16}  {r['kind']:<5}  {r['reason']}"
                     for r in runs)
