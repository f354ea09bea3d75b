"""A study's children over their life: finding them, counting the running and finished, recording each child's
outcome when its Ray task returns, marking the unfinished, and the progress line."""
from __future__ import annotations

import sys

from gainakt3exp import tracking
from gainakt3exp.tracking.tags import TAG_ATTEMPT, TAG_OUTCOME_REASON, TAG_SLOT, TAG_STUDY_RUN

# --- the children --------------------------------------------------------------------------------------------------


def study_children(client, parent_id: str) -> list:
    return tracking.search_runs(client, f"tags.`{TAG_STUDY_RUN}` = '{parent_id}'", max_results=5000)


def latest_children(client, parent_id: str, runs: list | None = None) -> dict:
    """{slot: run} of the newest attempt of each slot (resume adds attempts; the older ones stay as records)."""
    out: dict = {}
    for run in runs if runs is not None else study_children(client, parent_id):
        tags = run.data.tags
        if TAG_SLOT not in tags:
            continue
        slot, attempt = int(tags[TAG_SLOT]), int(tags.get(TAG_ATTEMPT, "1"))
        if slot not in out or attempt > int(out[slot].data.tags.get(TAG_ATTEMPT, "1")):
            out[slot] = run
    return out


def is_finished(run, evaluate: bool) -> bool:
    tags = run.data.tags
    done = run.info.status == "FINISHED" and tags.get(tracking.TAG_OUTCOME) == "finished"
    return done and (not evaluate or tags.get(tracking.TAG_EVALUATED) == "true")


def count_running(client, parent_id: str, run_ids: set) -> int:
    """Children of run_ids (the ones whose task has not returned) that have started: training, evaluating or
    ending their `mlflow run`; a child still `pending` waits for a CPU."""
    return sum(1 for r in study_children(client, parent_id)
               if r.info.run_id in run_ids and r.data.tags.get(tracking.TAG_OUTCOME, "pending") != "pending")


def count_finished(client, parent_id: str, evaluate: bool) -> int:
    return sum(1 for r in latest_children(client, parent_id).values() if is_finished(r, evaluate))


def _reason(result: dict, run) -> str:
    """Why a child did not finish: its own outcome reason, else the error its command printed."""
    tags = run.data.tags
    if tags.get(tracking.TAG_OUTCOME) in ("failed", "killed") and tags.get(TAG_OUTCOME_REASON):
        return tags[TAG_OUTCOME_REASON]
    if result.get("error"):
        return result["error"]
    lines = [ln.strip() for ln in (result.get("log") or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.lower().startswith("error") or "Error:" in ln or "Exception:" in ln]
    last = (errors or lines or ["no output"])[-1][:300]
    status = result.get("status")
    said = f"exited with status {status}: {last}" if status is not None else last
    if tags.get(tracking.TAG_OUTCOME) == "running":  # the runner had started and never wrote its end
        return ("the training ended without recording an outcome (a hard crash: killed by a signal such as "
                f"SIGKILL, e.g. out of memory); {said}")
    return said


def record_child_result(client, run_id: str, result: dict, evaluate: bool) -> bool:
    """Store what the task said (its log as mlflow_run.log, its seconds) and mark a child that did not finish
    FAILED (or KILLED after an interruption) with its reason. Returns whether it finished."""
    run = client.get_run(run_id)
    sink = tracking.MlflowSink(client, run_id)
    sink.set_tags({tracking.TAG_STUDY_TASK_SECONDS: f"{result.get('seconds', 0.0):.3f}"})
    if result.get("log"):
        tracking.publish_bytes(client, run_id, "mlflow_run.log", result["log"].encode())
    if is_finished(run, evaluate) and result.get("status") == 0:
        earlier = run.data.tags.get(TAG_OUTCOME_REASON)
        if earlier and not earlier.startswith("finished after Ray retried"):  # an attempt a worker death ended
            sink.set_tags({TAG_OUTCOME_REASON: f"finished after Ray retried it (an earlier attempt: {earlier})"[:500]})
        return True
    killed = result.get("status") == 130 or run.data.tags.get(tracking.TAG_OUTCOME) == "killed"
    reason = _reason(result, run)
    if run.data.tags.get(tracking.TAG_OUTCOME) == "finished" and evaluate:
        reason = f"evaluation failed: {_reason({**result, 'error': ''}, run)}"
    sink.set_tags({tracking.TAG_OUTCOME: "killed" if killed else "failed", TAG_OUTCOME_REASON: reason[:500]})
    client.set_terminated(run_id, "KILLED" if killed else "FAILED")
    return False


def wait_stopped(client, run_ids: list[str], seconds: float) -> None:
    """Give children that were training `seconds` to mark themselves (KILLED, with their own reason)."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        runs = [client.get_run(run_id) for run_id in run_ids]
        if not [r for r in runs if r.info.status == "RUNNING" and r.data.tags.get(tracking.TAG_OUTCOME) == "running"]:
            return
        time.sleep(0.5)


def mark_unfinished(client, run_ids: list[str], why: str) -> None:
    """After an interruption: every child still RUNNING (started or not) becomes KILLED with the reason."""
    for run_id in run_ids:
        run = client.get_run(run_id)
        if run.info.status != "RUNNING":
            continue
        started = run.data.tags.get(tracking.TAG_OUTCOME) != "pending"
        tracking.MlflowSink(client, run_id).set_tags({
            tracking.TAG_OUTCOME: "killed", TAG_OUTCOME_REASON: why if started else f"not started: {why}"})
        client.set_terminated(run_id, "KILLED")


class Progress:
    """children done / running / failed; a bar redrawn in place on a terminal, a line per change otherwise."""

    def __init__(self, total: int, echo=print, tty: bool | None = None):
        self.total, self.finished, self.failed, self.running = total, 0, 0, 0
        self.echo, self.tty = echo, sys.stderr.isatty() if tty is None else tty
        self._last = None

    def done(self, ok: bool) -> None:
        self.finished += ok
        self.failed += not ok
        self.running = max(0, self.running - 1)
        self.show()

    def show(self, running: int | None = None) -> None:
        if running is not None:
            self.running = running
        ended = self.finished + self.failed
        text = (f"{ended}/{self.total} done ({self.finished} finished, {self.failed} failed), "
                f"{self.running} running")
        if self.tty:
            filled = round(30 * ended / max(1, self.total))
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {text}   ")
            sys.stderr.flush()
        elif text != self._last:
            self.echo(text)
        self._last = text

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
