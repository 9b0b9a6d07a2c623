"""mlflow-audiodiag: audio transformer training on MLflow that records why validation stagnates."""

__version__ = "0.1.0"
