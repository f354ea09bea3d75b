"""Mastery measured against known truth (slow tier): the acceptance run of benchmarks/interpretability.py.

1000 synthetic students x 20 skills (seed 7), the cpu-tuned profile. The learned mastery of the next skill must
track the generator's true mastery better than the two trivial baselines a user could compute without any model:
the practice count and the running accuracy of that skill. Thresholds sit a little below what docs/results.md reports
(measured on this machine), so the test checks the claim without being flaky.
"""
import json
import subprocess
import sys

import pytest

from gainakt3exp.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow
ROOT = PROJECT_ROOT


@pytest.fixture(scope="module")
def acceptance(tmp_path_factory) -> dict:
    data = tmp_path_factory.mktemp("interp")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "interpretability.py"), "--data_root", str(data)],
                          capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    (line,) = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    return line


@pytest.mark.parametrize("split", ["valid", "test"])
def test_learned_mastery_tracks_the_true_mastery_better_than_both_baselines(acceptance, split):
    t = lambda source, stat: acceptance[f"truth.{source}.{split}.{stat}"]  # noqa: E731
    assert t("mastery", "within") >= 0.77 and t("mastery", "pooled") >= 0.72
    for stat in ("within", "pooled"):
        for baseline in ("practice_count", "running_accuracy"):
            assert t("mastery", stat) >= t(baseline, stat) + 0.04, (stat, baseline)


def test_the_acceptance_run_reports_model_and_oracle_auc_and_every_skill(acceptance):
    assert acceptance["profiles"] == ["cpu-tuned"]
    assert 0.5 < acceptance["auc"] < acceptance["oracle_auc"] <= 1.0
    assert acceptance["auc"] >= 0.72
    assert 0.5 < acceptance["feature_logistic_auc"] < acceptance["oracle_auc"]
    # the Bayes-optimal prediction from the history: above the count regression and the model, below the oracle
    assert max(acceptance["feature_logistic_auc"], acceptance["auc"]) < acceptance["bayes_auc"] \
        < acceptance["oracle_auc"]
    # the Bayes-optimal prediction from the window alone: above both, below the one that sees the whole history
    assert max(acceptance["feature_logistic_auc"], acceptance["auc"]) < acceptance["window_bayes_auc"] \
        < acceptance["bayes_auc"]
    assert acceptance["truth_all_skills.test.within"] >= 0.75
