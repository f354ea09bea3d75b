"""Does the learned mastery mean what it claims? Trains on synthetic students with known mastery and measures it.

    .venv/bin/python benchmarks/interpretability.py                        # the acceptance configuration
    .venv/bin/python benchmarks/interpretability.py --profile quickstart --epochs 10      # a profile, 10 epochs
    .venv/bin/python benchmarks/interpretability.py --students 800 --skills 1200            # the many-skill preset
    .venv/bin/python benchmarks/interpretability.py --questions 200 --max_concepts 3       # multi-concept questions

The data: `gakt-data synth` students (--students, --skills, --seed), written to --data_root (a tmp folder by
default) as the built-in data set `synthetic` (<= 20 skills) or `synthetic_many` (<= 1,200). A run of
train.train_model with the defaults, then each --profile, then --epochs and each --override (the best epoch's
weights are measured). For the validation and test rows, against the true mastery p*_{t+1}[q_t] of the skill
about to be answered (the generator's law), four per-step quantities:
  mastery           the model's m_t[q_t]
  prediction        the model's P(correct) = sigmoid(z_t)
  practice_count    earlier attempts of q_t in the window (a counter: what "mastery grows with practice" gives free)
  running_accuracy  (correct + 1) / (attempts + 2) over the earlier attempts of q_t in the window
each with three statistics: pooled (Pearson over all valid steps), within (Pearson per row = student window,
averaged over rows where defined) and spearman (rank correlation, pooled). AUC of the model and of the oracle
(the true P(correct) = GUESS + (1 - GUESS - SLIP) p*; it knows each student's ability and learning rates) on the
same steps, `bayes_auc` (test): the Bayes-optimal prediction from the student's whole history given the law and
the skill difficulties (synthetic.bayes_predictive), and `window_bayes_auc` (test): the same from the scored window
alone (synthetic.window_bayes_predictive; a window that starts mid-history hides earlier practice), the best a model
that reads windows, as every model scored on these files does, can do on average.
With <= 100 skills, also every skill: m_t[k] vs p*_{t+1}[k] recomputed from the generator's seed
(truth_all_skills: pooled over (step, skill) cells, within per row, spearman).
A prediction baseline without a network, `feature_logistic_auc` (test): a logistic regression fitted on the
training rows from counts a student's window shows before each step (attempts, correct and wrong answers of the
skill, overall accuracy and attempts, the skill itself). The oracle knows each student's true mastery; a model
must infer it from the window, and this baseline says how much of the gap a simple well-specified predictor closes.
With --questions Q --max_concepts K: question-level students (synthetic.simulate_questions, the built-in set
synthetic_questions: each question tagged with 1..K concepts, answered by the product of its concepts' true
mastery); a question with k concepts is k steps, and the four sources are compared per step with the true mastery
of that step's concept (responses of an answer hidden from its own steps, so none of them reads its label). The
oracle, Bayes, all-skill and count-regression references follow the concept-level law and are left out (null).
Prints one JSON line: `auc`, `oracle_auc`, `bayes_auc`, `window_bayes_auc` (test), `truth.<source>.<split>.<stat>`,
`truth_all_skills.<split>.<stat>`, the parameters and timings.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import Bench, Timer, emit, machine_cores, parse_overrides, peak_rss_kib, run
from scipy import sparse
from scipy.stats import spearmanr

from gainakt3exp.config.params import resolve_params
from gainakt3exp.data import sequences as data_mod
from gainakt3exp.data import synthetic
from gainakt3exp.data.layout import split_windows
from gainakt3exp.loops import collect
from gainakt3exp.loops.checkpoint import load_checkpoint
from gainakt3exp.loops.runtime import resolve_device
from gainakt3exp.loops.sink import MemorySink
from gainakt3exp.loops.train import load_train_data, train_model
from gainakt3exp.metrics import stats
from gainakt3exp.model.network import GainAKT3Exp

#: The acceptance configuration of the issue: 1000 students x 20 skills, seed 7, the tuned CPU profile.
ACCEPTANCE = {"students": 1000, "skills": 20, "seed": 7, "profile": ["cpu-tuned"]}
SOURCES = ("mastery", "prediction", "practice_count", "running_accuracy")
MAX_ALL_SKILLS = 100


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=ACCEPTANCE["students"],
                        help=f"synthetic students (default {ACCEPTANCE['students']}; the many-skill preset: 800)")
    parser.add_argument("--skills", type=int, default=ACCEPTANCE["skills"],
                        help=f"skills (default {ACCEPTANCE['skills']}; up to 20: data set synthetic, 21 to 1,200: synthetic_many)")
    parser.add_argument("--seed", type=int, default=ACCEPTANCE["seed"], help="seed of the synthetic students")
    parser.add_argument("--profile", action="append", default=None, metavar="NAME",
                        help=f"parameter profile (repeatable; default {ACCEPTANCE['profile']})")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: the profile's)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="parameter override (repeatable), applied after the profiles and --epochs")
    parser.add_argument("--questions", type=int, default=0,
                        help="question-level students over this many questions (<= 200; 0: concept-level)")
    parser.add_argument("--max_concepts", type=int, default=3, help="with --questions: concepts per question, 1..this")
    parser.add_argument("--data_root", default=None, help="where to write the students (default: a tmp folder)")
    parser.add_argument("--threads", type=int, default=machine_cores(),
                        help="torch intra-op CPU threads (default: the cores this process may use)")
    return parser.parse_args(argv)


def dataset_for(skills: int) -> str:
    if skills <= 20:
        return "synthetic"
    if skills <= 1200:
        return "synthetic_many"
    raise SystemExit(f"--skills {skills}: the built-in synthetic data sets hold at most 1,200 skills")


def skill_counts(seqs, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Earlier attempts and earlier correct answers of q_t = c_{t+1} in the window's steps 0..t, (rows, width)."""
    c, r = seqs.concepts, seqs.responses
    n, w = c.shape
    steps = min(width, w - 1)
    count = np.zeros((n, steps))
    correct = np.zeros((n, steps))
    earlier = np.tri(steps, dtype=bool)  # [t, tau]: tau <= t
    for lo in range(0, n, 256):  # (256, L, L) booleans at a time
        cc, rr, q = c[lo:lo + 256, :steps], r[lo:lo + 256, :steps], c[lo:lo + 256, 1:steps + 1]
        same = (cc[:, None, :] == q[:, :, None]) & earlier & (q[:, :, None] != -1)  # (rows, t, tau)
        count[lo:lo + 256] = same.sum(-1)
        correct[lo:lo + 256] = (same & (rr[:, None, :] == 1)).sum(-1)
    return count, correct


