"""Fixtures for integration tests that need a real MLflow tracking server or PostgreSQL."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.mlflow_server import MlflowServer
from support.postgres import REQUIRE_ENV, PostgresCluster, find_bin_dir, missing_reason
from support.team_server import TeamServer


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """A started ``mlflow server`` on a free 127.0.0.1 port; always stopped afterwards."""
    server = MlflowServer(tmp_path / "mlflow-server")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster for the session; skipped without PostgreSQL, unless
    ``AUDIODIAG_REQUIRE_POSTGRES=1`` (set by CI) makes that a failure."""
    reason = missing_reason()
    if reason is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason} ({REQUIRE_ENV}=1)")
        pytest.skip(reason)
    cluster = PostgresCluster(find_bin_dir())
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def team_server(postgres: PostgresCluster, tmp_path_factory) -> Iterator[TeamServer]:
    """``mlflow-audiodiag server`` on PostgreSQL (store and users in their own databases) with
    basic auth, artifact serving, and the users ``alice`` and ``bob``."""
    name = f"mlflow_{secrets.token_hex(4)}"
    server = TeamServer(
        tmp_path_factory.mktemp("team-server"),
        store_uri=postgres.create_database(name),
        auth_database_uri=postgres.create_database(f"{name}_auth"),
    )
    try:
        server.start()
        for user in ("alice", "bob"):
            server.create_user(user)
        yield server
    finally:
        server.stop()
