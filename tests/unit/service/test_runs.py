"""gakt-runs and stale runs: runs made directly in a real local SQLite store (no training).

One store per module (creating MLflow's tables takes seconds); each test uses its own MLflow experiment.
"""
from __future__ import annotations

import itertools
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.entities import Metric

from gainakt3exp import files, tracking
from gainakt3exp.errors import RunNotFoundError
from gainakt3exp.service import runs
from gainakt3exp.tracking import store as tracking_store

_ids = itertools.count(420001)
_names = itertools.count(1)


@pytest.fixture
def experiment(client):
    name = f"runs_test_{next(_names)}"
    return name, tracking.ensure_experiment(client, name)


def make_run(client, experiment_id, *, exp_id=None, kind="train", tags=None, val_auc=(), test_auc=None,
             status="FINISHED", start_time=None, metric_time=None):
    exp_id = exp_id or str(next(_ids))
    all_tags = {tracking.TAG_EXP_ID: exp_id, tracking.TAG_TITLE: f"t{exp_id}", tracking.TAG_KIND: kind,
                tracking.TAG_OUTCOME: "finished" if status == "FINISHED" else "running", **(tags or {})}
    run = client.create_run(experiment_id, start_time=start_time, tags=all_tags)
    rid = run.info.run_id
    now = metric_time or int(time.time() * 1000)
    metrics = [Metric("val/auc", v, now + i, i) for i, v in enumerate(val_auc, start=1)]
    if test_auc is not None:
        metrics.append(Metric("eval/test_auc", test_auc, now, 1))
    if metrics:
        client.log_batch(rid, metrics=metrics)
    if status != "RUNNING":
        client.set_terminated(rid, status)
    return rid


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_list_shows_originals_and_reproductions_with_matched_flag(client, experiment):
    name, eid = experiment
    done = make_run(client, eid, val_auc=[0.6, 0.7], tags={"gakt.best_val_auc": "0.700000"}, test_auc=0.69,
                    start_time=1_000_000)
    make_run(client, eid, exp_id=client.get_run(done).data.tags[tracking.TAG_EXP_ID], kind="repro",
             val_auc=[0.6, 0.7], tags={"gakt.best_val_auc": "0.700000", tracking.TAG_REPRO_OF: done},
             start_time=2_000_000)
    other = make_run(client, eid, val_auc=[0.5], tags={"gakt.best_val_auc": "0.500000"}, start_time=3_000_000)
    make_run(client, eid, kind="repro", tags={"gakt.best_val_auc": "0.510000", tracking.TAG_REPRO_OF: other},
             start_time=4_000_000)
    lonely = make_run(client, eid, val_auc=[0.55, 0.58, 0.57], status="RUNNING", start_time=5_000_000)
    rows = runs.list_runs(client, experiment_name=name)
    assert [r["kind"] for r in rows] == ["train", "repro", "train", "repro", "train"]  # newest first
    by_id = {r["run_id"]: r for r in rows}
    assert by_id[done]["reproduced"] == "matched" and by_id[other]["reproduced"] == "differs"
    assert by_id[lonely]["reproduced"] == "-"
    assert by_id[done]["best_val_auc"] == pytest.approx(0.7) and by_id[done]["epochs"] == 2
    assert by_id[done]["test_auc"] == pytest.approx(0.69) and by_id[other]["test_auc"] is None
    assert by_id[lonely]["best_val_auc"] == pytest.approx(0.58)  # no tag yet: max of the history
    assert by_id[lonely]["status"] == "RUNNING" and by_id[lonely]["epochs"] == 3
    assert rows[3]["reproduction_of"] == done and rows[3]["reproduced"] == ""
    table = runs.format_runs(rows).splitlines()
    assert table[0].split()[:4] == ["id", "title", "kind", "status"] and len(table) == 2 + len(rows)
    assert "matched" in table[6] and done in table[6]


