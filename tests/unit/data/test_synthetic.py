"""Synthetic students: reproducible files, the learning law, loadable with the 'synthetic' data_config entry."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gainakt3exp.data import sequences as data
from gainakt3exp.data.registry import lookup
from gainakt3exp.data.synthetic import generate_synthetic, simulate_students
from gainakt3exp.errors import ConfigError


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("GAKT_CACHE_DIR", str(tmp_path / "cache"))


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_seed_gives_byte_identical_files(tmp_path):
    generate_synthetic(tmp_path / "a", students=60, skills=5, seed=3, maxlen=50)
    generate_synthetic(tmp_path / "b", students=60, skills=5, seed=3, maxlen=50)
    a = _files(tmp_path / "a")
    assert set(a) == {"train_valid_sequences.csv", "test_sequences.csv", "test_window_sequences.csv",
                      "true_mastery_sequences.csv", "test_true_mastery_sequences.csv",
                      "test_window_true_mastery_sequences.csv", "synthetic.json"}
    assert a == _files(tmp_path / "b")


def test_different_seed_gives_different_files(tmp_path):
    generate_synthetic(tmp_path / "a", students=60, skills=5, seed=3, maxlen=50)
    generate_synthetic(tmp_path / "b", students=60, skills=5, seed=4, maxlen=50)
    assert _files(tmp_path / "a")["train_valid_sequences.csv"] != _files(tmp_path / "b")["train_valid_sequences.csv"]


def test_mastery_and_correctness_rise_with_practice():
    sim = simulate_students(students=300, skills=10, seed=0)
    mean_m = [sim["mastery"][sim["practice"] == n].mean() for n in (0, 3, 6, 10)]
    mean_r = [sim["response"][sim["practice"] == n].mean() for n in (0, 10)]
    assert mean_m == sorted(mean_m) and mean_m[-1] - mean_m[0] > 0.2
    assert mean_r[1] - mean_r[0] > 0.1


def test_practice_counts_earlier_steps_of_the_same_skill():
    sim = simulate_students(students=3, skills=4, seed=5)
    s, k, n = sim["student"], sim["skill"], sim["practice"]
    for t in range(len(s)):  # tiny reference loop
        assert n[t] == np.sum((s[:t] == s[t]) & (k[:t] == k[t]))


def test_generated_data_loads_with_the_synthetic_config_entry(tmp_path):
    cfg = lookup("synthetic").entry
    info = generate_synthetic(tmp_path / "synthetic", students=200, skills=cfg["num_c"], seed=7,
                              maxlen=cfg["maxlen"])
    spec = data.dataset_spec("synthetic", tmp_path)
    train, valid = data.load_split(spec, "train", 0, 200), data.load_split(spec, "valid", 0, 200)
    test = data.load_split(spec, "test", 0, 200)
    assert len(train) + len(valid) == info["files"]["train_valid_sequences.csv"]["rows"]
    assert data.num_interactions(test) == info["files"]["test_sequences.csv"]["interactions"] - len(test)
    assert len(np.unique(train.uids)) < len(train)  # some histories exceed maxlen and span several rows
    assert not set(test.uids) & set(np.r_[train.uids, valid.uids])
    assert json.loads((tmp_path / "synthetic" / "synthetic.json").read_text()) == info


def test_truth_rows_match_the_sequence_rows(tmp_path):
    generate_synthetic(tmp_path / "synthetic", students=100, skills=6, seed=2, maxlen=40)
    for name in ("train_valid_sequences.csv", "test_window_sequences.csv"):
        truth = data.truth_file_name("true_mastery_sequences.csv", name, "train_valid_sequences.csv")
        s = data.read_sequences(tmp_path / "synthetic" / name, 6, 40, truth_path=tmp_path / "synthetic" / truth)
        assert np.array_equal(np.isnan(s.truth), s.concepts == -1)
        assert np.nanmin(s.truth) >= 0 and np.nanmax(s.truth) <= 1


def test_invalid_arguments_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="students 3 must be >= 10; skills 0 must be >= 1"):
        generate_synthetic(tmp_path, students=3, skills=0, seed=1, maxlen=200)


def test_all_skill_truth_of_the_practised_skill_equals_the_truth_file(tmp_path):
    """The generator's law recomputed for every skill (from the seed) gives, at each practised skill, the truth
    file's value (written to 4 decimals); the other skills follow the same law with their own practice counts."""
    import numpy as np

    from gainakt3exp.data.sequences import read_sequences
    from gainakt3exp.data.synthetic import all_skill_truth, generate_synthetic, simulate_students, split_students

    generate_synthetic(tmp_path, students=300, skills=10, seed=5, maxlen=200)
    sim, groups = simulate_students(300, 10, 5), split_students(300, 5)
    for name, group, truth in (("train_valid_sequences.csv", "train_valid", "true_mastery_sequences.csv"),
                               ("test_sequences.csv", "test", "test_true_mastery_sequences.csv")):
        seqs = read_sequences(tmp_path / name, 10, 200, truth_path=tmp_path / truth)
        every = all_skill_truth(sim, groups[group], 200)  # (rows, 200, 10)
        assert every.shape == (len(seqs), 200, 10)
        valid = seqs.concepts != -1
        at = np.take_along_axis(every, np.where(valid, seqs.concepts, 0)[..., None], 2)[..., 0]
        assert np.abs(at - seqs.truth)[valid].max() <= 5.01e-5
        assert np.isnan(every[~valid]).all() and np.isfinite(every[valid]).all()
        # a skill never practised before keeps its starting mastery sigmoid(a - d + BASE_LOGIT)
        row0 = every[0, 0]
        sid = groups[group][0]
        expected = 1 / (1 + np.exp(-(sim["ability"][sid] - sim["difficulty"] - 1.0)))
        assert np.allclose(row0, expected, atol=1e-6)


