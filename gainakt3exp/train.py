"""Training loop of GainAKT3Exp.

    results = train_model(params, MemorySink())        # params: a complete resolved parameter dict

`train_model` is pure training: it hands one dict of numbers per epoch to a sink (`sink.log_metrics(d, step)`)
and never imports mlflow or the service. runner.py (the MLproject `main` entry point) wires it to the MLflow run
that `mlflow run` created (or a new one).
"""
from __future__ import annotations

import csv
import io
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from . import data as data_mod
from .losses import Objective
from .metrics import (
    collect_outputs,
    global_alignment_from_outputs,
    prediction_from_outputs,
    roc_auc,
    select_rows,
    semantic_from_outputs,
    stratified_rows,
)
from .model import GainAKT3Exp
from .trajectory import epoch_metric_dict, loss_shares, trajectory_entry

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class Interrupted(BaseException):
    """SIGTERM during training: the run is marked KILLED, what was written stays.

    A BaseException, like KeyboardInterrupt: the signal handler raises it wherever the process is, and inside a
    library call (MLflow's SQL session turns any Exception into an MlflowException) it must pass through
    unwrapped, or a kill during a metric write would look like a crash.
    """


@dataclass
class TrainData:
    spec: object
    train: object
    valid: object


def resolve_data_root(data_root: str) -> Path:
    """A relative data_root is relative to the project folder (the one holding MLproject), never the cwd."""
    path = Path(data_root).expanduser()
    return path if path.is_absolute() else (PROJECT_ROOT / path)


def load_train_data(params: dict) -> TrainData:
    spec = data_mod.dataset_spec(params["dataset"], resolve_data_root(params["data_root"]))
    train = data_mod.load_split(spec, "train", params["fold"], params["seq_len"])
    valid = data_mod.load_split(spec, "valid", params["fold"], params["seq_len"])
    return TrainData(spec, train, valid)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError(f"device={name!r}: CUDA is not available on this machine; use device cpu or auto")
    return torch.device(name)


def build_optimizer(model: torch.nn.Module, params: dict) -> torch.optim.Optimizer:
    """Adam or AdamW (params optimizer) with the run's learning_rate and weight_decay."""
    optim_cls = torch.optim.AdamW if params["optimizer"] == "AdamW" else torch.optim.Adam
    return optim_cls(model.parameters(), lr=params["learning_rate"], weight_decay=params["weight_decay"])


