"""Per-epoch overhead of the trajectory metrics and of MLflow logging, as seconds and % of the epoch.

    .venv/bin/python benchmarks/epoch_overhead.py                   # one full epoch, logging to a tmp SQLite store
    .venv/bin/python benchmarks/epoch_overhead.py --batches 40      # a quick look (the % is also projected)
    .venv/bin/python benchmarks/epoch_overhead.py --epochs 2        # one JSON line per epoch

Runs gainakt3exp.loops.train.train_model itself, logging to a real local MLflow store (tracking.MlflowSink on
sqlite:///<tmp>/mlflow.db, artifacts beside it; the checkpoint goes there through tracking.publish_bytes as in
service/training.py), with timing wrappers around the functions it calls, so what is timed is the training code path:
  train part           train._train_epoch (includes the batch-level MLflow logging every monitor_freq batches)
  validate_epoch       of which collect_outputs (one model pass, reduced per batch), prediction_from_outputs,
                       semantic_from_outputs (first max_semantic_students rows), global_alignment_from_outputs
  metric dict          loss_shares + trajectory_entry + epoch_metric_dict
  MLflow epoch log     sink.log_metrics(dict, step=epoch); batch-level logs are timed separately
  checkpoint           checkpoint_bytes + publish_bytes of model_best.pth (when the epoch is the best so far)
The trajectory reductions inside collect_outputs are its time minus its make_batch and model forward calls (timed
with forward hooks): an upper bound, as it also holds the little bookkeeping a prediction-only pass needs. The
targets count trajectory = those reductions + semantic + global pass + metric dict, and MLflow logging = the epoch
log + the batch-level logs. An epoch runs from the start of _train_epoch to train_model's on_epoch callback.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from common import Timer, add_options, emit, epoch_batches, run, setup, subset

from gainakt3exp.data import sequences as data_mod
from gainakt3exp.loops import train as train_mod

TIMED = ("_train_epoch", "validate_epoch", "collect_outputs", "prediction_from_outputs", "semantic_from_outputs",
         "global_alignment_from_outputs", "select_rows", "stratified_rows", "loss_shares", "trajectory_entry",
         "epoch_metric_dict", "checkpoint_bytes")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser)
    parser.add_argument("--batches", type=int, default=0,
                        help="train on the first N batches of the epoch only (0 = the full epoch); the line then "
                             "also projects the overhead onto a full epoch")
    parser.add_argument("--epochs", type=int, default=1, help="epochs to run (one JSON line each)")
    parser.add_argument("--keep_store", action="store_true", help="keep the tmp MLflow store (its path is printed)")
    return parser.parse_args(argv)


class _Clock:
    """Accumulated wall and CPU seconds per name, reset per epoch."""

    def __init__(self):
        self.wall, self.cpu = defaultdict(float), defaultdict(float)

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.wall[name] += time.perf_counter() - w
                self.cpu[name] += time.process_time() - c
        return timed


class _TimedSink:
    """The MLflow sink, with its log_metrics calls timed (epoch-level vs batch-level by their keys)."""

    def __init__(self, inner, clock: _Clock):
        self.inner, self.clock = inner, clock
        self.calls = defaultdict(int)

    def log_metrics(self, metrics, step):
        name = "mlflow_batch_log" if all(k.startswith("batch/") for k in metrics) else "mlflow_epoch_log"
        self.calls[name] += 1
        return self.clock.wrap(name, self.inner.log_metrics)(metrics, step)

    def __getattr__(self, item):
        return getattr(self.inner, item)


def _store(tmp: Path):
    """A fresh local MLflow store (the real tracking code path) and one run in it."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    from gainakt3exp import tracking

    client = tracking.connect()
    exp_id = tracking.ensure_experiment(client, "benchmarks")
    run_id = client.create_run(exp_id).info.run_id
    sink = tracking.MlflowSink(client, run_id)
    sink.set_tags({"gakt.kind": "benchmark"})  # the store is warm before training, as after service.training._record_run
    return client, run_id, sink


