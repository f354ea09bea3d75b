"""The models-from-code file of every logged GainAKT3Exp model: MLflow runs it when it loads the model (the model's
code path holds the package), so nothing is unpickled to rebuild the pyfunc."""
import mlflow.models

from gainakt3exp.service.pyfunc import GainAKT3ExpModel

mlflow.models.set_model(GainAKT3ExpModel())