def baselines(seqs, width: int) -> dict[str, np.ndarray]:
    """practice_count and running_accuracy of q_t = c_{t+1} from the window's steps 0..t, (rows, width)."""
    count, correct = skill_counts(seqs, width)
    return {"practice_count": count, "running_accuracy": (correct + 1.0) / (count + 2.0)}


def count_features(seqs, num_c: int):
    """Per step t (predicting step t+1): the counts of the window's steps 0..t as a sparse design matrix (the
    skill's attempts, right and wrong answers, overall accuracy and attempts, the skill one-hot), y."""
    c, r = seqs.concepts, seqs.responses
    width = c.shape[1]
    attempts, right = skill_counts(seqs, width)
    valid = (c != -1)[:, :width - 1]
    seen = np.cumsum(valid, axis=1)
    correct_all = np.cumsum(valid & (r[:, :width - 1] == 1), axis=1)
    q, y = c[:, 1:], r[:, 1:]
    mask = q != -1
    dense = np.stack([np.log1p(attempts), np.log1p(right), np.log1p(attempts - right),
                      (correct_all + 1.0) / (seen + 2.0), np.log1p(seen)], axis=-1)[mask]
    n = int(mask.sum())
    skills = sparse.csr_matrix((np.ones(n), (np.arange(n), q[mask])), shape=(n, num_c))
    return sparse.hstack([sparse.csr_matrix(dense), skills]).tocsr(), y[mask]


