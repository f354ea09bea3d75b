"""What gakt-eval's mastery pictures are drawn from (loops/evaluate.py mastery_pictures, loops/collect.py
collect_students), on the test split of the small synthetic data set with an untrained tiny model."""
import numpy as np
import pytest
import torch

from gainakt3exp.data import sequences as data
from gainakt3exp.data.registry import resolve_data_root
from gainakt3exp.errors import ConfigError
from gainakt3exp.loops.collect import collect_outputs, collect_students
from gainakt3exp.loops.evaluate import mastery_pictures
from gainakt3exp.model.network import GainAKT3Exp


def _test_split(params):
    spec = data.dataset_spec(params["dataset"], resolve_data_root(params["data_root"]))
    return data.load_split(spec, "test", params["fold"], params["seq_len"])


def test_pictures_show_the_longest_students_with_the_mastery_the_evaluation_reads(tiny_params):
    torch.manual_seed(0)
    model = GainAKT3Exp.from_params(tiny_params, 20)
    seqs = _test_split(tiny_params)
    out = collect_outputs(model, seqs, np.arange(len(seqs)), 32, "cpu", per_skill=False)
    pictures = mastery_pictures(model, seqs, out, "cpu", n_students=3)
    students = pictures["students"]
    expected, seen = [], set()
    for i in sorted(range(len(seqs)), key=lambda i: (-seqs.lengths[i], i)):  # longest first, one row per student
        if seqs.uids[i] not in seen and len(expected) < 3:
            expected.append(i)
            seen.add(seqs.uids[i])
    assert [s["row"] for s in students] == expected
    for s in students:
        row, n = s["row"], int(seqs.lengths[s["row"]]) - 1
        assert s["mastery"].shape == (n, 20) and s["label"] == f"student {seqs.uids[row]} (row {row})"
        assert s["concepts"].tolist() == seqs.concepts[row, :n].tolist()
        assert s["responses"].tolist() == seqs.responses[row, :n].tolist()
        # m_t[c_{t+1}] of the full forward is the reduced pass's target mastery
        q = seqs.concepts[row, 1:n + 1]
        np.testing.assert_allclose(s["mastery"][np.arange(n), q], out["target_mastery"][row, :n].numpy(), atol=1e-5)
    valid = out["mask"]
    assert pictures["calibration"]["mastery"].shape == (int(valid.sum()),)
    np.testing.assert_array_equal(pictures["calibration"]["y"], out["y"][valid].numpy())
    truth = pictures["truth"]
    assert truth["label"] == students[0]["label"] and np.isfinite(truth["truth"]).any()
    assert truth["learned"].shape == truth["truth"].shape == truth["y"].shape == (students[0]["mastery"].shape[0],)


def test_a_model_without_a_mastery_head_has_no_pictures(tiny_params):
    params = {**tiny_params, "use_mastery_head": False, "use_gain_head": False}
    model = GainAKT3Exp.from_params(params, 20)
    seqs = _test_split(params)
    out = collect_outputs(model, seqs, np.arange(4), 32, "cpu", per_skill=False)
    assert mastery_pictures(model, seqs, out, "cpu") is None
    with pytest.raises(ConfigError, match="no mastery head"):
        collect_students(model, seqs, np.arange(2), "cpu")
