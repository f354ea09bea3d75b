"""What every benchmark script shares: options, parameters, machine facts, timers, one JSON line per measurement.

    from common import add_options, emit, run, setup
    parser = argparse.ArgumentParser(); add_options(parser); args = parser.parse_args()
    bench = setup(args)                      # resolved, validated params; torch threads set
    emit("train_throughput", bench, {"interactions_per_second": ...})   # one JSON line on stdout

Parameters come from gainakt3exp.config.params.resolve_params: the defaults, then each --profile, then the benchmark
base BENCH_OVERRIDES for the keys no profile sets (so --profile cpu-small keeps its d_model 64), --data_root and
each --override key=value. A benchmark runs exactly the configuration a tracked run with those overrides would, and
every parameter value lands in the JSON line (params, overrides = what differs from the defaults, settings).
Timings on a shared machine are noisy: each line records the load average before and after the measurement, the
process CPU seconds beside the wall seconds, and the machine's float32 matrix-product rate when the line is written
(machine.matmul_gflops), so that figures from different days can be compared per unit of arithmetic.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # `python benchmarks/x.py` from a checkout without an installed package
    sys.path.append(str(PROJECT_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gainakt3exp.config.params import load_profile, resolve_params  # noqa: E402
from gainakt3exp.data import sequences as data_mod  # noqa: E402
from gainakt3exp.errors import GaktError  # noqa: E402
from gainakt3exp.loops import runtime as runtime_mod  # noqa: E402
from gainakt3exp.loops import train
from gainakt3exp.loops.sink import MemorySink  # noqa: E402
from gainakt3exp.model.network import GainAKT3Exp  # noqa: E402
from gainakt3exp.objective.controller import Objective  # noqa: E402
from gainakt3exp.objective.terms import FIXED_CONSTANTS

#: The issue's reference model: the defaults except a model a 2-core CPU trains in about a minute per epoch.
BENCH_OVERRIDES = {"d_model": "256", "num_encoder_blocks": "1"}
#: assist2015 lives in ../shared/data next to the project (relative data_root = relative to the project folder).
DEFAULT_DATA_ROOT = "../shared/data"


def machine_cores() -> int:
    """CPUs this process may run on (the affinity mask; os.cpu_count() where that is unavailable)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes (parameters, threads, bench-only switches)."""
    parser.add_argument("--data_root", default=DEFAULT_DATA_ROOT,
                        help="folder holding one folder per dataset; relative = relative to the project folder "
                             f"(default: {DEFAULT_DATA_ROOT})")
    parser.add_argument("--profile", action="append", default=[], metavar="NAME",
                        help="parameter profile from configs/profiles (repeatable, applied in order), e.g. pure-bce")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="parameter override (repeatable), applied last")
    parser.add_argument("--no_bench_base", action="store_true",
                        help=f"do not apply the benchmark base {BENCH_OVERRIDES}, which otherwise sets the keys "
                             "no --profile sets")
    parser.add_argument("--threads", type=int, default=machine_cores(),
                        help="torch intra-op CPU threads (default: the cores this process may use, "
                             f"here {machine_cores()})")


@dataclass
class Bench:
    params: dict
    overrides: dict
    profiles: list
    settings: dict = field(default_factory=dict)
    given: dict = field(default_factory=dict)  # the overrides setup() resolved (base, data_root, --override)


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--override {item!r}: expected KEY=VALUE, e.g. --override d_model=128")
        out[key.strip()] = value.strip()
    return out


def setup(args: argparse.Namespace) -> Bench:
    """Resolve and validate the parameters (one error listing every problem), set torch threads."""
    profiled = {key for name in args.profile for key in load_profile(name)}
    base = {} if args.no_bench_base else {k: v for k, v in BENCH_OVERRIDES.items() if k not in profiled}
    overrides = {**base, "data_root": args.data_root, **parse_overrides(args.override)}
    resolved = resolve_params(overrides, profiles=args.profile)
    if args.threads < 1:
        raise SystemExit(f"--threads {args.threads}: must be >= 1")
    torch.set_num_threads(args.threads)
    return Bench(params=resolved.params, overrides=resolved.overrides, profiles=list(args.profile),
                 settings={**vars(args), "bench_base_applied": base}, given=overrides)


def run(main) -> None:
    """Call a benchmark's main; a known error (bad parameter, missing data) is one line on stderr, exit 1."""
    try:
        main()
    except GaktError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def machine() -> dict:
    """Facts that decide what a timing means."""
    cpu, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == platform.processor():
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "machine_cores": machine_cores(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "cpu_bf16_instructions": sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"}),  # none: bf16 is emulated
        "python": platform.python_version(),
        "platform": platform.platform(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "fill_uninitialized_memory": bool(torch.utils.deterministic.fill_uninitialized_memory),
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "matmul_gflops": matmul_gflops(),
    }


#: The product matmul_gflops times: (M, K) x (K, N) float32, the shape of a d_model-256 layer over 4,096 steps.
MATMUL_SHAPE = (4096, 256, 1024)


def matmul_gflops(seconds: float = 0.3) -> float:
    """The machine's float32 matrix-product rate now, with this process's torch threads: GFLOP/s of MATMUL_SHAPE,
    the best of three timings of ~seconds / 3 each. Recorded beside every timing, so figures taken on different days
    (this machine's speed moved by 1.5x between sessions) can be compared as interactions per GFLOP/s."""
    m, k, n = MATMUL_SHAPE
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=generator), torch.randn(k, n, generator=generator)
    out = torch.empty(m, n)
    torch.mm(a, b, out=out)
    start = time.perf_counter()
    torch.mm(a, b, out=out)
    once = max(time.perf_counter() - start, 1e-6)
    reps = max(1, int(seconds / 3 / once))
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        best = min(best, (time.perf_counter() - start) / reps)
    return 2 * m * k * n / best / 1e9


