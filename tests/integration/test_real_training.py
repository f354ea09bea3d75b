"""Real assist2015 data (../shared/data): the cpu-small profile learns (val AUC >= 0.70, positive mastery corr)."""
import pytest
from conftest import shared_assist2015

from gainakt3exp.config.params import resolve_params
from gainakt3exp.loops.sink import MemorySink
from gainakt3exp.loops.train import train_model

pytestmark = pytest.mark.slow


def test_cpu_small_reaches_val_auc_070_with_positive_mastery_correlation():
    data_root = shared_assist2015().parent
    params = resolve_params({"data_root": str(data_root), "epochs": "4"}, ["cpu-small"]).params
    sink = MemorySink()
    results = train_model(params, sink)
    assert results["best_val_auc"] >= 0.70
    assert results["best"]["mastery_correlation"] > 0
    assert [s for s, _ in sink.metrics["val/auc"]] == [1, 2, 3, 4]
