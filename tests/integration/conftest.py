"""Fixtures for integration tests that need a real MLflow tracking server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.mlflow_server import MlflowServer


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """A started ``mlflow server`` on a free 127.0.0.1 port; always stopped afterwards."""
    server = MlflowServer(tmp_path / "mlflow-server")
    try:
        yield server.start()
    finally:
        server.stop()