def feature_logistic_auc(train, test, num_c: int) -> float:
    """Test AUC of a logistic regression fitted on the training rows' count features."""
    from sklearn.linear_model import LogisticRegression

    x_train, y_train = count_features(train, num_c)
    x_test, y_test = count_features(test, num_c)
    fit = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    return stats.roc_auc(y_test, fit.predict_proba(x_test)[:, 1])


def bayes_auc(sim: dict, ids: np.ndarray, maxlen: int, oracle_auc: float,
              reference_ids: np.ndarray) -> tuple[float, float]:
    """Test AUC of the two Bayes predictors over the steps the model is scored on: steps 1..n-1 of each window of
    test_sequences.csv. synthetic.bayes_predictive (knows the law and the skill difficulties, infers the student)
    gives a window that starts mid-history the earlier history too, so it bounds a window-reading model from above;
    synthetic.window_bayes_predictive reads the window only (the earlier practice of a continued window unknown,
    with priors from the windows of `reference_ids`, the training students): the best a model of the window can do.
    The oracle AUC recomputed on the same steps must equal the measured one: a check that the steps are the same."""
    pred = synthetic.bayes_predictive(sim, ids)
    steps = synthetic.student_steps(sim, ids)
    lengths = sim["lengths"][ids]
    student, start, length = split_windows(lengths, maxlen, synthetic.MIN_SEQ_LEN)
    first = np.cumsum(lengths) - lengths
    scored = np.concatenate([first[s] + s0 + np.arange(1, n) for s, s0, n in zip(student, start, length)])
    y = sim["response"][steps][scored]
    oracle = np.rint(sim["mastery"][steps][scored] * 10000)  # as the truth files hold it (4 decimals)
    if abs(stats.roc_auc(y, oracle) - oracle_auc) > 1e-9:
        raise SystemExit(f"bayes_auc: the oracle on its steps is {stats.roc_auc(y, oracle):.6f}, the measured "
                         f"oracle_auc {oracle_auc:.6f}: the steps differ")
    window = synthetic.window_bayes_predictive(sim, ids, maxlen, synthetic.window_priors(sim, reference_ids, maxlen))
    in_window = np.concatenate([o + np.arange(1, n) for o, n in zip(np.cumsum(length) - length, length)])
    return stats.roc_auc(y, pred[scored]), stats.roc_auc(y, window[in_window])