def test_list_skips_evaluation_runs_and_honours_limit(client, experiment):
    name, eid = experiment
    trained = [make_run(client, eid, start_time=1_000_000 + i) for i in range(3)]
    make_run(client, eid, kind="eval", tags={tracking.TAG_EVAL_OF: trained[0]}, start_time=2_000_000)
    rows = runs.list_runs(client, experiment_name=name)
    assert [r["run_id"] for r in rows] == trained[::-1]
    assert len(runs.list_runs(client, limit=2, experiment_name=name)) == 2


def test_unknown_experiment_name_is_a_clear_error(client):
    with pytest.raises(RunNotFoundError, match="experiment 'nope' does not exist"):
        runs.list_runs(client, experiment_name="nope")


def test_dead_process_on_this_host_is_marked_stale(client, experiment):
    _, eid = experiment
    pid = dead_pid()
    rid = make_run(client, eid, status="RUNNING", tags={"gakt.host": platform.node(), "gakt.pid": str(pid)})
    stale = [s for s in runs.find_stale_runs(client, older_than_minutes=60) if s["run_id"] == rid]
    assert len(stale) == 1 and f"process {pid}" in stale[0]["reason"]
    assert runs.mark_stale_runs(client, stale) == 1
    run = client.get_run(rid)
    assert run.info.status == "KILLED"
    assert run.data.tags[tracking.TAG_OUTCOME] == "stale"
    assert f"process {pid}" in run.data.tags["gakt.outcome_reason"]


def test_marking_stale_removes_temp_files_of_unfinished_artifact_writes_only(client, experiment):
    _, eid = experiment
    rid = make_run(client, eid, status="RUNNING", tags={"gakt.host": platform.node(), "gakt.pid": str(dead_pid())})
    tracking.publish_bytes(client, rid, "model_best.pth", b"complete")
    tracking.publish_bytes(client, rid, "plots/trajectory.png", b"png")
    folder = tracking_store._local_artifact_dir(client.get_run(rid).info.artifact_uri)
    partial = [folder / ".model_best.pth.k3x_9a0q.gakt-partial",
               folder / "plots" / ".trajectory.png.abcdefgh.gakt-partial"]
    for path in partial:
        path.write_bytes(b"half")
    # Not publish_bytes' temp-file pattern: user dotfiles, even ones ending in 8 characters.
    kept = [folder / ".hidden_note", folder / "notes.tmp.abcdefgh", folder / ".config.defaults",
            folder / ".results.metadata"]
    for path in kept:
        path.write_bytes(b"user")
    stale = [s for s in runs.find_stale_runs(client, older_than_minutes=60) if s["run_id"] == rid]
    assert runs.mark_stale_runs(client, stale) == 1
    assert sorted(stale[0]["removed_partials"]) == sorted(str(p) for p in partial)
    assert not any(p.exists() for p in partial) and all(p.exists() for p in kept)
    assert (folder / "model_best.pth").read_bytes() == b"complete"
    assert (folder / "plots" / "trajectory.png").read_bytes() == b"png"


def test_a_run_stale_by_idleness_alone_keeps_its_temp_files(client, experiment):
    """Another host's run silent for long may still be mid-write: marking it must not pull files from under it."""
    _, eid = experiment
    old = int(time.time() * 1000) - 10 * 3600 * 1000
    rid = make_run(client, eid, status="RUNNING", start_time=old, tags={"gakt.host": "elsewhere", "gakt.pid": "1"})
    tracking.publish_bytes(client, rid, "config.json", b"{}")
    folder = tracking_store._local_artifact_dir(client.get_run(rid).info.artifact_uri)
    partial = folder / ".model_best.pth.abcd1234.gakt-partial"
    partial.write_bytes(b"in progress")
    stale = [s for s in runs.find_stale_runs(client, older_than_minutes=60) if s["run_id"] == rid]
    assert len(stale) == 1 and "no activity" in stale[0]["reason"]
    assert runs.mark_stale_runs(client, stale) == 1
    assert partial.exists() and stale[0]["removed_partials"] == []


