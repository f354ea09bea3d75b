"""Evaluation of a trained model on every split of its data set (the loop behind `gakt-eval`).

    results = evaluate_model(params, checkpoint, max_correlation_students=300, batch_size=64, device_name="cpu")
    results["test_window_auc"]

Pure evaluation: it never imports mlflow. service.evaluation.evaluate_run reads the checkpoint from a run, calls this, and
records the results in the run (metrics `eval/<split>_<name>`, eval_results.json, config_eval.json,
metrics_epoch_eval.csv).
"""
from __future__ import annotations

import time

from gainakt3exp.data import sequences as data_mod


def evaluate_model(params: dict, checkpoint: dict, *, max_correlation_students: int, batch_size: int,
                   device_name: str) -> dict:
    """AUC/accuracy on train, valid, test and the pyKT window test; true-mastery correlations (pooled and within
    students, data with a truth file) on every row of train, valid and test; mastery/gain correlations on the
    first max_correlation_students rows of train and test."""
    import numpy as np
    import torch

    from gainakt3exp.data.registry import resolve_data_root
    from gainakt3exp.loops.collect import collect_outputs, semantic_metrics
    from gainakt3exp.loops.runtime import resolve_device
    from gainakt3exp.metrics.stats import prediction_from_outputs, truth_from_outputs
    from gainakt3exp.model.network import GainAKT3Exp

    device = resolve_device(device_name)
    spec = data_mod.dataset_spec(params["dataset"], resolve_data_root(params["data_root"]))
    model = GainAKT3Exp.from_params(params, checkpoint["num_c"]).to(device)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    results: dict = {"checkpoint_epoch": checkpoint["epoch"], "checkpoint_val_auc": checkpoint["val_auc"]}
    start = time.perf_counter()
    with torch.no_grad():
        for split in ("train", "valid", "test", "test_window"):
            seqs = data_mod.load_split(spec, split, params["fold"], params["seq_len"])
            # one reduced pass over every row: logits and the per-step mastery the truth metrics read
            out = collect_outputs(model, seqs, np.arange(len(seqs)), batch_size, device, per_skill=False,
                                  interpretation=split != "test_window")
            pred = prediction_from_outputs(out, use_score_mask=split == "test_window")
            for key in ("auc", "accuracy", "loss", "n"):
                results[f"{split}_{key}"] = pred[key]
            if split != "test_window":
                for key, value in truth_from_outputs(out).items():
                    results[f"{split}_{key}"] = value
            if split in ("train", "test"):
                sem = semantic_metrics(model, seqs, max_correlation_students, batch_size, device)
                for key in ("mastery_correlation", "gain_correlation", "target_mastery_correlation",
                            "correlation_students"):
                    results[f"{split}_{key}"] = sem.get(key)
    results["eval_seconds"] = time.perf_counter() - start
    return results