def main(argv=None) -> None:
    args = parse_args(argv)
    bench = setup(args)
    p = {**bench.params, "epochs": args.epochs}
    full = train_mod.load_train_data(p)
    batches = epoch_batches(full.train, p["batch_size"], p["seed"])
    train = subset(full.train, np.concatenate(batches[:args.batches])) if args.batches > 0 else full.train
    data = train_mod.TrainData(full.spec, train, full.valid)
    full_interactions = data_mod.num_interactions(full.train)

    tmp = Path(tempfile.mkdtemp(prefix="gakt-bench-store-"))
    clock = _Clock()
    originals = {name: getattr(train_mod, name) for name in TIMED}
    lines = []
    try:
        client, run_id, mlflow_sink = _store(tmp)
        sink = _TimedSink(mlflow_sink, clock)
        from gainakt3exp import tracking

        def on_checkpoint(blob: bytes) -> None:
            clock.wrap("publish_checkpoint", tracking.publish_bytes)(client, run_id, "model_best.pth", blob)

        epoch_start = [0.0, 0.0]
        validating = [False]

        def on_epoch(info: dict) -> None:
            wall, cpu = time.perf_counter() - epoch_start[0], time.process_time() - epoch_start[1]
            lines.append((info["epoch"], wall, cpu, dict(clock.wall), dict(clock.cpu), dict(sink.calls),
                          info["metrics"]))
            clock.wall.clear(), clock.cpu.clear(), sink.calls.clear()
            epoch_start[:] = [time.perf_counter(), time.process_time()]

        for name, fn in originals.items():
            setattr(train_mod, name, clock.wrap(name, fn))
        train_epoch = train_mod._train_epoch

        def train_epoch_starting_the_clock(*a, **kw):  # an epoch starts with its training part
            epoch_start[:] = [time.perf_counter(), time.process_time()]
            return train_epoch(*a, **kw)

        def validate_epoch_flagged(*a, **kw):
            validating[0] = True
            try:
                return validate(*a, **kw)
            finally:
                validating[0] = False

        validate = train_mod.validate_epoch
        train_mod._train_epoch = train_epoch_starting_the_clock
        train_mod.validate_epoch = validate_epoch_flagged
        real_model_cls, real_make_batch = train_mod.GainAKT3Exp, data_mod.make_batch

        def make_batch(*a, **kw):  # validation batches only (training builds its batches with the same function)
            return clock.wrap("validation_make_batch", real_make_batch)(*a, **kw) if validating[0] \
                else real_make_batch(*a, **kw)

        started: list[float] = []

        def before_forward(*_):
            if validating[0]:
                started.append(time.perf_counter())

        def after_forward(*_):
            if validating[0]:
                clock.wall["validation_forward"] += time.perf_counter() - started.pop()

        class _Keep:  # builds the real model, with hooks that time its forward calls during validation
            @staticmethod
            def from_params(params, num_c, num_q=0):
                model = real_model_cls.from_params(params, num_c, num_q)
                model.register_forward_pre_hook(before_forward)
                model.register_forward_hook(after_forward)
                return model

        train_mod.GainAKT3Exp, data_mod.make_batch = _Keep, make_batch
        try:
            with Timer() as run_t:
                train_mod.train_model(p, sink, data, on_checkpoint=on_checkpoint, on_epoch=on_epoch)
        finally:
            train_mod.GainAKT3Exp, data_mod.make_batch = real_model_cls, real_make_batch
            for name, fn in originals.items():
                setattr(train_mod, name, fn)
        client.set_terminated(run_id)
    finally:
        if args.keep_store:
            print(f"# MLflow store kept: sqlite:///{tmp / 'mlflow.db'}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    for epoch, wall, cpu, w, c, calls, metrics in lines:
        train_s = w.get("_train_epoch", 0.0)
        # collect_outputs minus its batches and forward calls: the per-batch reductions for the trajectory plus
        # the little bookkeeping a prediction-only pass would also do (so an upper bound of the trajectory's share)
        reductions = w.get("collect_outputs", 0.0) - w.get("validation_forward", 0.0) \
            - w.get("validation_make_batch", 0.0)
        metric_dict = sum(w.get(k, 0.0) for k in ("loss_shares", "trajectory_entry", "epoch_metric_dict"))
        trajectory = (reductions + w.get("semantic_from_outputs", 0.0) + w.get("global_alignment_from_outputs", 0.0)
                      + w.get("stratified_rows", 0.0) + w.get("select_rows", 0.0) + metric_dict)
        mlflow = w.get("mlflow_epoch_log", 0.0) + w.get("mlflow_batch_log", 0.0)
        checkpoint = w.get("checkpoint_bytes", 0.0) + w.get("publish_checkpoint", 0.0)
        parts = {
            "train_seconds": train_s,
            "validate_epoch_seconds": w.get("validate_epoch", 0.0),
            "collect_outputs_seconds": w.get("collect_outputs", 0.0),
            "validation_forward_seconds": w.get("validation_forward", 0.0),
            "validation_make_batch_seconds": w.get("validation_make_batch", 0.0),
            "trajectory_reductions_seconds": reductions,
            "prediction_metrics_seconds": w.get("prediction_from_outputs", 0.0),
            "semantic_seconds": w.get("semantic_from_outputs", 0.0),
            "global_pass_seconds": w.get("global_alignment_from_outputs", 0.0) + w.get("stratified_rows", 0.0),
            "select_rows_seconds": w.get("select_rows", 0.0),
            "metric_dict_seconds": metric_dict,
            "mlflow_epoch_log_seconds": w.get("mlflow_epoch_log", 0.0),
            "mlflow_batch_log_seconds": w.get("mlflow_batch_log", 0.0),
            "checkpoint_seconds": checkpoint,
        }
        overhead = trajectory + mlflow
        results = {
            "epoch": epoch,
            "epoch_seconds": wall,
            "epoch_cpu_seconds": cpu,
            **parts,
            "other_seconds": wall - train_s - w.get("validate_epoch", 0.0) - metric_dict
            - w.get("mlflow_epoch_log", 0.0) - checkpoint,
            "trajectory_seconds": trajectory,
            "mlflow_logging_seconds": mlflow,
            "overhead_seconds": overhead,
            "percent_of_epoch": {k.removesuffix("_seconds"): 100 * v / wall for k, v in
                                 {**parts, "trajectory_seconds": trajectory, "mlflow_logging_seconds": mlflow,
                                  "overhead_seconds": overhead}.items()},
            "cpu_seconds": {k: v for k, v in c.items()},
            "mlflow_log_calls": calls,
            "metric_keys_logged": len(metrics),
            "train_interactions_per_second": metrics.get("train/interactions_per_second"),
            "train_batches": len(batches) if args.batches <= 0 else min(args.batches, len(batches)),
            "full_epoch": args.batches <= 0 or args.batches >= len(batches),
            "valid_rows": len(full.valid),
            "run_seconds": run_t.wall,
        }
        if not results["full_epoch"]:
            measured = data_mod.num_interactions(train)
            full_epoch = wall + train_s * (full_interactions / measured - 1)
            results["projected_full_epoch_seconds"] = full_epoch
            results["projected_overhead_percent_of_full_epoch"] = 100 * overhead / full_epoch
        emit("epoch_overhead", bench, results, {"epochs": args.epochs})


if __name__ == "__main__":
    run(main)
