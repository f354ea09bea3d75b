"""The mastery pictures of gakt-eval (service/plots.py): PNG bytes for ordinary and edge-case input, only practised
concepts drawn, clear errors for arrays that do not fit."""
import struct

import numpy as np
import pytest

from gainakt3exp.service import plots
from gainakt3exp.service.plots import mastery_calibration_png, mastery_students_png, mastery_truth_png

PNG = b"\x89PNG\r\n\x1a\n"


def _size(png: bytes) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk."""
    assert png.startswith(PNG)
    return struct.unpack(">II", png[16:24])


def _student(n: int, num_c: int, concepts, seed: int = 0, label: str = "student 1 (row 0)") -> dict:
    rng = np.random.default_rng(seed)
    return {"label": label, "concepts": np.asarray(concepts, dtype=np.int64)[:n],
            "responses": rng.integers(0, 2, n), "mastery": rng.random((n, num_c))}


def test_students_picture_is_a_png_with_a_panel_per_student():
    concepts = np.tile(np.arange(5), 8)
    one = mastery_students_png([_student(40, 20, concepts)])
    four = mastery_students_png([_student(40, 20, concepts, seed=s) for s in range(4)])
    assert one.startswith(PNG) and four.startswith(PNG)
    assert _size(four)[1] > 3 * _size(one)[1] * 0.8  # each student adds a panel


def test_students_picture_of_a_student_with_one_step_is_a_png():
    assert mastery_students_png([_student(1, 20, [7])]).startswith(PNG)


def test_students_picture_draws_only_practised_concepts_whatever_the_number_of_concepts():
    concepts = np.tile([3, 11, 5, 0, 17], 6)
    few = mastery_students_png([_student(30, 20, concepts)])
    many = mastery_students_png([_student(30, 1200, concepts)])
    assert many.startswith(PNG)
    assert _size(many) == _size(few)  # 5 rows drawn either way, not 1,200


def test_students_picture_keeps_the_most_practised_concepts_in_order_of_first_practice():
    # concepts 0..29 once each, then 100..119 three times each: more than MAX_CONCEPT_ROWS practised
    concepts = np.concatenate([np.arange(30), np.repeat(np.arange(100, 120), 3)])
    _, shown, practised = plots._student_panel(_student(len(concepts), 1200, concepts))
    assert practised == 50
    assert shown == list(range(100, 100 + plots.MAX_CONCEPT_ROWS))
    assert mastery_students_png([_student(len(concepts), 1200, concepts)]).startswith(PNG)


def test_students_picture_refuses_arrays_that_do_not_fit():
    bad = _student(10, 20, np.arange(10))
    bad["mastery"] = bad["mastery"][:9]
    with pytest.raises(ValueError, match="student 'student 1 \\(row 0\\)'.*do not fit"):
        mastery_students_png([bad])
    with pytest.raises(ValueError, match="outside 0..19"):
        mastery_students_png([_student(3, 20, [1, 2, 25])])
    with pytest.raises(ValueError, match="no students"):
        mastery_students_png([])


def test_calibration_picture_is_a_png_also_when_mastery_ties_at_one():
    rng = np.random.default_rng(0)
    p = rng.random(2000)
    y = (rng.random(2000) < p).astype(int)
    assert mastery_calibration_png(np.minimum(1.0, 2 * p), p, y).startswith(PNG)


def test_truth_picture_is_a_png_with_gaps_in_the_truth():
    truth = np.linspace(0.2, 0.9, 50)
    truth[10:15] = np.nan
    assert mastery_truth_png("student 1 (row 0)", np.linspace(0.1, 0.8, 50), truth, np.arange(50) % 2).startswith(PNG)
    assert mastery_truth_png("one step", [0.4], [0.5], [1]).startswith(PNG)