def seed_everything(params: dict, device: torch.device) -> dict:
    """Seed python, numpy and torch; switch on deterministic algorithms. Returns the facts to record."""
    seed = params["seed"]
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if params["deterministic"]:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    else:
        torch.use_deterministic_algorithms(False)
    return {"device": str(device), "torch_threads": torch.get_num_threads(),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG", "")}


def _autocast(params: dict, device: torch.device):
    if params["use_amp"]:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


def _progress(total: int, epoch: int, epochs: int):
    """A progress bar on stderr when it is a terminal; nothing otherwise (logs stay clean)."""
    enabled = sys.stderr.isatty()
    start = time.perf_counter()

    def update(done: int, loss: float) -> None:
        if not enabled:
            return
        width = 30
        filled = int(width * done / max(total, 1))
        rate = done / max(time.perf_counter() - start, 1e-9)
        sys.stderr.write(f"\repoch {epoch}/{epochs} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done}/{total} loss {loss:.4f} {rate:.1f} batch/s")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return update


def train_model(
    params: dict,
    sink,
    data: Optional[TrainData] = None,
    *,
    on_checkpoint: Optional[Callable[[bytes], None]] = None,
    on_epoch: Optional[Callable[[dict], None]] = None,
) -> dict:
    """Train with the full objective; log one metric dict per epoch to `sink`; return results.json's content.

    The best epoch (highest val AUC) is kept as a real copy of the weights and handed to `on_checkpoint`
    (bytes of a torch.save'd dict: state_dict, params, num_c, epoch, val_auc) the moment it is reached, so a
    kill later in training leaves the last best checkpoint intact.
    """
    device = resolve_device(params["device"])
    runtime = seed_everything(params, device)
    data = data or load_train_data(params)
    num_c = data.spec.num_c
    model = GainAKT3Exp.from_params(params, num_c).to(device)
    optimizer = build_optimizer(model, params)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=params["lr_plateau_factor"], patience=params["lr_plateau_patience"])
    objective = Objective(params)
    generator = torch.Generator().manual_seed(params["seed"])
    n_batches = math.ceil(len(data.train) / params["batch_size"])

    history: list[dict] = []
    rows: list[dict] = []
    best = {"val_auc": -math.inf, "epoch": 0}
    stale_epochs, global_step, stopped_early = 0, 0, False
    for epoch0 in range(params["epochs"]):
        epoch = epoch0 + 1
        start = time.perf_counter()
        objective.begin_epoch(epoch0)
        train_stats, global_step = _train_epoch(model, objective, optimizer, data.train, params, device,
                                                generator, sink, global_step, _progress(n_batches, epoch,
                                                                                        params["epochs"]))
        train_seconds = time.perf_counter() - start
        val, semantic, global_pass = validate_epoch(model, data.valid, params, device)
        shares = loss_shares(train_stats["means"])
        controls = objective.end_epoch(
            epoch0,
            mastery_correlation=_num(semantic.get("mastery_correlation")),
            global_mastery_corr=global_pass.get("global_alignment_mastery_corr"),
            mean_mastery_variance=_num(semantic.get("mean_mastery_variance")),
            alignment_share=shares["alignment"],
        )
        values = {
            **semantic, **global_pass, **controls,
            "alignment_corr_mastery": train_stats["last"].get("rho_m"),
            "alignment_corr_gain": train_stats["last"].get("rho_g"),
            "retention_loss_value": train_stats["means"].get("retention"),
            "mean_lag_corr": train_stats["lag_mean"],
            "lag_corr_count": train_stats["lag_count"],
            "per_lag_correlations": train_stats["per_lag"],
            "loss_shares": shares,
        }
        entry = trajectory_entry(epoch, values)
        lr = optimizer.param_groups[0]["lr"]
        epoch_seconds = time.perf_counter() - start
        train = {"loss": train_stats["means"]["total"], "auc": train_stats["auc"], "learning_rate": lr,
                 "epoch_seconds": epoch_seconds, "train_seconds": train_seconds,
                 "interactions_per_second": train_stats["interactions"] / max(train_seconds, 1e-9)}
        metrics = epoch_metric_dict(train, val, entry)
        sink.log_metrics(metrics, step=epoch)
        history.append(entry)
        rows.append({"epoch": epoch, **metrics})

        if val["auc"] > best["val_auc"]:
            best = {"val_auc": val["auc"], "val_accuracy": val["accuracy"], "epoch": epoch,
                    "mastery_correlation": entry.get("mastery_correlation"),
                    "gain_correlation": entry.get("gain_correlation")}
            stale_epochs = 0
            if on_checkpoint is not None:
                on_checkpoint(checkpoint_bytes(model, params, num_c, epoch, val["auc"]))
        else:
            stale_epochs += 1
        scheduler.step(val["auc"])
        if on_epoch is not None:
            on_epoch({"epoch": epoch, "metrics": metrics, "entry": entry})
        if stale_epochs >= params["patience"]:
            stopped_early = True
            break

    return {
        "params": params,
        "runtime": runtime,
        "num_c": num_c,
        "best_epoch": best["epoch"],
        "best_val_auc": best["val_auc"],
        "best": best,
        "last_epoch": history[-1]["epoch"] if history else 0,
        "stopped_early": stopped_early,
        "train_history": {"semantic_trajectory": history, "epochs": rows},
    }


