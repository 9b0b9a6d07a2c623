"""The ``mlflow-audiodiag`` command line."""
