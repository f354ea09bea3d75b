"""What a study costs beyond its children, and what running children side by side buys on this machine.

    .venv/bin/python benchmarks/study_overhead.py --profile cpu-small --override epochs=2      # 4 assist2015 children
    .venv/bin/python benchmarks/study_overhead.py --profile tiny --data_root data --folds 0,1  # a smoke check

Runs the same study twice through the real command, each time on a fresh local store and a local Ray cluster the
command starts itself (the default path): `gakt-study launch --workers 2 --threads_per_run 1` (two children at
once, one torch thread each) and `--workers 1 --threads_per_run 2` (one at a time, two threads). Parsed data is
cached once before the timing. Per configuration it reports the command's wall seconds, each child's own run time
(its `mlflow run` in the Ray task, tag gakt.study_task_seconds, which is what a gakt-launch of the same run costs),
its training seconds (sum of train/epoch_seconds), the local cluster's start-up and the study's execution phase.
For the one-at-a-time configuration: engine_overhead_per_child_seconds = (execution phase - sum of the children's
own run times) / children, what Ray and the study add per child (target <= 3 s); command_fixed_seconds = wall -
execution phase, paid once per command (imports, validation of every child, the cluster's start and stop, the
aggregate); command_overhead_per_child_seconds = (wall - sum of own run times) / children, both together.
parallel_over_serial_wall_ratio = wall(2 x 1) / wall(1 x 2) (aim <= 0.75). Prints one JSON line.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from common import Timer, add_options, emit, run, setup

from gainakt3exp.config.params import format_value
from gainakt3exp.service.record import check_inputs

CONFIGS = ((2, 1), (1, 2))  # (workers, threads_per_run)
BIN = Path(sys.executable).parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser)
    parser.add_argument("--folds", default="0,1,2,3", help="folds of the study (default 0,1,2,3: 4 children)")
    parser.add_argument("--seeds", default="42", help="seeds of the study (default 42)")
    return parser.parse_args(argv)


def run_study(bench, args, workers: int, threads: int, folder: Path) -> dict:
    """One `gakt-study launch` on its own store; its timings read back from the store."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env.update(MLFLOW_TRACKING_URI=uri, PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    command = [str(BIN / "gakt-study"), "launch", "--short_title", "overhead", "--folds", args.folds,
               "--seeds", args.seeds, "--workers", str(workers), "--threads_per_run", str(threads)]
    for name in bench.profiles:
        command += ["--profile", name]
    for key, value in bench.overrides.items():
        if key not in ("fold", "seed"):
            command += [f"--{key}", format_value(value)]
    with Timer() as t:
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the study failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    study_id = re.search(r"^study (\d{6}):", proc.stdout, re.M).group(1)
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    (parent,) = client.search_runs(experiments, f"tags.`gakt.experiment_id` = '{study_id}'")
    children = client.search_runs(experiments, f"tags.`gakt.study_run` = '{parent.info.run_id}'")
    own = sorted(float(c.data.tags["gakt.study_task_seconds"]) for c in children)
    training = [sum(m.value for m in client.get_metric_history(c.info.run_id, "train/epoch_seconds"))
                for c in children]
    return {"workers": workers, "threads_per_run": threads, "children": len(children), **t.as_dict("wall_"),
            "children_own_seconds": own, "children_own_seconds_sum": sum(own),
            "children_training_seconds_sum": sum(training),
            "ray_startup_seconds": parent.data.metrics["study/ray_startup_seconds"],
            "study_execute_seconds": parent.data.metrics["study/wall_seconds"],
            "best_val_auc_mean": parent.data.metrics["study/val_auc_mean"]}


def main(argv=None) -> None:
    args = parse_args(argv)
    bench = setup(args)
    for fold in (int(f) for f in args.folds.split(",")):  # parse (and cache) the data before anything is timed
        check_inputs({**bench.params, "fold": fold})
    results = {}
    with tempfile.TemporaryDirectory(prefix="gakt-study-overhead-") as tmp:
        for workers, threads in CONFIGS:
            folder = Path(tmp) / f"w{workers}t{threads}"
            folder.mkdir()
            results[f"workers{workers}_threads{threads}"] = run_study(bench, args, workers, threads, folder)
    serial, parallel = results["workers1_threads2"], results["workers2_threads1"]
    n = serial["children"]
    results["engine_overhead_per_child_seconds"] = (serial["study_execute_seconds"]
                                                    - serial["children_own_seconds_sum"]) / n
    results["command_fixed_seconds"] = serial["wall_seconds"] - serial["study_execute_seconds"]
    results["command_overhead_per_child_seconds"] = (serial["wall_seconds"] - serial["children_own_seconds_sum"]) / n
    results["parallel_over_serial_wall_ratio"] = parallel["wall_seconds"] / serial["wall_seconds"]
    results["targets"] = {"engine_overhead_per_child_seconds": "<= 3", "parallel_over_serial_wall_ratio": "<= 0.75"}
    emit("study_overhead", bench, results)


if __name__ == "__main__":
    run(main)
