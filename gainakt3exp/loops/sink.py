"""The metric-sink protocol: how the loops hand out what they measure without knowing where it goes.

The training loop calls `sink.log_metrics({"val/auc": 0.72, ...}, step=epoch)`, `sink.set_tags(...)` and
`sink.log_artifact(name, bytes)`; tracking.sink.MlflowSink writes to an MLflow run, MemorySink keeps everything in
memory for tests and benchmarks.
"""
from __future__ import annotations

from typing import Mapping, Protocol


class MetricSink(Protocol):
    """What a training or evaluation loop may do with its results."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def log_artifact(self, name: str, data: bytes) -> None: ...


class MemorySink:
    """In-memory sink for tests and dry runs: what was logged, readable back."""

    def __init__(self):
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.tags: dict[str, str] = {}
        self.artifacts: dict[str, bytes] = {}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.metrics.setdefault(key, []).append((int(step), float(value)))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tags.update({k: str(v) for k, v in tags.items()})

    def log_artifact(self, name: str, data: bytes) -> None:
        self.artifacts[name] = bytes(data)