def validate_epoch(model, valid, params: dict, device) -> tuple[dict, dict, dict]:
    """One model pass over the validation windows serves all three checks of an epoch: prediction (every
    window), the semantic correlations (the first max_semantic_students windows) and the global alignment pass
    (alignment_global_students windows stratified by length)."""
    out = collect_outputs(model, valid, np.arange(len(valid)), params["batch_size"], device)
    val = prediction_from_outputs(out, use_score_mask=False)
    semantic = semantic_from_outputs(select_rows(out, np.arange(min(params["max_semantic_students"], len(valid)))))
    global_pass = {}
    if params["enable_global_alignment_pass"]:
        rows = stratified_rows(valid.lengths, params["alignment_global_students"])
        global_pass = global_alignment_from_outputs(select_rows(out, rows))
    return val, semantic, global_pass


def _train_epoch(model, objective, optimizer, seqs, params, device, generator, sink, global_step, progress):
    """One pass over the shuffled training windows. Returns epoch statistics and the new global batch step."""
    model.train()
    sums: dict[str, float] = {}
    n, last = 0, {}
    lag_batches, lag_count, per_lag = 0, 0, {}
    probs, labels = [], []
    interactions = 0
    monitor = params["monitor_freq"]
    for batch in data_mod.iterate_batches(seqs, params["batch_size"], shuffle=True, generator=generator,
                                          device=device):
        with _autocast(params, device):
            out = model(batch.c, batch.r, batch.q)
            total, parts = objective(out, batch)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if params["gradient_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), params["gradient_clip"])
        optimizer.step()
        n += 1
        global_step += 1
        for key in _SUMMED_PARTS:
            sums[key] = sums.get(key, 0.0) + parts[key]
        last = parts
        if objective.lag_active:
            lag_batches += 1
            lag_count += int(parts["lag_count"])
            for key, value in parts.items():
                if key.startswith("lag_corr_l") and value == value:  # NaN = no valid row at that lag
                    per_lag.setdefault(key, []).append(value)
        with torch.no_grad():
            m = batch.mask
            probs.append(torch.sigmoid(out.logits.float())[m].cpu())
            labels.append(batch.y[m].cpu())
            interactions += int(m.sum())
        if monitor and global_step % monitor == 0:
            sink.log_metrics({"batch/loss": parts["total"], "batch/bce": parts["bce"]}, step=global_step)
        progress(n, parts["total"])
    means = {k: v / max(n, 1) for k, v in sums.items()}
    p, y = torch.cat(probs).numpy(), torch.cat(labels).numpy()
    per_lag_mean = [float(np.mean(per_lag[k])) if per_lag.get(k) else None
                    for k in (f"lag_corr_l{i}" for i in range(1, params["lag_max_lag"] + 1))] if lag_batches else []
    lag_mean = sums["lag_value"] / lag_batches if lag_batches else None
    return {"means": means, "last": last, "auc": roc_auc(y, p), "interactions": interactions,
            "per_lag": per_lag_mean, "lag_mean": lag_mean, "lag_count": lag_count}, global_step


_SUMMED_PARTS = ("bce", "non_negative", "monotonicity", "mastery_performance", "gain_performance", "sparsity",
                 "consistency", "constraint_total", "alignment", "lag", "lag_value", "retention", "total")


def checkpoint_bytes(model, params: dict, num_c: int, epoch: int, val_auc: float) -> bytes:
    """A real copy of the weights (not a reference to live tensors) with what is needed to rebuild the model."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "params": dict(params), "num_c": num_c, "epoch": epoch,
                "val_auc": float(val_auc)}, buffer)
    return buffer.getvalue()


def load_checkpoint(data: bytes) -> dict:
    """Load model_best.pth safely (weights_only: no pickled code runs)."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def metrics_csv(rows: list[dict]) -> str:
    keys = sorted({k for row in rows for k in row} - {"epoch"})
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["epoch"] + keys, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in ["epoch"] + keys})
    return out.getvalue()


def _num(value) -> float:
    return float("nan") if value is None else float(value)
