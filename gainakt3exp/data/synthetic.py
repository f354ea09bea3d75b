"""Simulated students whose per-skill mastery grows with practice by a known law, written in pyKT layout.

    gakt-data synth --out data/synthetic --students 1000 --skills 20 --seed 7

The law (constants below, all recorded in synthetic.json):
- student ability a_s ~ N(0, 1); skill difficulty d_k ~ N(0, 1);
  learning rate of student s on skill k: lambda_sk = RATE_MEDIAN * exp(RATE_SIGMA * N(0, 1)).
- history length n_s = round(exp(U(log LENGTH_MIN, log LENGTH_MAX))) steps (so some histories exceed maxlen and
  span several windows); students practise skills in blocks like skill builders: each step starts a new block with
  probability 1 / BLOCK_MEAN (the first step always does), a block's skill is uniform over the K skills.
- true mastery of the practised skill k before the step, after n_sk earlier practices of k:
      p = sigmoid(a_s - d_k + BASE_LOGIT + lambda_sk * n_sk)
- response ~ Bernoulli(GUESS + (1 - GUESS - SLIP) * p).
All draws come from numpy's default_rng(seed) in a fixed order, so one seed gives byte-identical files.

With questions (`gakt-data synth --questions Q --max_concepts K`, simulate_questions): a Q-matrix tags each
question with 1..K distinct concepts (k uniform, concepts uniform), and each question has its own difficulty
b_q ~ N(0, 1). A block picks a concept; each answer of the block picks a question tagged with it. Each concept c
of the question has the true mastery p_c above (its n_sc counts the earlier answers that practised c), and
      P(correct) = GUESS + (1 - GUESS - SLIP) * sigmoid(QUESTION_BASE - b_q) * prod_{c in q} p_c
(every concept of the question is needed). The files are pyKT's question-level layout (a question with k concepts
is k steps with is_repeat, questions and is_repeat columns, train_valid.csv, test.csv and the question test files),
and the truth of each step is p_c of its concept before the answer.

Files (pyKT layout, see gainakt3exp.data): 80% of students (in a seeded random order) go to
train_valid_sequences.csv with folds 0..4 round-robin, 20% to test_sequences.csv and test_window_sequences.csv.
The true mastery p of each step is written row for row beside them: true_mastery_sequences.csv (rows of
train_valid_sequences.csv), test_true_mastery_sequences.csv, test_window_true_mastery_sequences.csv
(columns fold,uid,mastery; -1 padded; 4 decimals), plus synthetic.json (law, seed, counts).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gainakt3exp.data.layout import (
    gather_windows,
    sliding_windows,
    split_windows,
    window_selectmasks,
    write_sequence_csv,
)
from gainakt3exp.data.sequences import REQUIRED_COLUMNS, truth_file_name
from gainakt3exp.errors import ConfigError
from gainakt3exp.files import write_bytes_atomic

GUESS = 0.1
SLIP = 0.1
BASE_LOGIT = -1.0
RATE_MEDIAN = 0.3
RATE_SIGMA = 0.5
LENGTH_MIN = 5
LENGTH_MAX = 400
BLOCK_MEAN = 6.0
TEST_SHARE = 0.2
N_FOLDS = 5
MIN_SEQ_LEN = 3  # pyKT's: a window remainder shorter than this is dropped
TRAIN_VALID_FILE = "train_valid_sequences.csv"
TEST_FILE = "test_sequences.csv"
TEST_WINDOW_FILE = "test_window_sequences.csv"
TRUTH_FILE = "true_mastery_sequences.csv"
QUESTION_BASE = 2.0  # sigmoid(2 - b_q): a question of average difficulty is solvable 88% of the time by a master


def simulate_students(students: int, skills: int, seed: int) -> dict:
    """Draw histories by the module's law. Flat per-step arrays in student order (students back to back):
    student, skill, practice (n_sk, earlier practices of that skill), mastery (p before answering), response;
    and per student: lengths."""
    rng = np.random.default_rng(seed)
    ability = rng.normal(size=students)
    difficulty = rng.normal(size=skills)
    rate = RATE_MEDIAN * np.exp(RATE_SIGMA * rng.normal(size=(students, skills)))
    lengths = np.rint(np.exp(rng.uniform(np.log(LENGTH_MIN), np.log(LENGTH_MAX), size=students))).astype(np.int64)
    student = np.repeat(np.arange(students), lengths)
    first = np.zeros(len(student), dtype=bool)
    first[np.cumsum(lengths) - lengths] = True
    new_block = first | (rng.random(len(student)) < 1.0 / BLOCK_MEAN)
    block = np.cumsum(new_block) - 1
    skill = rng.integers(skills, size=int(new_block.sum()))[block]
    # n_sk: rank of each step among the earlier steps with the same (student, skill)
    key = student * skills + skill
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    group_start = np.r_[0, np.flatnonzero(sorted_key[1:] != sorted_key[:-1]) + 1]
    rank = np.arange(len(key)) - np.repeat(group_start, np.diff(np.r_[group_start, len(key)]))
    practice = np.empty_like(rank)
    practice[order] = rank
    logit = ability[student] - difficulty[skill] + BASE_LOGIT + rate[student, skill] * practice
    mastery = 1.0 / (1.0 + np.exp(-logit))
    response = (rng.random(len(student)) < GUESS + (1 - GUESS - SLIP) * mastery).astype(np.int64)
    return {"student": student, "skill": skill, "practice": practice, "mastery": mastery,
            "response": response, "lengths": lengths, "ability": ability, "difficulty": difficulty, "rate": rate}


def split_students(students: int, seed: int) -> dict[str, np.ndarray]:
    """Which simulated students go to train_valid_sequences.csv and to the test files, in file order."""
    rng = np.random.default_rng([seed, 1])  # the split, independent of the simulation draws
    perm = rng.permutation(students)
    n_test = int(round(TEST_SHARE * students))
    return {"train_valid": perm[n_test:], "test": perm[:n_test]}


def student_steps(sim: dict, ids: np.ndarray) -> np.ndarray:
    """Indices into the flat per-step arrays of `sim` of the steps of students `ids`, back to back in that order."""
    lengths = sim["lengths"][ids]
    offsets_all = np.cumsum(sim["lengths"]) - sim["lengths"]
    return np.arange(int(lengths.sum())) + np.repeat(offsets_all[ids] - (np.cumsum(lengths) - lengths), lengths)


def all_skill_truth(sim: dict, ids: np.ndarray, maxlen: int) -> np.ndarray:
    """True mastery of every skill before each step, p*_t[k], for the rows split_windows makes of students `ids`
    (the rows of train_valid_sequences.csv or test_sequences.csv): (rows, maxlen, K) float32, NaN at padding.

    p*_t[k] = sigmoid(a_s - d_k + BASE_LOGIT + lambda_sk * n_sk(t)), n_sk(t) = practices of k before step t of the
    student's whole history (a window may start mid-history). Memory is rows x maxlen x K: for small K.
    """
    lengths = sim["lengths"][ids]
    steps = student_steps(sim, ids)
    sid = sim["student"][steps]
    k = len(sim["difficulty"])
    onehot = np.zeros((len(steps), k))
    onehot[np.arange(len(steps)), sim["skill"][steps]] = 1.0
    seen = np.cumsum(onehot, 0) - onehot  # practices before the step, counted from the group's first step ...
    first = np.cumsum(lengths) - lengths
    seen -= np.repeat(seen[first], lengths, axis=0)  # ... minus those of earlier students
    p = 1.0 / (1.0 + np.exp(-(sim["ability"][sid, None] - sim["difficulty"] + BASE_LOGIT + sim["rate"][sid] * seen)))
    student, start, length = split_windows(lengths, maxlen, MIN_SEQ_LEN)
    idx = (first[student] + start)[:, None] + np.arange(maxlen)
    valid = np.arange(maxlen) < length[:, None]
    out = np.where(valid[..., None], p[np.minimum(idx, len(p) - 1)], np.nan).astype(np.float32)
    return out


def bayes_predictive(sim: dict, ids: np.ndarray, ability_points: int = 81, rate_points: int = 49) -> np.ndarray:
    """P(correct) of each step given the student's earlier steps, for students `ids` back to back: the Bayes-optimal
    prediction of someone who knows the law, the skill difficulties d_k and the population distributions, but not
    the student's ability a_s nor the rates lambda_sk. The best any model of the history can do on average, where
    the oracle (the true P(correct)) also knows a_s and lambda_sk, which a short history reveals only in part.

    The posterior of (a_s, lambda_s1..lambda_sK) is kept on a grid: a_s at `ability_points` points over [-4.5, 4.5]
    weighted by N(0, 1), each lambda_sk at `rate_points` equal-weight quantiles of its log-normal. Given a_s the rates
    are independent, so each skill keeps the log-likelihood of its own responses on the (a, lambda) grid and the
    ability posterior multiplies their lambda-averages. About 4 s for 200 students x 20 skills.
    """
    grid = _posterior_grid(ability_points, rate_points)
    offsets = np.cumsum(sim["lengths"]) - sim["lengths"]
    out = [_history_predictive(sim["skill"][lo:lo + n], sim["response"][lo:lo + n], sim["difficulty"], grid)
           for lo, n in zip(offsets[ids], sim["lengths"][ids])]
    return np.concatenate(out) if out else np.zeros(0)


def window_priors(sim: dict, ids: np.ndarray, maxlen: int) -> dict:
    """What the windows (split_windows rows) of students `ids` say about windows that start mid-history, for
    window_bayes_predictive: `earlier` (E,) and `log_p_earlier` (E,), the distribution of a skill's practices before
    such a window (pooled over windows and skills), and `continued` (maxlen,), P(a window starts mid-history | it
    has at least t + 1 steps) for t = 0..maxlen-1 (a causal model reading step t knows no more of the length)."""
    at, start, length = _windows(sim, ids, maxlen)
    k_all = len(sim["difficulty"])
    mid = np.flatnonzero(start > 0)
    counts = [np.bincount(sim["skill"][w0 - s0:w0], minlength=k_all) for w0, s0 in zip(at[mid], start[mid])]
    hist = np.bincount(np.concatenate(counts)) if counts else np.zeros(0, dtype=np.int64)
    earlier = np.flatnonzero(hist)
    at_least = (length[:, None] > np.arange(maxlen)).astype(np.float64)  # (windows, maxlen): has step t
    continued = (at_least[mid].sum(0) / np.maximum(at_least.sum(0), 1.0))
    return {"earlier": earlier.astype(np.float64), "log_p_earlier": np.log(hist[earlier] / hist.sum()),
            "continued": continued}


def window_bayes_predictive(sim: dict, ids: np.ndarray, maxlen: int, priors: dict, ability_points: int = 61,
                            rate_points: int = 25) -> np.ndarray:
    """P(correct) of each step of each window of students `ids` (the rows split_windows makes: test_sequences.csv)
    given the window's earlier steps only: the Bayes-optimal prediction of a model that reads a window, as every
    model scored on these files does. Steps of the windows back to back.

    bayes_predictive knows each student's whole history; a window that starts mid-history (a student with more
    than maxlen steps) hides the earlier practice, which the law counts (n_sk). Here that window's skills start
    from unknown earlier practice counts with the prior `priors` (window_priors of other students: independent
    across skills, which ignores that they sum to the window's start), and whether a window continues a history is
    unknown too: the prediction mixes the two hypotheses (a whole history, or a continuation) by their posterior,
    from the prior P(continued | at least t + 1 steps) and the likelihood of the window's steps so far. About 15 s
    for 200 students x 20 skills at the default grid (61 x 25; see bayes_predictive).
    """
    grid = _posterior_grid(ability_points, rate_points)
    out = []
    for w0, n in zip(*_windows(sim, ids, maxlen)[::2]):
        skills, responses = sim["skill"][w0:w0 + n], sim["response"][w0:w0 + n]
        whole = _history_predictive(skills, responses, sim["difficulty"], grid)
        prior = priors["continued"][:n]
        if len(priors["earlier"]) == 0 or not prior.any():
            out.append(whole)
            continue
        cont = _history_predictive(skills, responses, sim["difficulty"], grid, priors["earlier"],
                                   priors["log_p_earlier"])
        evidence = [np.r_[0.0, np.cumsum(np.log(np.where(responses == 1, p, 1.0 - p)))[:-1]] for p in (whole, cont)]
        with np.errstate(divide="ignore"):
            log_odds = np.log(prior) - np.log1p(-prior) + evidence[1] - evidence[0]  # of continued, before step t
        w = 1.0 / (1.0 + np.exp(-log_odds))
        out.append((1.0 - w) * whole + w * cont)
    return np.concatenate(out) if out else np.zeros(0)


def _windows(sim: dict, ids: np.ndarray, maxlen: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The windows split_windows makes of students `ids`: the index in sim's per-step arrays of each window's first
    step (a student's steps are contiguous there), its start within the student's history, and its length."""
    offsets = np.cumsum(sim["lengths"]) - sim["lengths"]
    student, start, length = split_windows(sim["lengths"][ids], maxlen, MIN_SEQ_LEN)
    return offsets[ids][student] + start, start, length


def _posterior_grid(ability_points: int, rate_points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Bayes predictors' grid: ability points over [-4.5, 4.5] and their N(0, 1) log-density, rate quantiles."""
    from scipy.stats import norm

    a = np.linspace(-4.5, 4.5, ability_points)
    rates = RATE_MEDIAN * np.exp(RATE_SIGMA * norm.ppf((np.arange(rate_points) + 0.5) / rate_points))
    return a, norm.logpdf(a), rates


def _history_predictive(skills: np.ndarray, responses: np.ndarray, difficulty: np.ndarray, grid: tuple,
                        earlier: np.ndarray | None = None, log_p_earlier: np.ndarray | None = None) -> np.ndarray:
    """P(correct) of each step of one history from its earlier steps, by the posterior on the (ability, rate,
    earlier practices) grid. earlier (E,) with prior log_p_earlier (E,): the practices of each skill before the
    history began, unknown and independent across skills; None: none (the history is the whole history)."""
    a, log_prior, rates = grid
    if earlier is None:
        earlier, log_p_earlier = np.zeros(1), np.zeros(1)
    k_all = len(difficulty)
    start = np.broadcast_to(log_p_earlier, (len(a), len(rates), len(earlier)))
    loglik = {}  # skill -> log-likelihood of its responses so far (+ the log prior of earlier) on the grid
    log_mean = np.zeros((k_all, len(a)))  # log E_{lambda, earlier} exp(loglik), per skill (0 before its first step)
    total = np.zeros(len(a))  # sum over skills of log_mean
    count = np.zeros(k_all, dtype=np.int64)
    pred = np.empty(len(skills))
    for t in range(len(skills)):
        k = skills[t]
        logit = a[:, None, None] - difficulty[k] + BASE_LOGIT + rates[:, None] * (earlier + count[k])
        p = GUESS + (1 - GUESS - SLIP) / (1 + np.exp(-logit))
        own = loglik.get(k, start)
        log_w = (log_prior + total - log_mean[k])[:, None, None] + own
        w = np.exp(log_w - log_w.max())
        pred[t] = float((w * p).sum() / w.sum())
        own = own + np.log(p if responses[t] == 1 else 1.0 - p)
        loglik[k] = own
        top = own.max()
        total -= log_mean[k]
        log_mean[k] = np.log(np.exp(own - top).sum((1, 2)) / len(rates)) + top
        total += log_mean[k]
        count[k] += 1
    return pred


def generate_synthetic(out_dir: Path, students: int, skills: int, seed: int, maxlen: int) -> dict:
    """Simulate `students` histories over `skills` skills and write them to out_dir in pyKT layout with the
    true mastery; returns the content of synthetic.json. A data set with skills <= its num_c loads with it."""
    problems = [f"{k} {v} must be >= {lo}" for k, v, lo in
                (("students", students, 10), ("skills", skills, 1), ("maxlen", maxlen, 2)) if v < lo]
    if problems:
        raise ConfigError("synthetic data: " + "; ".join(problems))
    out_dir = Path(out_dir)
    sim = simulate_students(students, skills, seed)
    groups = split_students(students, seed)
    counts = {}
    for group, ids in groups.items():
        lengths = sim["lengths"][ids]
        offsets = np.cumsum(lengths) - lengths
        steps = student_steps(sim, ids)
        flat = {"concepts": sim["skill"][steps], "responses": sim["response"][steps],
                "mastery": sim["mastery"][steps], "cidxs": np.arange(len(steps))}
        fold = np.arange(len(ids)) % N_FOLDS if group == "train_valid" else np.full(len(ids), -1)
        files = ([(TRAIN_VALID_FILE, split_windows(lengths, maxlen, MIN_SEQ_LEN), False)] if group == "train_valid"
                 else [(TEST_FILE, split_windows(lengths, maxlen, MIN_SEQ_LEN), False),
                       (TEST_WINDOW_FILE, sliding_windows(lengths, maxlen), True)])
        for name, (student, start, length), sliding in files:
            w = {k: gather_windows(v, offsets, student, start, length, maxlen) for k, v in flat.items()}
            sm = window_selectmasks(start, length, maxlen, sliding)
            lists = [w["concepts"], w["responses"], sm] + ([w["cidxs"]] if group == "test" else [])
            header = list(REQUIRED_COLUMNS) + (["cidxs"] if group == "test" else [])
            write_sequence_csv(out_dir / name, header, fold[student], ids[student], lists)
            write_sequence_csv(out_dir / truth_file_name(TRUTH_FILE, name, TRAIN_VALID_FILE),
                               ["fold", "uid", "mastery"], fold[student], ids[student],
                               [w["mastery"].astype(np.float64)])
            counts[name] = {"rows": int(len(student)), "students": int(len(np.unique(student))),
                            "interactions": int((sm == 1).sum())}
    info = {"law": "p = sigmoid(a_s - d_k + BASE_LOGIT + lambda_sk * n_sk); "
                   "P(correct) = GUESS + (1 - GUESS - SLIP) * p",
            "constants": {"GUESS": GUESS, "SLIP": SLIP, "BASE_LOGIT": BASE_LOGIT, "RATE_MEDIAN": RATE_MEDIAN,
                          "RATE_SIGMA": RATE_SIGMA, "LENGTH_MIN": LENGTH_MIN, "LENGTH_MAX": LENGTH_MAX,
                          "BLOCK_MEAN": BLOCK_MEAN, "TEST_SHARE": TEST_SHARE, "N_FOLDS": N_FOLDS,
                          "MIN_SEQ_LEN": MIN_SEQ_LEN},
            "seed": seed, "students": students, "skills": skills, "maxlen": maxlen,
            "interactions": int(sim["lengths"].sum()), "mean_correct": round(float(sim["response"].mean()), 6),
            "files": counts, "truth_file": TRUTH_FILE}
    write_bytes_atomic(out_dir / "synthetic.json", (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
    return info


def simulate_questions(students: int, skills: int, seed: int, questions: int, max_concepts: int) -> dict:
    """Draw question-level histories by the module's law (see the module doc). Flat per-step arrays of the
    expanded steps (an answer to a question with k concepts is k steps), students back to back: student,
    question, skill, is_repeat, mastery (p_c of the step's concept before the answer), response (the answer's);
    per student: lengths (steps) and answers; and the Q-matrix (concepts of each question) and b_q."""
    rng = np.random.default_rng(seed)
    ability = rng.normal(size=students)
    difficulty = rng.normal(size=skills)
    rate = RATE_MEDIAN * np.exp(RATE_SIGMA * rng.normal(size=(students, skills)))
    tags = [np.sort(rng.choice(skills, size=k, replace=False)) for k in rng.integers(1, max_concepts + 1,
                                                                                      size=questions)]
    question_difficulty = rng.normal(size=questions)
    by_concept = [np.array([q for q in range(questions) if c in tags[q]]) for c in range(skills)]
    answers = np.rint(np.exp(rng.uniform(np.log(LENGTH_MIN), np.log(LENGTH_MAX), size=students))).astype(np.int64)
    steps = {k: [] for k in ("student", "question", "skill", "is_repeat", "mastery", "response")}
    lengths = np.zeros(students, dtype=np.int64)
    for s in range(students):
        practice = np.zeros(skills)
        concept = None
        for t in range(int(answers[s])):
            if t == 0 or rng.random() < 1.0 / BLOCK_MEAN:
                concept = int(rng.integers(skills))
            pool = by_concept[concept] if len(by_concept[concept]) else np.arange(questions)
            q = int(pool[rng.integers(len(pool))])
            cs = tags[q]
            p = 1.0 / (1.0 + np.exp(-(ability[s] - difficulty[cs] + BASE_LOGIT + rate[s, cs] * practice[cs])))
            solve = 1.0 / (1.0 + np.exp(-(QUESTION_BASE - question_difficulty[q])))
            response = int(rng.random() < GUESS + (1 - GUESS - SLIP) * solve * float(np.prod(p)))
            practice[cs] += 1
            k = len(cs)
            steps["student"] += [s] * k
            steps["question"] += [q] * k
            steps["skill"] += cs.tolist()
            steps["is_repeat"] += [0] + [1] * (k - 1)
            steps["mastery"] += p.tolist()
            steps["response"] += [response] * k
            lengths[s] += k
    out = {k: np.array(v, dtype=np.float64 if k == "mastery" else np.int64) for k, v in steps.items()}
    return {**out, "lengths": lengths, "answers": answers, "tags": tags, "question_difficulty": question_difficulty,
            "ability": ability, "difficulty": difficulty, "rate": rate}


def generate_synthetic_questions(out_dir: Path, students: int, skills: int, seed: int, maxlen: int, questions: int,
                                 max_concepts: int) -> dict:
    """simulate_questions written in pyKT's question-level layout (layout.write_pykt_folder: sequence files with
    questions and is_repeat, train_valid.csv, test.csv, the two question test files) with the true mastery of
    every step's concept row for row beside the sequence files; returns the content of synthetic.json."""
    problems = [f"{k} {v} must be >= {lo}" for k, v, lo in
                (("students", students, 10), ("skills", skills, 1), ("maxlen", maxlen, 2),
                 ("questions", questions, 1), ("max_concepts", max_concepts, 1)) if v < lo]
    if max_concepts > skills:
        problems.append(f"max_concepts {max_concepts} must be <= skills {skills} (a question's concepts differ)")
    if problems:
        raise ConfigError("synthetic data: " + "; ".join(problems))
    from gainakt3exp.data.layout import write_pykt_folder

    out_dir = Path(out_dir)
    sim = simulate_questions(students, skills, seed, questions, max_concepts)
    groups = split_students(students, seed)
    dicts = {}
    for group, ids in groups.items():
        steps = student_steps(sim, ids)
        dicts[group] = {"uid": ids, "lengths": sim["lengths"][ids], "questions": sim["question"][steps],
                        "concepts": sim["skill"][steps], "responses": sim["response"][steps],
                        "is_repeat": sim["is_repeat"][steps], "mastery": sim["mastery"][steps]}
    folds = np.arange(len(groups["train_valid"])) % N_FOLDS
    written = write_pykt_folder(out_dir, {k: v for k, v in dicts["train_valid"].items() if k != "mastery"}, folds,
                                {k: v for k, v in dicts["test"].items() if k != "mastery"}, maxlen, MIN_SEQ_LEN)
    for group, name, sliding in (("train_valid", TRAIN_VALID_FILE, False), ("test", TEST_FILE, False),
                                 ("test", TEST_WINDOW_FILE, True)):
        d = dicts[group]
        student, start, length = (sliding_windows(d["lengths"], maxlen) if sliding
                                  else split_windows(d["lengths"], maxlen, MIN_SEQ_LEN))
        offsets = np.cumsum(d["lengths"]) - d["lengths"]
        fold = folds if group == "train_valid" else np.full(len(d["uid"]), -1)
        write_sequence_csv(out_dir / truth_file_name(TRUTH_FILE, name, TRAIN_VALID_FILE), ["fold", "uid", "mastery"],
                           fold[student], d["uid"][student],
                           [gather_windows(d["mastery"], offsets, student, start, length, maxlen)])
    info = {"law": "p_c = sigmoid(a_s - d_c + BASE_LOGIT + lambda_sc * n_sc); P(correct) = GUESS + (1 - GUESS - "
                   "SLIP) * sigmoid(QUESTION_BASE - b_q) * prod_{c in q} p_c",
            "constants": {"GUESS": GUESS, "SLIP": SLIP, "BASE_LOGIT": BASE_LOGIT, "RATE_MEDIAN": RATE_MEDIAN,
                          "RATE_SIGMA": RATE_SIGMA, "LENGTH_MIN": LENGTH_MIN, "LENGTH_MAX": LENGTH_MAX,
                          "BLOCK_MEAN": BLOCK_MEAN, "TEST_SHARE": TEST_SHARE, "N_FOLDS": N_FOLDS,
                          "MIN_SEQ_LEN": MIN_SEQ_LEN, "QUESTION_BASE": QUESTION_BASE},
            "seed": seed, "students": students, "skills": skills, "questions": questions,
            "max_concepts": max_concepts, "maxlen": maxlen, "answers": int(sim["answers"].sum()),
            "interactions": int(sim["lengths"].sum()), "mean_correct": round(float(sim["response"].mean()), 6),
            "files": written, "truth_file": TRUTH_FILE}
    write_bytes_atomic(out_dir / "synthetic.json", (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
    return info
