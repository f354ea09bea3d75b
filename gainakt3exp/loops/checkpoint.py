"""Checkpoints and the per-epoch CSV: model_best.pth as bytes (weights plus what rebuilds the model), loaded with
weights_only so no pickled code runs; metrics_epoch.csv from the epochs' rows."""
from __future__ import annotations

import csv
import io

import torch


def checkpoint_bytes(model, params: dict, num_c: int, epoch: int, val_auc: float) -> bytes:
    """A real copy of the weights (not a reference to live tensors) with what is needed to rebuild the model."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    num_q = {"num_q": model.num_q} if getattr(model, "num_q", 0) else {}  # question-level data only
    return dump_checkpoint({"state_dict": state, "params": dict(params), "num_c": num_c, **num_q, "epoch": epoch,
                            "val_auc": float(val_auc)})


def dump_checkpoint(checkpoint: dict) -> bytes:
    """A checkpoint dict as model_best.pth bytes (what load_checkpoint reads back)."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
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
