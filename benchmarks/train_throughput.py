"""Training throughput in real (unpadded) interactions per second: forward + backward + optimizer step.

    .venv/bin/python benchmarks/train_throughput.py                          # full objective, one full epoch
    .venv/bin/python benchmarks/train_throughput.py --profile pure-bce       # every interpretability option off
    .venv/bin/python benchmarks/train_throughput.py --batches 30             # the epoch's first 30 batches
    .venv/bin/python benchmarks/train_throughput.py --override use_amp=true  # bf16 autocast
    .venv/bin/python benchmarks/train_throughput.py --batches 20 --torch_profile 10   # + where the time goes
    .venv/bin/python benchmarks/train_throughput.py --batches 2 --count_flops 10      # + the matmul work it asks for

What is timed is gainakt3exp.loops.train._train_epoch itself, the loop train_model runs: autocast, forward, objective,
zero_grad, backward, gradient clipping, optimizer step, the per-batch AUC bookkeeping and the batch-level sink
logging (an in-memory sink here; benchmarks/epoch_overhead.py times MLflow). Parameters: the defaults, then
--profile, then the benchmark base (d_model 256, 1 block), --data_root and --override; all of them are in the JSON.
The objective is put in the schedule of its first epoch with every term in force (--objective_state all-on; lag,
retention and adaptive alignment active) or of epoch 1 (first-epoch). A warm-up over the epoch's last
--warmup_batches batches runs first. Real interactions = sum of batch.mask; the line also reports the padding
the length-bucketed batches compute and what bucketing saved. Prints one JSON line, plus one with --torch_profile
and one with --count_flops: the floating-point operations of the matrix products (linear layers, the gain head's
products inside the cumulative function, attention) per real interaction, counted by torch's FlopCounterMode
over the epoch's last N batches. The ratio of two configurations' counts is the cost ratio their work sets when
both run at the same arithmetic rate; timing can approach it, not beat it.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from common import (
    OBJECTIVE_STATES,
    Timer,
    add_options,
    build_training,
    emit,
    epoch_batches,
    objective_facts,
    padding_stats,
    peak_rss_kib,
    run,
    set_objective_state,
    setup,
    subset,
    train_epoch,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser)
    parser.add_argument("--batches", type=int, default=0,
                        help="measure over the first N batches of the epoch (0 = the full epoch)")
    parser.add_argument("--warmup_batches", type=int, default=3,
                        help="the epoch's last N batches, run before timing")
    parser.add_argument("--objective_state", choices=OBJECTIVE_STATES, default="all-on",
                        help="all-on: every term in force (lag, retention, adaptive alignment); first-epoch: epoch 1")
    parser.add_argument("--torch_profile", type=int, default=0, metavar="N",
                        help="afterwards, run the epoch's last N batches under torch.profiler; "
                             "a second JSON line lists the top operators by self CPU time")
    parser.add_argument("--top_ops", type=int, default=25, help="operators listed by --torch_profile")
    parser.add_argument("--count_flops", type=int, default=0, metavar="N",
                        help="afterwards, count the matrix-product FLOPs of the epoch's last N batches (forward and "
                             "backward); one more JSON line, with the counts per op and per real interaction")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    bench = setup(args)
    p = bench.params
    tr = build_training(p)
    train = tr.data.train
    epoch = set_objective_state(tr.objective, p, args.objective_state)
    rss_ready = peak_rss_kib()

    batches = epoch_batches(train, p["batch_size"], p["seed"])  # epoch 1's batches (train_model's first epoch)
    with Timer() as warm_t:
        if args.warmup_batches > 0:
            train_epoch(tr, p, subset(train, np.concatenate(batches[-args.warmup_batches:])), p["seed"] + 1)

    seqs = subset(train, np.concatenate(batches[:args.batches] if args.batches > 0 else batches))
    padding = padding_stats(seqs, p["batch_size"], p["seed"])
    with Timer() as t:
        stats, n_batches, _ = train_epoch(tr, p, seqs, p["seed"])
    n = stats["interactions"]
    assert n == padding["real_interactions"], (n, padding["real_interactions"])
    results = {
        "interactions": n,
        "interactions_per_second": n / t.wall,
        "interactions_per_cpu_second": n / t.cpu,
        **t.as_dict(),
        "batches": n_batches,
        "rows": len(seqs),
        "full_epoch": len(seqs) == len(train),
        "ms_per_batch": 1000 * t.wall / max(n_batches, 1),
        "cells_per_second": padding["computed_cells"] / t.wall,
        "padding": padding,
        "warmup_batches": args.warmup_batches,
        "warmup_seconds": warm_t.wall,
        "train_loss": stats["means"]["total"],
        "train_bce": stats["means"]["bce"],
        "train_auc": stats["auc"],
        "data_load_seconds": tr.load_seconds,
        "peak_rss_kib_before_training": rss_ready,
        "peak_rss_kib": peak_rss_kib(),
        "peak_rss_mib": peak_rss_kib() / 1024,
    }
    extra = {"runtime": tr.runtime, "objective_epoch": epoch, "objective": objective_facts(tr.objective)}
    emit("train_throughput", bench, results, extra)

    if args.torch_profile > 0:
        from torch.profiler import ProfilerActivity, profile

        prof_seqs = subset(train, np.concatenate(batches[-args.torch_profile:]))
        with profile(activities=[ProfilerActivity.CPU]) as prof, Timer() as pt:
            stats, n_batches, _ = train_epoch(tr, p, prof_seqs, p["seed"] + 2)
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) or 1
        top = [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1000, "share": e.self_cpu_time_total / total,
                "calls": e.count} for e in events[:args.top_ops]]
        emit("train_step_profile", bench, {"batches": n_batches, "interactions": stats["interactions"],
                                           **pt.as_dict(), "profiler_self_cpu_ms": total / 1000, "top_ops": top},
             extra)

    if args.count_flops > 0:
        flop_seqs = subset(train, np.concatenate(batches[-args.count_flops:]))
        counter = flop_counter()
        with counter:
            stats, n_batches, _ = train_epoch(tr, p, flop_seqs, p["seed"] + 3)
        n = stats["interactions"]
        cells = padding_stats(flop_seqs, p["batch_size"], p["seed"] + 3)["computed_cells"]  # the batches' B x L
        by_op = {str(op): count for op, count in counter.get_flop_counts()["Global"].items()}
        total = counter.get_total_flops()
        emit("train_step_flops", bench, {"batches": n_batches, "interactions": n, "computed_cells": cells,
                                         "flops": total, "flops_per_interaction": total / n,
                                         "flops_by_op": by_op,
                                         "flops_per_interaction_by_op": {op: c / n for op, c in by_op.items()}},
             extra)


def flop_counter():
    """torch's FlopCounterMode, also counting what a CPU training step runs that it does not count by default: the
    in-place addmm_ (the gain head's weight gradient) and the CPU flash-attention kernels (forward and backward),
    with torch's own formulas (attention counted over the whole L x L, causal or not, as torch counts it)."""
    from torch.utils import flop_counter as fc

    def as_registered(formula):  # torch's formulas are stored already wrapped for shapes: pass them as they are
        def counted(*args, **kwargs):
            return formula(*args, **kwargs)
        counted._get_raw = True
        return counted

    aten = torch.ops.aten
    return fc.FlopCounterMode(display=False, custom_mapping={
        aten.addmm_: as_registered(fc.addmm_flop),
        aten._scaled_dot_product_flash_attention_for_cpu: as_registered(fc.sdpa_flop),
        aten._scaled_dot_product_flash_attention_for_cpu_backward: as_registered(fc.sdpa_backward_flop),
    })

if __name__ == "__main__":
    run(main)