def peak_rss_kib() -> int:
    """Peak resident set size of this process so far (ru_maxrss: KiB on Linux)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


class Timer:
    """Wall (perf_counter) and process CPU seconds of a block: `with Timer() as t: ...; t.wall, t.cpu`."""

    def __enter__(self) -> "Timer":
        self.load_before = load_average()
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c
        self.load_after = load_average()

    def as_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}seconds": self.wall, f"{prefix}cpu_seconds": self.cpu,
                f"{prefix}load_before": self.load_before, f"{prefix}load_after": self.load_after}


def emit(benchmark: str, bench: Bench, results: dict, extra: dict | None = None) -> None:
    """Print ONE JSON line: the benchmark name, the command's settings, every parameter, machine, results."""
    peak = peak_rss_kib()  # before machine(), whose matrix-product timing allocates
    record = {
        "benchmark": benchmark,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": bench.settings,
        "profiles": bench.profiles,
        "overrides": bench.overrides,
        "params": bench.params,
        **(extra or {}),
        "machine": machine(),
        "results": results,
        "peak_rss_kib": peak,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(record, default=_json_default), flush=True)


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


# ------------------------------------------------------------------------------------------- training set-up

@dataclass
class Training:
    """What train_model builds before its first epoch, built the same way."""

    device: torch.device
    runtime: dict
    data: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    objective: Objective
    load_seconds: float


def build_training(params: dict) -> Training:
    """Seed and switch on deterministic algorithms (train.seed_everything), load the data from the parsed-array
    cache (train.load_train_data), build model, optimizer and objective as train.train_model does."""
    device = runtime_mod.resolve_device(params["device"])
    runtime = runtime_mod.seed_everything(params, device)
    start = time.perf_counter()
    data = train.load_train_data(params)
    load_seconds = time.perf_counter() - start
    model = GainAKT3Exp.from_params(params, data.spec.num_c, data.spec.num_q).to(device)
    return Training(device, runtime, data, model, train.build_optimizer(model, params), Objective(params),
                    load_seconds)


OBJECTIVE_STATES = ("all-on", "first-epoch")


def train_epoch(tr: Training, params: dict, seqs, seed: int):
    """One train._train_epoch over seqs with the epoch order of a generator seeded with `seed`, logging to an
    in-memory sink: (epoch statistics, batches, sink)."""
    generator = torch.Generator().manual_seed(seed)
    sink = MemorySink()
    stats, steps = train._train_epoch(tr.model, tr.objective, tr.optimizer, seqs, params, tr.device, generator,
                                          sink, 0, no_progress)
    return stats, steps, sink


