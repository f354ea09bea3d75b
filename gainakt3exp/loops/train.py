"""Training loop of GainAKT3Exp.

    results = train_model(params, MemorySink())        # params: a complete resolved parameter dict

`train_model` is pure training: it hands one dict of numbers per epoch to a sink (`sink.log_metrics(d, step)`)
and never imports mlflow or the service. service/training.py (behind the MLproject `main` entry point) wires it to
the MLflow run that `mlflow run` created (or a new one).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from gainakt3exp.config.choices import MAX_LAG
from gainakt3exp.data import sequences as data_mod
from gainakt3exp.data.registry import resolve_data_root
from gainakt3exp.loops.checkpoint import _num, checkpoint_bytes
from gainakt3exp.loops.collect import collect_outputs
from gainakt3exp.loops.runtime import _autocast, resolve_device, seed_everything
from gainakt3exp.metrics.stats import (
    global_alignment_from_outputs,
    mastery_auc_from_outputs,
    prediction_from_outputs,
    roc_auc,
    select_rows,
    semantic_from_outputs,
    stratified_rows,
    truth_from_outputs,
)
from gainakt3exp.metrics.trajectory import epoch_metric_dict, loss_shares, trajectory_entry
from gainakt3exp.model.network import GainAKT3Exp
from gainakt3exp.objective.controller import Objective


class Interrupted(BaseException):
    """SIGTERM during training: the run is marked KILLED, what was written stays.

    A BaseException, like KeyboardInterrupt: the signal handler raises it wherever the process is (in a store call,
    when that returns: tracking.interruptions), and inside a library call (MLflow's SQL session turns any Exception
    into an MlflowException) it must pass through unwrapped, or a kill would look like a crash.
    """


@dataclass
class TrainData:
    spec: object
    train: object
    valid: object


def load_train_data(params: dict) -> TrainData:
    spec = data_mod.dataset_spec(params["dataset"], resolve_data_root(params["data_root"]))
    train = data_mod.load_split(spec, "train", params["fold"], params["seq_len"])
    valid = data_mod.load_split(spec, "valid", params["fold"], params["seq_len"])
    return TrainData(spec, train, valid)


def build_optimizer(model: torch.nn.Module, params: dict) -> torch.optim.Optimizer:
    """Adam or AdamW (params optimizer) with the run's learning_rate and weight_decay."""
    optim_cls = torch.optim.AdamW if params["optimizer"] == "AdamW" else torch.optim.Adam
    return optim_cls(model.parameters(), lr=params["learning_rate"], weight_decay=params["weight_decay"])


def build_scheduler(optimizer: torch.optim.Optimizer, params: dict) -> Callable[[float], None]:
    """The epoch-level learning-rate schedule (params lr_schedule), as step(val_auc) to call after each epoch:
    plateau (the seed) lowers the rate by lr_plateau_factor after lr_plateau_patience epochs without a better val
    AUC; cosine sets it after epoch e to learning_rate * (1 + cos(pi e / epochs)) / 2, from learning_rate at the
    start to 0 after the last epoch."""
    if params["lr_schedule"] == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=params["lr_plateau_factor"], patience=params["lr_plateau_patience"]).step
    epochs = params["epochs"]
    cosine = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.5 * (1.0 + math.cos(math.pi * e / epochs)))
    return lambda _val_auc: cosine.step()


