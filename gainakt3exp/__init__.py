"""gainakt3exp: MLflow-tracked experiments with GainAKT3Exp, an interpretable transformer for knowledge tracing."""

__version__ = "0.1.0"
