"""Evaluation of a trained model on every split of its data set (the loop behind `gakt-eval`).

    results, pictures = evaluate_model(params, checkpoint, max_correlation_students=300, batch_size=64,
                                       device_name="cpu")
    results["test_window_auc"]

Pure evaluation: it never imports mlflow. service.evaluation.evaluate_run reads the checkpoint from a run, calls this, and
records the results in the run (metrics `eval/<split>_<name>`, eval_results.json, config_eval.json,
metrics_epoch_eval.csv) and draws the pictures (mastery_*.png, service/plots.py).
"""
from __future__ import annotations

import time
from typing import NamedTuple, Optional

from gainakt3exp.data import sequences as data_mod

PICTURE_STUDENTS = 4  # test students drawn in mastery_students.png


class Evaluation(NamedTuple):
    results: dict  # numbers only: logged as eval/* metrics and eval_results.json
    pictures: Optional[dict]  # arrays the mastery pictures draw (mastery_pictures); None without a mastery head


def evaluate_model(params: dict, checkpoint: dict, *, max_correlation_students: int, batch_size: int,
                   device_name: str) -> Evaluation:
    """AUC/accuracy on train, valid, test and the pyKT window test; true-mastery correlations (pooled and within
    students, data with a truth file) on every row of train, valid and test; mastery/gain correlations on the
    first max_correlation_students rows of train and test. Beside these results, the inputs of the mastery
    pictures from the test split (mastery_pictures), kept out of results, which holds numbers only."""
    import numpy as np
    import torch

    from gainakt3exp.data.registry import resolve_data_root
    from gainakt3exp.loops.collect import collect_outputs, semantic_metrics
    from gainakt3exp.loops.runtime import resolve_device
    from gainakt3exp.metrics.stats import mastery_auc_from_outputs, prediction_from_outputs, truth_from_outputs
    from gainakt3exp.model.network import GainAKT3Exp

    device = resolve_device(device_name)
    spec = data_mod.dataset_spec(params["dataset"], resolve_data_root(params["data_root"]))
    model = GainAKT3Exp.from_params(params, checkpoint["num_c"], checkpoint.get("num_q", 0)).to(device)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    results: dict = {"checkpoint_epoch": checkpoint["epoch"], "checkpoint_val_auc": checkpoint["val_auc"]}
    pictures = None
    start = time.perf_counter()
    with torch.no_grad():
        for split in ("train", "valid", "test", "test_window"):
            seqs = data_mod.load_split(spec, split, params["fold"], params["seq_len"])
            # one reduced pass over every row: logits and the per-step mastery the truth metrics read
            out = collect_outputs(model, seqs, np.arange(len(seqs)), batch_size, device, per_skill=False)
            if split == "test":
                pictures = mastery_pictures(model, seqs, out, device)
            pred = prediction_from_outputs(out, use_score_mask=split == "test_window")
            for key in ("auc", "accuracy", "loss", "n"):
                results[f"{split}_{key}"] = pred[key]
            explained = mastery_auc_from_outputs(out, use_score_mask=split == "test_window",
                                                 students=seqs.uids[out["rows"].numpy()])
            for key in ("mastery_auc", "mastery_auc_within"):
                results[f"{split}_{key}"] = explained[key]
            if split != "test_window":
                for key, value in truth_from_outputs(out).items():
                    results[f"{split}_{key}"] = value
            if split in ("train", "test"):
                sem = semantic_metrics(model, seqs, max_correlation_students, batch_size, device)
                for key in ("mastery_correlation", "gain_correlation", "target_mastery_correlation",
                            "correlation_students"):
                    results[f"{split}_{key}"] = sem.get(key)
        results.update(pykt_metrics(model, spec, results, batch_size, device))
    results["eval_seconds"] = time.perf_counter() - start
    return Evaluation(results, pictures)