def _one_skill_sim(responses, difficulty=0.3):
    """A simulation record of one student answering skill 0 (of 2) `responses` in a row."""
    n = len(responses)
    return {"difficulty": np.array([difficulty, -0.5]), "lengths": np.array([n]), "skill": np.zeros(n, dtype=int),
            "response": np.array(responses)}


def _law(a, rate, practice, difficulty):
    from gainakt3exp.data import synthetic as s

    return s.GUESS + (1 - s.GUESS - s.SLIP) / (1 + np.exp(-(a - difficulty + s.BASE_LOGIT + rate * practice)))


def test_the_bayes_prediction_of_a_first_attempt_is_the_law_averaged_over_the_ability_prior():
    from scipy import integrate
    from scipy.stats import norm

    from gainakt3exp.data.synthetic import bayes_predictive

    pred = bayes_predictive(_one_skill_sim([1]), np.array([0]))
    exact, _ = integrate.quad(lambda a: norm.pdf(a) * _law(a, 0.0, 0, 0.3), -10, 10)
    assert pred.shape == (1,) and abs(pred[0] - exact) < 1e-4


def test_the_bayes_prediction_after_one_answer_is_the_exact_posterior_predictive():
    """P(r_2 = 1 | r_1) by Gauss-Hermite quadrature (other nodes than the predictor's grid) over the ability and
    the log-normal rate; a right first answer raises the prediction, a wrong one lowers it."""
    from gainakt3exp.data import synthetic as s

    nodes, weights = np.polynomial.hermite_e.hermegauss(120)  # for E over N(0, 1)
    a, z = nodes[:, None], nodes[None, :]
    rate, weight = s.RATE_MEDIAN * np.exp(s.RATE_SIGMA * z), weights[:, None] * weights[None, :]
    got = {}
    for first in (0, 1):
        p1 = _law(a, rate, 0, 0.3)
        like = weight * (p1 if first else 1 - p1)
        exact = (like * _law(a, rate, 1, 0.3)).sum() / like.sum()
        got[first] = s.bayes_predictive(_one_skill_sim([first, 1]), np.array([0]))
        assert abs(got[first][1] - exact) < 1e-3, (first, got[first][1], exact)
    assert got[1][1] > got[1][0] and got[0][1] < got[1][1]


def test_the_bayes_prediction_ranks_between_the_practice_count_and_the_oracle():
    from gainakt3exp.data import synthetic as s
    from gainakt3exp.metrics import stats

    sim = simulate_students(300, 8, seed=5)
    ids = np.arange(300)
    pred = s.bayes_predictive(sim, ids)
    y, truth = sim["response"], s.GUESS + (1 - s.GUESS - s.SLIP) * sim["mastery"]
    bayes, oracle = stats.roc_auc(y, pred), stats.roc_auc(y, truth)
    counter = stats.roc_auc(y, sim["practice"] + 1e-6 * np.arange(len(y)) / len(y))
    assert counter < bayes < oracle, (counter, bayes, oracle)


def test_window_priors_count_the_practice_a_continued_window_hides_and_how_often_windows_continue():
    from gainakt3exp.data.synthetic import window_priors

    # one student, 7 steps, windows of 3: [0, 3) and [3, 6) (the remainder of 1 step is dropped, as in pyKT)
    sim = {"difficulty": np.zeros(2), "lengths": np.array([7]), "skill": np.array([0, 0, 1, 1, 1, 0, 0]),
           "response": np.ones(7, dtype=int)}
    got = window_priors(sim, np.array([0]), 3)
    # the window at 3 follows skill 0 twice and skill 1 once: earlier counts 2 and 1, each half of the pairs
    assert got["earlier"].tolist() == [1.0, 2.0] and np.allclose(np.exp(got["log_p_earlier"]), [0.5, 0.5])
    assert np.allclose(got["continued"], [0.5, 0.5, 0.5])  # one of the two windows, whatever the step


