"""The MLflow metric sink: the loops' MetricSink (loops/sink.py) backed by one MLflow run."""
from __future__ import annotations

from typing import Mapping

from gainakt3exp.tracking.store import publish_bytes


class MlflowSink:
    """The training loop's metric sink for one MLflow run: one batched call per step."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(batch), 900):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 900])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, name: str, data: bytes) -> None:
        publish_bytes(self.client, self.run_id, name, data)