def test_publish_bytes_temp_files_match_the_partial_pattern(client, experiment, monkeypatch):
    """The pattern --mark removes is the one publish_bytes really writes (seen by failing the rename)."""
    _, eid = experiment
    rid = make_run(client, eid, status="RUNNING")
    seen = []

    def failing_replace(src, dst):
        seen.append(Path(src).name)
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OSError):
        tracking.publish_bytes(client, rid, "model_best.pth", b"x")
    assert len(seen) == 1 and files.PARTIAL_NAME.fullmatch(seen[0]), seen


def test_live_process_on_this_host_is_not_stale(client, experiment):
    _, eid = experiment
    old = int(time.time() * 1000) - 10 * 3600 * 1000
    rid = make_run(client, eid, status="RUNNING", start_time=old,
                   tags={"gakt.host": platform.node(), "gakt.pid": str(os.getpid())})
    assert rid not in {s["run_id"] for s in runs.find_stale_runs(client, older_than_minutes=60)}
    assert client.get_run(rid).info.status == "RUNNING"


def test_finished_run_is_never_touched(client, experiment):
    _, eid = experiment
    rid = make_run(client, eid, status="FINISHED", tags={"gakt.host": platform.node(), "gakt.pid": str(dead_pid())})
    assert rid not in {s["run_id"] for s in runs.find_stale_runs(client, older_than_minutes=60)}
    assert runs.mark_stale_runs(client, [{"run_id": rid, "reason": "forced"}]) == 0
    run = client.get_run(rid)
    assert run.info.status == "FINISHED" and run.data.tags[tracking.TAG_OUTCOME] == "finished"


def test_run_idle_longer_than_the_limit_is_stale(client, experiment):
    _, eid = experiment
    now = int(time.time() * 1000)
    old = now - 3 * 3600 * 1000
    other_host = {"gakt.host": "some-other-machine", "gakt.pid": "12345"}
    idle = make_run(client, eid, status="RUNNING", start_time=old, tags=other_host)
    active = make_run(client, eid, status="RUNNING", start_time=old, tags=other_host, val_auc=[0.6],
                      metric_time=now - 60 * 1000)  # logged a minute ago
    fresh = make_run(client, eid, status="RUNNING", tags=other_host)
    found = {s["run_id"]: s for s in runs.find_stale_runs(client, older_than_minutes=120)}
    assert idle in found and "no activity for 180 min" in found[idle]["reason"]
    assert active not in found and fresh not in found
    assert runs.mark_stale_runs(client, [found[idle]]) == 1
    assert client.get_run(idle).info.status == "KILLED"
    assert client.get_run(active).info.status == "RUNNING"


def test_runs_not_made_by_this_service_are_ignored(client, experiment):
    _, eid = experiment
    foreign = client.create_run(eid, start_time=int(time.time() * 1000) - 3 * 3600 * 1000,
                                tags={"owner": "someone else"}).info.run_id
    assert foreign not in {s["run_id"] for s in runs.find_stale_runs(client, older_than_minutes=1)}


def test_non_positive_age_limit_is_refused(client):
    from gainakt3exp.errors import ConfigError

    with pytest.raises(ConfigError, match="older_than_minutes"):
        runs.find_stale_runs(client, older_than_minutes=0)


def test_reproduction_without_result_shows_its_outcome(client, experiment):
    name, eid = experiment
    done = make_run(client, eid, val_auc=[0.7], tags={"gakt.best_val_auc": "0.700000"}, start_time=1_000_000)
    make_run(client, eid, kind="repro", status="RUNNING", tags={tracking.TAG_REPRO_OF: done}, start_time=2_000_000)
    row = next(r for r in runs.list_runs(client, experiment_name=name) if r["run_id"] == done)
    assert row["reproduced"] == "running"


def test_latest_training_id_skips_reproductions_and_evaluations(client, experiment):
    name, eid = experiment
    with pytest.raises(RunNotFoundError, match="no training run yet"):
        runs.latest_training_exp_id(client, name)
    base = int(time.time() * 1000)
    original = make_run(client, eid, exp_id="555001", start_time=base)
    make_run(client, eid, exp_id="555002", start_time=base + 1000)
    make_run(client, eid, exp_id="555002", kind="repro", start_time=base + 2000,
             tags={tracking.TAG_REPRO_OF: original})
    make_run(client, eid, exp_id="555002", kind="eval", start_time=base + 3000)
    assert runs.latest_training_exp_id(client, name) == "555002"