def set_objective_state(objective: Objective, params: dict, state: str) -> int:
    """Put the objective in the schedule of one epoch, through its public begin/end_epoch; returns that 1-based epoch.

    first-epoch: epoch 1 of a run (warm-ups at their start; no lag, no retention, no adaptive alignment).
    all-on: the first epoch where every term is in force: after the warm-ups, lag on (epoch
    warmup_constraint_epochs + lag_start_offset_epochs), and a history of one good epoch (global corr 0.5) then a
    drop (0.0), so retention and the adaptive alignment factor are active too. Terms a profile switches off stay off.
    """
    if state == "first-epoch":
        objective.begin_epoch(0)
        return 1
    epoch = max(params["warmup_constraint_epochs"] + FIXED_CONSTANTS["lag_start_offset_epochs"],
                params["alignment_warmup_epochs"] + 1, params["warmup_constraint_epochs"] + 1)
    calm = {"mastery_correlation": 0.5, "mean_mastery_variance": 1.0, "alignment_share": 0.0}
    objective.end_epoch(0, global_mastery_corr=0.5, **calm)
    objective.end_epoch(1, global_mastery_corr=0.0, **calm)
    objective.begin_epoch(epoch - 1)
    return epoch


def objective_facts(objective: Objective) -> dict:
    state = objective.state_dict()
    state["effective_constraint_weights"] = objective.effective_constraint_weights()
    return state


def subset(seqs, rows: np.ndarray):
    """The Sequences of `rows` only (same class, arrays indexed), for runs over part of an epoch."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    pick = {f.name: getattr(seqs, f.name)[rows] for f in dataclasses.fields(seqs)
            if isinstance(getattr(seqs, f.name), np.ndarray)}
    return dataclasses.replace(seqs, **pick)


def epoch_batches(seqs, batch_size: int, seed: int) -> list[np.ndarray]:
    """Row indices of each batch of the training epoch a generator seeded with `seed` gives, in batch order.

    The batches are length buckets, so the rows of any k of them, bucketed again by _train_epoch, make the same
    k batches: a run over part of an epoch computes the same padding per interaction as the full epoch."""
    gen = torch.Generator().manual_seed(seed)
    return [b.rows.numpy() for b in data_mod.iterate_batches(seqs, batch_size, shuffle=True, generator=gen,
                                                             device="cpu")]


def padding_stats(seqs, batch_size: int, seed: int) -> dict:
    """Cells the model computes vs real interactions for the epoch order of a generator seeded with `seed`
    (exactly the batches train._train_epoch draws with it), and what the same epoch would cost without
    length bucketing (random batches, each trimmed to its longest row) and without trimming (seq_len - 1 cells)."""
    gen = torch.Generator().manual_seed(seed)
    real = cells = 0
    for b in data_mod.iterate_batches(seqs, batch_size, shuffle=True, generator=gen, device="cpu"):
        real += int(b.mask.sum())
        cells += b.mask.numel()
    width = seqs.concepts.shape[1] - 1
    lengths = torch.from_numpy(seqs.lengths)[torch.randperm(len(seqs), generator=torch.Generator().manual_seed(seed))]
    unbucketed = sum(len(ch) * min(max(int(ch.max()) - 1, 1), width) for ch in torch.split(lengths, batch_size))
    untrimmed = len(seqs) * width
    pad, pad_unbucketed = cells - real, unbucketed - real
    return {
        "real_interactions": real,
        "computed_cells": cells,
        "padding_fraction": pad / cells if cells else None,
        "cells_without_bucketing": unbucketed,
        "padding_fraction_without_bucketing": pad_unbucketed / unbucketed if unbucketed else None,
        "cells_without_trimming": untrimmed,
        "padding_fraction_without_trimming": (untrimmed - real) / untrimmed if untrimmed else None,
        "padding_removed_by_bucketing": 1 - pad / pad_unbucketed if pad_unbucketed else None,
    }


def no_progress(done: int, loss: float) -> None:
    """_train_epoch's progress callback, silent: benchmark output is the JSON lines only."""
