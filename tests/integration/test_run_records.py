"""What a training run records beside its metrics: system metrics only when asked for (log_system_metrics), and
never in a comparison's verdict. Marked slow: two tiny in-process trainings on a fresh local store."""
import pytest

from gainakt3exp.config.params import resolve_params
from gainakt3exp.service import training as training_service
from gainakt3exp.service.compare import INFO, PASS, history_rows

pytestmark = pytest.mark.slow


@pytest.fixture
def store(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")  # a tiny run lasts seconds
    yield uri
    mlflow.set_tracking_uri(None)


def _runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()],
                                      order_by=["attributes.start_time ASC"])


def test_system_metrics_are_logged_only_when_asked_for_and_compare_as_information(store, synthetic_root,
                                                                                  monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")  # the parameter decides, not MLflow's switch
    for value in (False, True):
        params = resolve_params({"data_root": str(synthetic_root), "epochs": 3, "log_system_metrics": value},
                                ["tiny"]).params
        training_service.run_training(params)
    client, (off, on) = _runs(store)
    assert off.data.params["log_system_metrics"] == "false" and on.data.params["log_system_metrics"] == "true"
    assert not [k for k in off.data.metrics if k.startswith("system/")]
    system = sorted(k for k in on.data.metrics if k.startswith("system/"))
    assert "system/cpu_utilization_percentage" in system and "system/system_memory_usage_megabytes" in system

    histories = {}
    for run in (off, on):
        histories[run.info.run_id] = {k: {int(m.step): m.value for m in client.get_metric_history(run.info.run_id, k)}
                                      for k in run.data.metrics}
    rows = {r["name"]: r for r in history_rows(histories[off.info.run_id], histories[on.info.run_id], 1e-4)}
    assert all(rows[k]["status"] == INFO for k in system)
    assert rows["val/auc"]["status"] == PASS  # the switch changes nothing of the training itself