def test_a_sigterm_inside_an_mlflow_write_stays_an_interruption(client, experiment):
    """The SIGTERM handler raises Interrupted wherever the process is; inside MLflow's SQL session (which wraps any
    Exception in MlflowException) it must come out as Interrupted, so the run is marked KILLED, not FAILED."""
    from gainakt3exp.loops.train import Interrupted

    store = client._tracking_client.store
    with pytest.raises(Interrupted, match="received SIGTERM"):
        with store.ManagedSessionMaker(read_only=False):
            raise Interrupted("received SIGTERM")


def _sigterm_after_the_first(engine, table: str):
    """A SQLAlchemy hook that SIGTERMs this process once, just after the first INSERT into `table` executed (the
    SQLite write lock is held then); returns the list it appends the statement to."""
    seen: list[str] = []

    def hook(_conn, _cursor, statement, *_args):
        if not seen and statement.lstrip().upper().startswith(f"INSERT INTO {table.upper()}"):
            seen.append(statement)
            os.kill(os.getpid(), signal.SIGTERM)
    return hook, seen


def test_a_sigterm_inside_a_store_write_is_raised_after_it_and_the_kill_is_recorded_at_once(client, experiment):
    """A SIGTERM raised inside a SQLite write left the store locked for the process (MLflow rolls back only on an
    Exception): the KILLED mark then waited 20 s and failed, and the run stayed RUNNING (seen in CI after a kill -9
    of a study driver). The interruption now waits for the write to end."""
    import sqlalchemy

    from gainakt3exp.loops.train import Interrupted

    run_id = client.create_run(experiment[1]).info.run_id
    before = signal.getsignal(signal.SIGTERM)
    engine = client._tracking_client.store.engine
    hook, seen = _sigterm_after_the_first(engine, "metrics")
    sqlalchemy.event.listen(engine, "after_cursor_execute", hook)
    try:
        with tracking.interruptions(lambda name: Interrupted(f"received {name}")):
            with pytest.raises(Interrupted, match="received SIGTERM"):
                tracking.MlflowSink(client, run_id).log_metrics({"m": 0.5, "n": 0.25}, step=0)
            started = time.perf_counter()
            os.kill(os.getpid(), signal.SIGTERM)  # a second signal: ignored while the first is handled
            tracking.MlflowSink(client, run_id).set_tags({tracking.TAG_OUTCOME: "killed"})
            client.set_terminated(run_id, "KILLED")
            elapsed = time.perf_counter() - started
    finally:
        sqlalchemy.event.remove(engine, "after_cursor_execute", hook)
    assert seen and elapsed < 5
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags[tracking.TAG_OUTCOME] == "killed"
    assert run.data.metrics == {"m": 0.5, "n": 0.25}  # the write under way when the signal came completed
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_interruption_that_lands_in_a_finalizer_is_raised_again_after_it():
    """Python swallows an exception raised in a finalizer (only sys.unraisablehook sees it): a SIGTERM whose
    handler ran inside one must still interrupt the block, not be lost (a study child then trained on to the end)."""
    ran = []

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):  # the handler runs at one of these bytecodes, inside the finalizer
                pass
            ran.append("finalizer done")

    before = sys.unraisablehook
    with tracking.interruptions(lambda name: KeyboardInterrupt(name)):
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            Finalized()  # collected at once: its __del__ runs here
            deadline = time.perf_counter() + 5
            while time.perf_counter() < deadline:  # the interruption must arrive here, well before 5 s
                pass
    assert ran == []  # the first raise did end the finalizer, and Python swallowed it there
    assert sys.unraisablehook is before and signal.getsignal(signal.SIGTERM) is not None


def test_outside_a_store_call_an_interruption_is_raised_at_once(client):
    with tracking.interruptions(lambda name: KeyboardInterrupt(name)):
        with pytest.raises(KeyboardInterrupt, match="SIGINT"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # not reached: the handler raises in the main thread at once
