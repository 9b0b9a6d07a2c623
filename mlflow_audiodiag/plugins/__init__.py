"""MLflow plugins of the package, one module per plugin interface (see pyproject.toml)."""