def mastery_pictures(model, seqs, out: dict, device, n_students: int = PICTURE_STUDENTS) -> Optional[dict]:
    """What the mastery pictures draw, from one split (`seqs`) and its collected outputs (`out`, every row in file
    order, with interpretation); None when the model has no mastery head.

    - students: collect_students of the n_students rows of distinct students with the most valid steps
      (metrics.stats.longest_students: longest first, ties by row order), every skill's mastery at every step;
    - calibration: over every valid step (the steps of <split>_auc), mastery = m_t[c_{t+1}] (the mastery of the
      concept about to be answered), predicted = sigmoid(logit), y = r_{t+1};
    - truth (data with a truth file, else None): the first of those students with a finite truth: label, learned
      m_t[c_{t+1}], truth p*_t[c_{t+1}] (NaN where none) and y = r_{t+1} over its valid steps.
    """
    import numpy as np
    import torch

    from gainakt3exp.loops.collect import collect_students
    from gainakt3exp.metrics.stats import longest_students

    if out["target_mastery"] is None or getattr(model, "mastery_head", None) is None:
        return None
    rows = longest_students(seqs.lengths, seqs.uids, n_students)
    students = collect_students(model, seqs, rows, device)
    valid = out["mask"]
    calibration = {"mastery": out["target_mastery"][valid].double().numpy(),
                   "predicted": torch.sigmoid(out["logits"][valid].double()).numpy(),
                   "y": out["y"][valid].double().numpy()}
    truth = None
    if out["truth"] is not None:
        for student in students:
            row = student["row"]
            steps = out["mask"][row]
            if bool(torch.isfinite(out["truth"][row][steps]).any()):
                truth = {"label": student["label"], "learned": out["target_mastery"][row][steps].double().numpy(),
                         "truth": out["truth"][row][steps].double().numpy(),
                         "y": out["y"][row][steps].numpy().astype(np.int64)}
                break
    return {"students": students, "calibration": calibration, "truth": truth}


def pykt_metrics(model, spec, results: dict, batch_size: int, device) -> dict:
    """pyKT's evaluation under pyKT's names (evaluate_model.evaluate / evaluate_question, examples/wandb_predict):
    testauc/testacc and window_testauc/window_testacc (every scored concept step of test / test_window), and for a
    question-level data set, over the rows of its two question files, the concept predictions (oriaucconcepts
    ...) and their late fusion per answer: oriauclate_{mean,vote,all} (test_question_sequences.csv) and
    windowauclate_{mean,vote,all} (test_question_window_sequences.csv), with the acc twins. headline_auc is the
    metric pyKT reports as final: windowauclate_mean with questions, window_testauc without. Early fusion (a
    model head over the mean hidden state of an answer's steps) does not apply to this model's prediction head."""
    import numpy as np
    import torch

    from gainakt3exp.loops.collect import collect_outputs
    from gainakt3exp.metrics.stats import question_level_metrics

    out = {"testauc": results["test_auc"], "testacc": results["test_accuracy"],
           "window_testauc": results["test_window_auc"], "window_testacc": results["test_window_accuracy"]}
    if not spec.num_q:
        return {**out, "headline_auc": out["window_testauc"], "mastery_auc": results["test_window_mastery_auc"],
                "mastery_auc_within": results["test_window_mastery_auc_within"]}
    for split, prefix in (("question", "ori"), ("question_window", "window")):
        seqs = data_mod.load_question_split(spec, split)
        got = collect_outputs(model, seqs, np.arange(len(seqs)), batch_size, device, per_skill=False,
                              interpretation=split == "question_window")
        scored = got["score"].numpy()
        answer = seqs.qidxs[got["rows"].numpy()][:, 1:1 + scored.shape[1]][scored]  # targets are steps 1..
        p = torch.sigmoid(got["logits"].double()).numpy()[scored]
        y = got["y"].numpy()[scored]
        for key, value in question_level_metrics(p, y, answer).items():
            out[f"{prefix}{key}"] = value
        if split == "question_window":  # the mastery of an answer's question: the mean of its concepts' mastery
            students = np.broadcast_to(seqs.uids[got["rows"].numpy()].reshape(-1, 1), scored.shape)[scored]
            out.update(question_mastery_auc(got["target_mastery"], scored, y, answer, students))
    return {**out, "headline_auc": out["windowauclate_mean"]}


def question_mastery_auc(target_mastery, scored, y, answer, students) -> dict:
    """mastery_auc on the headline's answers (question window file): per answer, the mean of m_t[c] over its
    concepts (the mastery of a multi-concept question) against the answer's response, pooled and within students
    (metrics.stats.grouped_auc); None without a mastery head."""
    import numpy as np

    from gainakt3exp.metrics.stats import grouped_auc, roc_auc

    if target_mastery is None:
        return {"mastery_auc": None, "mastery_auc_within": None}
    m = target_mastery.double().numpy()[scored]
    groups, g = np.unique(answer, return_inverse=True)
    n = np.bincount(g).astype(np.float64)
    fused = np.bincount(g, weights=m) / n
    label = np.floor(np.bincount(g, weights=y) / n)  # the answer's response, as late_fusion takes it
    owner = np.zeros(len(groups), dtype=np.int64)
    owner[g] = students
    return {"mastery_auc": roc_auc(label, fused), "mastery_auc_within": grouped_auc(label, fused, owner)[0]}