def test_the_window_bayes_prediction_of_whole_histories_is_the_history_bayes_prediction():
    """No history is longer than a window (maxlen 400 = LENGTH_MAX): no window continues, nothing is hidden."""
    from gainakt3exp.data import synthetic as s

    sim = simulate_students(40, 4, seed=3)
    ids = np.arange(40)
    priors = s.window_priors(sim, ids, 400)
    assert not priors["continued"].any()
    window = s.window_bayes_predictive(sim, ids, 400, priors, ability_points=21, rate_points=9)
    assert np.array_equal(window, s.bayes_predictive(sim, ids, ability_points=21, rate_points=9))


def test_the_window_bayes_prediction_infers_the_practice_a_continued_window_hides():
    """Windows of 30 steps: most rows continue a history. Reading the window only, the mixture over 'a whole
    history' and 'a continuation from unknown earlier practice' predicts the continued windows better than taking
    every window as a whole history, and no better than bayes_predictive, which sees the hidden steps."""
    from gainakt3exp.data import synthetic as s
    from gainakt3exp.data.layout import split_windows
    from gainakt3exp.metrics import stats

    sim = simulate_students(160, 4, seed=11)
    train, test = np.arange(80), np.arange(80, 160)
    priors = s.window_priors(sim, train, 30)
    whole_only = dict(priors, continued=np.zeros_like(priors["continued"]))
    grid = {"ability_points": 21, "rate_points": 9}
    mixed = s.window_bayes_predictive(sim, test, 30, priors, **grid)
    whole = s.window_bayes_predictive(sim, test, 30, whole_only, **grid)
    history = s.bayes_predictive(sim, test, **grid)
    lengths = sim["lengths"][test]
    student, start, length = split_windows(lengths, 30, s.MIN_SEQ_LEN)
    first = np.cumsum(lengths) - lengths
    scored = np.concatenate([first[i] + s0 + np.arange(1, n) for i, s0, n in zip(student, start, length)])
    in_window = np.concatenate([o + np.arange(1, n) for o, n in zip(np.cumsum(length) - length, length)])
    continued = np.concatenate([np.full(n - 1, s0 > 0) for s0, n in zip(start, length)])
    y = sim["response"][s.student_steps(sim, test)][scored]
    assert continued.mean() > 0.5
    auc = {name: stats.roc_auc(y[continued], p[continued]) for name, p in
           (("mixed", mixed[in_window]), ("whole", whole[in_window]), ("history", history[scored]))}
    assert auc["whole"] < auc["mixed"] < auc["history"], auc


def test_synthetic_questions_are_question_level_pykt_files_with_each_concepts_truth(tmp_path):
    from gainakt3exp.data.synthetic import generate_synthetic_questions

    info = generate_synthetic_questions(tmp_path / "a", students=40, skills=6, seed=3, maxlen=50, questions=12,
                                        max_concepts=3)
    again = generate_synthetic_questions(tmp_path / "b", students=40, skills=6, seed=3, maxlen=50, questions=12,
                                         max_concepts=3)
    for name in ("train_valid_sequences.csv", "test_question_window_sequences.csv", "true_mastery_sequences.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()  # one seed, one file
    assert info == again and info["answers"] < info["interactions"]
    tv = data.read_sequences(tmp_path / "a" / "train_valid_sequences.csv", 6, 50, num_q=12,
                             truth_path=tmp_path / "a" / "true_mastery_sequences.csv")
    real = tv.concepts != -1
    assert np.isfinite(tv.truth[real]).all() and ((tv.truth[real] >= 0) & (tv.truth[real] <= 1)).all()
    # a question always carries the same concepts, each once per answer
    tags = {}
    starts = real & ~tv.is_repeat
    for row in range(len(tv)):
        cut = np.flatnonzero(starts[row])
        for a, b in zip(cut, np.append(cut[1:], tv.lengths[row])):
            concepts = tuple(sorted(tv.concepts[row, a:b]))
            assert len(set(concepts)) == len(concepts) <= 3
            whole = (a > 0 or not tv.is_repeat[row, 0]) and (b < 50 or tv.lengths[row] < 50)  # not cut by a window
            if whole:
                assert tags.setdefault(int(tv.questions[row, a]), concepts) == concepts
    # a concept's true mastery never falls within a student's row: it grows with each answer that practises it
    for row in range(len(tv)):
        for c in range(6):
            values = tv.truth[row][real[row] & (tv.concepts[row] == c)]
            assert (np.diff(values) >= -1e-4).all()