def _progress(total: int, epoch: int, epochs: int):
    """A progress bar on stderr when it is a terminal; nothing otherwise (logs stay clean)."""
    enabled = sys.stderr.isatty()
    start = time.perf_counter()

    def update(done: int, loss: Optional[float]) -> None:
        """loss: the last monitor_freq reading (None before the first; reading it every batch would sync)."""
        if not enabled:
            return
        width = 30
        filled = int(width * done / max(total, 1))
        rate = done / max(time.perf_counter() - start, 1e-9)
        shown = "-" if loss is None else f"{loss:.4f}"
        sys.stderr.write(f"\repoch {epoch}/{epochs} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done}/{total} loss {shown} {rate:.1f} batch/s")
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
    model = GainAKT3Exp.from_params(params, num_c, data.spec.num_q).to(device)
    optimizer = build_optimizer(model, params)
    step_lr = build_scheduler(optimizer, params)
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
        # train/loss is the per-step BCE, the quantity val/loss measures; train/objective the whole objective
        train = {"loss": train_stats["means"]["bce"], "objective": train_stats["means"]["total"],
                 "auc": train_stats["auc"], "learning_rate": lr,
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
        step_lr(val["auc"])
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
    """The checks of an epoch: prediction (every window) and the global alignment pass (alignment_global_students
    windows stratified by length) from one reduced model pass (per-step values, no (B, L, C) tensors); the
    semantic correlations and per-skill statistics (the first max_semantic_students windows) from a full pass
    over those windows only."""
    out = collect_outputs(model, valid, np.arange(len(valid)), params["batch_size"], device, per_skill=False)
    val = prediction_from_outputs(out, use_score_mask=False)
    n_semantic = min(params["max_semantic_students"], len(valid))
    truth = truth_from_outputs(out)  # every validation row: cheap per-step values
    heads = model.mastery_head is not None or model.gain_head is not None
    semantic = semantic_from_outputs(
        collect_outputs(model, valid, np.arange(n_semantic), params["batch_size"], device, logits=False) if heads
        else select_rows(out, np.arange(n_semantic)))
    semantic.update(truth)
    explained = mastery_auc_from_outputs(out, use_score_mask=False, students=valid.uids[out["rows"].numpy()])
    semantic.update({k: explained[k] for k in ("mastery_auc", "mastery_auc_within")})
    global_pass = {}
    if params["enable_global_alignment_pass"]:
        rows = stratified_rows(valid.lengths, params["alignment_global_students"])
        global_pass = global_alignment_from_outputs(select_rows(out, rows))
    return val, semantic, global_pass


def _train_epoch(model, objective, optimizer, seqs, params, device, generator, sink, global_step, progress):
    """One pass over the shuffled training windows. Returns epoch statistics and the new global batch step.

    Nothing is read back from the device inside the batch loop except the monitor_freq batch metrics: the loss
    parts are summed on the device, the train-AUC inputs kept there, and all of it read once after the loop.
    """
    model.train()
    keys = _SUMMED_PARTS
    sums = torch.zeros(len(keys), dtype=torch.float64, device=device)
    lag_sums = torch.zeros(MAX_LAG, dtype=torch.float64, device=device)  # per-lag sums of batch means (non-nan)
    lag_counts = torch.zeros(MAX_LAG, dtype=torch.float64, device=device)
    n, lag_batches, last = 0, 0, {}
    probs, labels, masks = [], [], []
    monitor = params["monitor_freq"]
    shown_loss = None
    for batch in data_mod.iterate_batches(seqs, params["batch_size"], shuffle=True, generator=generator,
                                          device=device):
        with _autocast(params, device):
            out = model(batch.c, batch.r, batch.q, **data_mod.question_inputs(batch), reduced=True)
            total, parts = objective(out, batch)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if params["gradient_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), params["gradient_clip"])
        optimizer.step()
        n += 1
        global_step += 1
        sums += torch.stack([parts[k] for k in keys[:-1]] + [batch.mask.sum()]).double()  # ..., cells
        last = parts
        if objective.lag_active and "per_lag" in parts:
            lag_batches += 1
            per_lag = parts["per_lag"].double()
            seen = ~torch.isnan(per_lag)
            k = per_lag.shape[0]
            lag_sums[:k] += torch.where(seen, per_lag, 0.0)
            lag_counts[:k] += seen
        with torch.no_grad():  # kept on the device, selected after the loop (a boolean index would sync)
            probs.append(torch.sigmoid(out.logits.detach().float()).reshape(-1))
            labels.append(batch.y.reshape(-1))
            masks.append(batch.mask.reshape(-1))
        if monitor and global_step % monitor == 0:  # the one read-back inside the loop, every monitor_freq batches
            loss, bce = (float(v) for v in torch.stack([parts["total"], parts["bce"]]).cpu())
            sink.log_metrics({"batch/loss": loss, "batch/bce": bce}, step=global_step)
            shown_loss = loss
        progress(n, shown_loss)
    values = sums.cpu().tolist()  # read once per epoch
    means = {k: v / max(n, 1) for k, v in zip(keys, values)}
    p, y = _auc_inputs(probs, labels, masks)
    lag_mean = means["lag_value"] if lag_batches else None
    per_lag_mean = []
    if lag_batches:
        got_sums, got_counts = lag_sums.cpu().tolist(), lag_counts.cpu().tolist()
        per_lag_mean = [got_sums[i] / got_counts[i] if got_counts[i] else None for i in range(params["lag_max_lag"])]
    last_values = {k: float(last[k]) for k in ("rho_m", "rho_g")} if last else {}
    return {"means": means, "last": last_values, "auc": roc_auc(y, p), "interactions": int(values[keys.index("cells")]),
            "per_lag": per_lag_mean, "lag_mean": lag_mean,
            "lag_count": int(round(values[keys.index("lag_count")]))}, global_step


def _auc_inputs(probs: list, labels: list, masks: list) -> tuple[np.ndarray, np.ndarray]:
    """The epoch's predictions and labels at valid steps, as numpy (one device-to-host copy per epoch)."""
    if not probs:
        return np.zeros(0), np.zeros(0)
    keep = torch.cat(masks)
    return torch.cat(probs)[keep].cpu().numpy(), torch.cat(labels)[keep].cpu().numpy()


#: Loss parts summed over an epoch's batches on the device; "cells" (the batch's valid steps) is added by the loop.
_SUMMED_PARTS = ("bce", "non_negative", "monotonicity", "mastery_performance", "gain_performance", "sparsity",
                 "consistency", "constraint_total", "alignment", "lag", "lag_value", "lag_count", "retention", "total",
                 "cells")
