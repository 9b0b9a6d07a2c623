"""Training loop, optimisation and MLflow logging of a run."""