def _stats(x: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> dict:
    ok = mask & torch.isfinite(truth) & torch.isfinite(x)
    pooled, _ = stats.masked_row_pearson(x.reshape(1, -1), truth.reshape(1, -1), ok.reshape(1, -1))
    corr, valid = stats.masked_row_pearson(x, truth, ok)
    xs, ts = x[ok].double().numpy(), truth[ok].double().numpy()
    return {"pooled": float(pooled[0]), "within": float(corr[valid].mean()) if bool(valid.any()) else None,
            "spearman": float(spearmanr(xs, ts).statistic), "within_rows": int(valid.sum()), "steps": int(ok.sum())}


def measure_split(model, seqs, params, device) -> dict:
    """Truth statistics of the four sources, model and oracle AUC over the split's valid steps."""
    rows = np.arange(len(seqs))
    out = collect.collect_outputs(model, seqs, rows, params["batch_size"], device, per_skill=False)
    mask, truth, width = out["mask"], out["truth"], out["mask"].shape[1]
    sources = {"mastery": out["target_mastery"], "prediction": torch.sigmoid(out["logits"])}
    sources.update({k: torch.from_numpy(v[:, :width]).float() for k, v in baselines(seqs, width).items()})
    y = out["y"][mask].numpy()
    result = {"truth": {name: _stats(x, truth, mask) for name, x in sources.items() if x is not None},
              "auc": stats.roc_auc(y, torch.sigmoid(out["logits"])[mask].numpy()),
              "oracle_auc": stats.roc_auc(y[np.isfinite(truth[mask].numpy())],
                                            truth[mask].numpy()[np.isfinite(truth[mask].numpy())])}
    return result


def measure_all_skills(model, seqs, every: np.ndarray, params, device) -> dict:
    """m_t[k] vs p*_{t+1}[k] for every skill k, per batch of rows (full mastery (B, L, C) of a batch only)."""
    xs, ts, within = [], [], []
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(seqs), params["batch_size"]):
            rows = np.arange(lo, min(lo + params["batch_size"], len(seqs)))
            b = data_mod.make_batch(seqs, rows, device)
            m = model(b.c, b.r, b.q).mastery.float()  # (B, L, C)
            p = torch.from_numpy(every[rows, 1:m.shape[1] + 1, : m.shape[2]])  # p*_{t+1}[k]
            ok = (b.mask.unsqueeze(-1) & torch.isfinite(p)).reshape(len(rows), -1)
            corr, valid = stats.masked_row_pearson(m.reshape(len(rows), -1), p.reshape(len(rows), -1), ok)
            within.append(corr[valid])
            xs.append(m.reshape(len(rows), -1)[ok])
            ts.append(p.reshape(len(rows), -1)[ok])
    x, t = torch.cat(xs), torch.cat(ts)
    pooled, _ = stats.masked_row_pearson(x.reshape(1, -1), t.reshape(1, -1), torch.ones(1, x.numel(), dtype=bool))
    w = torch.cat(within)
    return {"pooled": float(pooled[0]), "within": float(w.mean()) if w.numel() else None,
            "spearman": float(spearmanr(x.double().numpy(), t.double().numpy()).statistic), "cells": int(x.numel())}


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    profiles = args.profile if args.profile is not None else ACCEPTANCE["profile"]
    dataset = dataset_for(args.skills)
    if args.questions:
        if args.skills > 20 or args.questions > 200 or args.max_concepts > 3:
            raise SystemExit("--questions: the built-in synthetic_questions holds at most 20 skills, 200 questions, 3 "
                             "concepts per question")
        dataset = "synthetic_questions"
    tmp = None if args.data_root else Path(tempfile.mkdtemp(prefix="gakt-interp-"))
    root = Path(args.data_root) if args.data_root else tmp
    try:
        overrides = {"dataset": dataset, "data_root": str(root.resolve()), **parse_overrides(args.override)}
        if args.epochs is not None:
            overrides["epochs"] = args.epochs
        resolved = resolve_params(overrides, profiles, check=False)  # the data set is written below
        params = resolved.params
        with Timer() as gen_t:
            if args.questions:
                info = synthetic.generate_synthetic_questions(
                    root / dataset, students=args.students, skills=args.skills, seed=args.seed,
                    maxlen=params["seq_len"], questions=args.questions, max_concepts=args.max_concepts)
            else:
                info = synthetic.generate_synthetic(root / dataset, students=args.students, skills=args.skills,
                                                    seed=args.seed, maxlen=params["seq_len"])
        resolve_params(overrides, profiles)  # now every check, the data set's included
        device = resolve_device(params["device"])
        best = {}
        with Timer() as train_t:
            results = train_model(params, MemorySink(), load_train_data(params),
                                  on_checkpoint=lambda blob: best.update(blob=blob))
        checkpoint = load_checkpoint(best["blob"])
        model = GainAKT3Exp.from_params(params, checkpoint["num_c"], checkpoint.get("num_q", 0)).to(device)
        model.load_state_dict(checkpoint["state_dict"])
        spec = data_mod.dataset_spec(dataset, root)
        splits = {s: data_mod.load_split(spec, s, params["fold"], params["seq_len"]) for s in ("valid", "test")}
        with Timer() as measure_t:
            measured = {s: measure_split(model, seqs, params, device) for s, seqs in splits.items()}
            if args.questions:  # the references follow the concept-level law
                for m in measured.values():
                    m["oracle_auc"] = None
                logistic = bayes = window_bayes = None
                every = {}
            else:
                logistic, bayes, window_bayes, every = concept_references(args, model, spec, splits, measured, params,
                                                                          device)
        flat = {"auc": measured["test"]["auc"], "oracle_auc": measured["test"]["oracle_auc"],
                "feature_logistic_auc": logistic, "bayes_auc": bayes, "window_bayes_auc": window_bayes,
                "valid_auc": measured["valid"]["auc"], "valid_oracle_auc": measured["valid"]["oracle_auc"]}
        for split, m in measured.items():
            for source, stats in m["truth"].items():
                for stat in ("pooled", "within", "spearman"):
                    flat[f"truth.{source}.{split}.{stat}"] = stats[stat]
        for split, stats in every.items():
            for stat in ("pooled", "within", "spearman"):
                flat[f"truth_all_skills.{split}.{stat}"] = stats[stat]
        bench = Bench(params=params, overrides=resolved.overrides, profiles=list(profiles), settings=vars(args))
        emit("interpretability", bench, {
            "train_seconds": train_t.wall, "generate_seconds": gen_t.wall, "measure_seconds": measure_t.wall,
            "best_epoch": results["best_epoch"], "epochs_run": results["last_epoch"],
            "best_val_auc": results["best_val_auc"],
            "val_auc_by_epoch": [row.get("val/auc") for row in results["train_history"]["epochs"]],
            "epoch_seconds": [row.get("train/epoch_seconds") for row in results["train_history"]["epochs"]],
            "data": {k: info[k] for k in ("students", "skills", "seed", "interactions", "questions",
                                          "max_concepts", "answers") if k in info},
            "measured": measured, "all_skills": every, "peak_rss_mib": peak_rss_kib() / 1024,
            **{k: v for k, v in flat.items() if k in ("auc", "oracle_auc", "feature_logistic_auc", "bayes_auc",
                                                     "window_bayes_auc")}},
            flat)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def concept_references(args, model, spec, splits: dict, measured: dict, params: dict, device) -> tuple:
    """The references of concept-level students: feature_logistic_auc, bayes_auc, window_bayes_auc (test) and
    the every-skill truth statistics (<= MAX_ALL_SKILLS skills, with a mastery head)."""
    logistic = feature_logistic_auc(data_mod.load_split(spec, "train", params["fold"], params["seq_len"]),
                                    splits["test"], spec.num_c)
    sim = synthetic.simulate_students(args.students, args.skills, args.seed)
    groups = synthetic.split_students(args.students, args.seed)
    bayes, window_bayes = bayes_auc(sim, groups["test"], params["seq_len"], measured["test"]["oracle_auc"],
                                    groups["train_valid"])
    every = {}
    if args.skills <= MAX_ALL_SKILLS and model.mastery_head is not None:
        valid_rows = _fold_rows(spec, params)
        truth_tv = synthetic.all_skill_truth(sim, groups["train_valid"], params["seq_len"])
        every = {"valid": measure_all_skills(model, splits["valid"], truth_tv[valid_rows], params, device),
                 "test": measure_all_skills(model, splits["test"],
                                            synthetic.all_skill_truth(sim, groups["test"], params["seq_len"]),
                                            params, device)}
    return logistic, bayes, window_bayes, every


def _fold_rows(spec, params) -> np.ndarray:
    """Rows of train_valid_sequences.csv that form the validation split (fold == params['fold']), in file order."""
    lines = (spec.root / spec.train_valid_file).read_text().splitlines()[1:]
    folds = np.array([int(line.split(",", 1)[0]) for line in lines if line])
    return np.flatnonzero(folds == params["fold"])


if __name__ == "__main__":
    run(main)
