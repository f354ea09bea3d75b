"""What the interpretability extras cost: two configurations trained side by side in one process, interleaved.

    .venv/bin/python benchmarks/extras_cost.py                          # C=100: the full objective vs pure BCE
    .venv/bin/python benchmarks/extras_cost.py --profile cpu-small --override dataset=synthetic_many \\
        --override data_root=/tmp/gdata                                 # C=1,200
    .venv/bin/python benchmarks/extras_cost.py --versus cpu-assist      # any second set of profiles

Configuration A is what train_throughput.py would time (the defaults, --profile, the benchmark base, --override);
B is A with the --versus profiles applied after A's (default: pure-bce). Both are built as train_model builds them
and put in the objective schedule --objective_state. The epoch's batches (the same length buckets as
train_throughput.py) are cut into chunks of --chunk batches; each chunk is trained by A and by B in turn, the order
alternating from chunk to chunk (A B, B A, ...), so both see the same machine: on this shared 2-core machine the
arithmetic rate moves by up to 1.5x within minutes (machine.matmul_gflops), which makes two separate runs' ratio
noisier than the effect measured. The first chunk of each runs once untimed first; --rounds repeats the chunks
(with new batch orders) for epochs of a few chunks; --validate adds each configuration's validation pass to each of
its chunks (with one chunk per epoch: whole epochs, as an epoch of train_model runs them, without MLflow). Prints one JSON line: each
configuration's interactions per second over all chunks, time_ratio = A's seconds / B's seconds (the same
interactions), and the per-chunk ratios' median, min and max.
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
from common import (
    OBJECTIVE_STATES,
    Timer,
    add_options,
    build_training,
    emit,
    epoch_batches,
    peak_rss_kib,
    run,
    set_objective_state,
    setup,
    subset,
    train_epoch,
)

from gainakt3exp.config.params import resolve_params
from gainakt3exp.loops.train import validate_epoch


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser)
    parser.add_argument("--versus", action="append", default=None, metavar="NAME",
                        help="profiles applied after A's to make B (repeatable; default: pure-bce)")
    parser.add_argument("--chunk", type=int, default=10, help="batches per chunk (default 10)")
    parser.add_argument("--batches", type=int, default=0, help="the epoch's first N batches (0 = the whole epoch)")
    parser.add_argument("--validate", action="store_true",
                        help="after each chunk, each configuration also runs its validation (train.validate_epoch: "
                             "the prediction, trajectory and global passes of an epoch), timed with its chunk; "
                             "with --chunk >= the epoch's batches, a chunk is a whole epoch")
    parser.add_argument("--rounds", type=int, default=1,
                        help="go over the timed chunks this many times (a small epoch: more measurements)")
    parser.add_argument("--objective_state", choices=OBJECTIVE_STATES, default="all-on",
                        help="all-on: every term in force (lag, retention, adaptive alignment); first-epoch: epoch 1")
    args = parser.parse_args(argv)
    if args.chunk < 1 or args.rounds < 1:
        parser.error(f"--chunk {args.chunk} --rounds {args.rounds}: each must be >= 1")
    return args


def train_chunk(tr, params, seqs, seed, validate: bool) -> tuple[float, int]:
    """One _train_epoch over seqs (a generator seeded with `seed`), then validate_epoch if asked:
    (wall seconds, real interactions trained)."""
    with Timer() as t:
        stats, _, _ = train_epoch(tr, params, seqs, seed)
        if validate:
            validate_epoch(tr.model, tr.data.valid, params, tr.device)
    return t.wall, stats["interactions"]


def main(argv=None) -> None:
    args = parse_args(argv)
    bench = setup(args)
    versus = args.versus or ["pure-bce"]
    resolved_b = resolve_params(bench.given, profiles=[*args.profile, *versus])  # A's overrides, then B's profiles
    configs = {"a": bench.params, "b": resolved_b.params}
    trainings = {}
    for key, p in configs.items():
        trainings[key] = build_training(p)
        set_objective_state(trainings[key].objective, p, args.objective_state)
    p = configs["a"]
    train = trainings["a"].data.train
    batches = epoch_batches(train, p["batch_size"], p["seed"])
    if args.batches > 0:
        batches = batches[:args.batches]
    chunks = [batches[i:i + args.chunk] for i in range(0, len(batches), args.chunk)]
    warm, timed = chunks[0], chunks
    for key in ("a", "b"):
        train_chunk(trainings[key], configs[key], subset(train, np.concatenate(warm)), p["seed"] + 1, args.validate)
    seconds = {"a": 0.0, "b": 0.0}
    interactions = {"a": 0, "b": 0}
    ratios = []
    with Timer() as whole:
        for i, chunk in enumerate(timed * args.rounds):
            seqs = subset(train, np.concatenate(chunk))
            got = {}
            for key in (("a", "b") if i % 2 == 0 else ("b", "a")):
                got[key] = train_chunk(trainings[key], configs[key], seqs, p["seed"] + 2 + i, args.validate)
                seconds[key] += got[key][0]
                interactions[key] += got[key][1]
            ratios.append(got["a"][0] / got["b"][0])
    assert interactions["a"] == interactions["b"], interactions
    results = {
        "chunks": len(timed) * args.rounds,
        "rounds": args.rounds,
        "validation_included": args.validate,
        "chunk_batches": args.chunk,
        "interactions": interactions["a"],
        "a_seconds": seconds["a"],
        "b_seconds": seconds["b"],
        "a_interactions_per_second": interactions["a"] / seconds["a"],
        "b_interactions_per_second": interactions["b"] / seconds["b"],
        "time_ratio": seconds["a"] / seconds["b"],
        "chunk_time_ratio_median": statistics.median(ratios),
        "chunk_time_ratio_min": min(ratios),
        "chunk_time_ratio_max": max(ratios),
        **whole.as_dict(),
        "peak_rss_mib": peak_rss_kib() / 1024,
    }
    extra = {"versus": versus, "b_overrides": resolved_b.overrides, "b_params": configs["b"]}
    emit("extras_cost", bench, results, extra)


if __name__ == "__main__":
    run(main)
