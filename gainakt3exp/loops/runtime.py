"""The runtime of a training or evaluation process: the device, seeding every generator, bf16 autocast, and glibc
allocator settings that keep large per-batch buffers out of repeated mmap/munmap."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def resolve_device(name: str) -> torch.device:
    """The torch device of the `device` parameter; a CUDA device this machine does not have is a ConfigError
    (gakt-launch and gakt-repro call this before any run exists)."""
    from gainakt3exp.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name!r}: this machine has no CUDA device (torch {torch.__version__}, "
                              "cuda available: false); use --device cpu or --device auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={name!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                              f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); pick one of them or --device auto")
    return torch.device(name)


#: glibc malloc settings for training processes (mallopt): blocks up to 1 GiB come from the heap and freed memory is
#: kept for reuse, instead of a fresh mmap (page faults, pages zeroed by the kernel) for every tensor over 32 MiB's
#: dynamic threshold. A training step allocates and frees many (B, L, C)-sized blocks; this made a cpu-small step
#: ~30% faster at 1,200 skills and at 100 (benchmarks/train_throughput.py). Values only, never results.
MALLOC_SETTINGS = {"M_MMAP_THRESHOLD": 1 << 30, "M_TRIM_THRESHOLD": (1 << 31) - 1}
_MALLOPT_CODES = {"M_TRIM_THRESHOLD": -1, "M_MMAP_THRESHOLD": -3}


def tune_allocator() -> dict:
    """Apply MALLOC_SETTINGS where the C library is glibc (Linux); returns what was applied (recorded in the run)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return {}
    return {k: v for k, v in MALLOC_SETTINGS.items() if mallopt(_MALLOPT_CODES[k], v) == 1}


def seed_everything(params: dict, device: torch.device) -> dict:
    """Seed python, numpy and torch; switch on deterministic algorithms. Returns the facts to record."""
    allocator = tune_allocator()
    seed = params["seed"]
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if params["deterministic"]:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        # Deterministic mode also fills every new tensor with NaN by default (a debugging aid for kernels that read
        # memory they never wrote); no kernel here does, results are the same, and the fill cost ~35% of a
        # training step at 1,200 skills. Recorded in the run (runtime facts).
        torch.utils.deterministic.fill_uninitialized_memory = False
    else:
        torch.use_deterministic_algorithms(False)
    return {"device": str(device), "torch_threads": torch.get_num_threads(),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG", ""),
            "fill_uninitialized_memory": bool(torch.utils.deterministic.fill_uninitialized_memory),
            "malloc_settings": allocator}


def _autocast(params: dict, device: torch.device):
    if params["use_amp"]:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)
