"""The run's model as an MLflow pyfunc: what `mlflow.pyfunc.load_model`, `mlflow models serve` and `gakt-predict`
load. The weights travel as the artifact `checkpoint` (model_best.pth, read weights-only) and the code as the
model's code path, so using the model needs neither this repository nor the run's commit checked out.

Kept light on purpose: a served model imports this module, the model and the inference loop, nothing else of
the service (no store, no CLI)."""
from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import pandas as pd

#: The model's artifact holding model_best.pth.
CHECKPOINT_ARTIFACT = "checkpoint"
#: Windows per forward pass: memory only, the numbers do not depend on it (beyond float rounding, ~1e-7).
BATCH_SIZE = 64


class GainAKT3ExpModel(mlflow.pyfunc.PythonModel):
    """Histories in, one row per student out (loops/predict.py: predict_histories)."""

    def load_context(self, context) -> None:
        from gainakt3exp.loops.checkpoint import load_checkpoint
        from gainakt3exp.model.network import GainAKT3Exp

        checkpoint = load_checkpoint(Path(context.artifacts[CHECKPOINT_ARTIFACT]).read_bytes())
        # complete params (log_run_model fills in parameters added after the run): the model's code path holds the
        # package only, not configs/parameter_default.json
        model = GainAKT3Exp.from_params(checkpoint["params"], checkpoint["num_c"], checkpoint.get("num_q", 0))
        model.load_state_dict(checkpoint["state_dict"])
        self.model = model.eval()
        self.batch_size = BATCH_SIZE

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """A bad history raises MlflowException INVALID_PARAMETER_VALUE (HTTP 400 from a served model) with the
        message that names the row."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from gainakt3exp.errors import DataError

        try:
            return self.predict_frame(model_input)
        except DataError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None

    def predict_frame(self, frame: pd.DataFrame, progress=None) -> pd.DataFrame:
        """predict_histories on the CPU (gakt-predict calls this: a bad history is a DataError, exit 2)."""
        from gainakt3exp.loops.predict import predict_histories

        kwargs = {} if progress is None else {"progress": progress}
        return predict_histories(self.model, frame, batch_size=self.batch_size, device="cpu", **kwargs)
