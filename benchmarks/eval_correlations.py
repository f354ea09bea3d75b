"""Evaluation time of the correlation metrics vs the number of students (rows of the split).

    .venv/bin/python benchmarks/eval_correlations.py                         # test split, 300 / 3800 / all
    .venv/bin/python benchmarks/eval_correlations.py --students 50 600 --split valid
    .venv/bin/python benchmarks/eval_correlations.py --checkpoint mlruns/.../model_best.pth

For each n, gainakt3exp.loops.collect.semantic_metrics(model, split, n, batch_size, device), which loops/evaluate.py runs with
n = max_correlation_students, is timed end to end, and then its two halves separately: collect_outputs(...,
logits=False) (the model pass over the first n rows without the prediction head, reduced per batch) and
semantic_from_outputs (the correlations, variances and violation rates from those outputs, no model). For
comparison, full_pass_seconds times a pass that also computes the logits (what a validation epoch runs). The
model is the parameters' architecture with seeded random weights, or a trained model_best.pth given by
--checkpoint; the cost does not depend on the weights. One warm-up call (first
--warmup_students rows) runs before the first timing. Prints one JSON line per n.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from common import Timer, add_options, emit, peak_rss_kib, run, setup

from gainakt3exp.data import sequences as data_mod
from gainakt3exp.data.registry import resolve_data_root
from gainakt3exp.loops import collect as collect_mod
from gainakt3exp.loops.runtime import resolve_device, seed_everything
from gainakt3exp.metrics import stats
from gainakt3exp.model.network import GainAKT3Exp


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser)
    parser.add_argument("--students", nargs="+", default=["300", "3800", "all"],
                        help="numbers of students (rows) to evaluate, or 'all' (default: 300 3800 all)")
    parser.add_argument("--split", choices=data_mod.SPLITS, default="test", help="split to evaluate (default: test)")
    parser.add_argument("--checkpoint", default=None,
                        help="model_best.pth to load (default: none, seeded random weights of the same architecture)")
    parser.add_argument("--warmup_students", type=int, default=64, help="rows of the warm-up call")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    bench = setup(args)
    p = bench.params
    device = resolve_device(p["device"])
    runtime = seed_everything(p, device)
    spec = data_mod.dataset_spec(p["dataset"], resolve_data_root(p["data_root"]))
    with Timer() as load_t:
        seqs = data_mod.load_split(spec, args.split, p["fold"], p["seq_len"])
    model = GainAKT3Exp.from_params(p, spec.num_c, spec.num_q).to(device)
    if args.checkpoint:
        from gainakt3exp.loops.checkpoint import load_checkpoint

        with open(args.checkpoint, "rb") as f:
            model.load_state_dict(load_checkpoint(f.read())["state_dict"])
    batch_size = p["batch_size"]
    collect_mod.semantic_metrics(model, seqs, min(args.warmup_students, len(seqs)), batch_size, device)

    for item in args.students:
        n = len(seqs) if item == "all" else int(item)
        rows = np.arange(min(n, len(seqs)))
        lengths = np.asarray(seqs.lengths)[rows]
        with Timer() as total:
            res = collect_mod.semantic_metrics(model, seqs, n, batch_size, device)
        with Timer() as collect:
            out = collect_mod.collect_outputs(model, seqs, rows, batch_size, device, logits=False)
        with Timer() as full:
            collect_mod.collect_outputs(model, seqs, rows, batch_size, device)
        with Timer() as corr:
            again = stats.semantic_from_outputs(out)
        assert again.keys() == res.keys()
        results = {
            "students_requested": item,
            "students": int(rows.size),
            "interactions": int(np.clip(lengths - 1, 0, None).sum()),
            **total.as_dict(),
            "collect_outputs_seconds": collect.wall, "collect_outputs_cpu_seconds": collect.cpu,
            "correlations_seconds": corr.wall, "correlations_cpu_seconds": corr.cpu,
            "full_pass_seconds": full.wall,
            "correlation_students": res["correlation_students"],
            "mastery_correlation": res["mastery_correlation"],
            "gain_correlation": res["gain_correlation"],
            "split": args.split,
            "split_rows": len(seqs),
            "batch_size": batch_size,
            "checkpoint": args.checkpoint,
            "split_load_seconds": load_t.wall,
            "peak_rss_kib": peak_rss_kib(),
        }
        emit("eval_correlations", bench, results, {"runtime": runtime, "no_grad": not torch.is_grad_enabled()})


if __name__ == "__main__":
    run(main)
