"""The server wrapper's settings, without starting a server: what the command line, the
environment and the auth config hold, and what they must never hold."""

from __future__ import annotations

import socket
import stat

import pytest

from mlflow_audiodiag.cli.server import ServerSettings, mask_password
from mlflow_audiodiag.cli.server_auth import PASSWORD_ENV, AuthSettings, write_auth_config
from mlflow_audiodiag.cli.server_network import allowed_hosts, port_problem
from mlflow_audiodiag.errors import ConfigError

PG = "postgresql://mlflow:s3cret%40x@db.example:5432/mlflow"


def test_a_store_password_stays_off_the_command_line_and_out_of_the_output(tmp_path) -> None:
    settings = ServerSettings(tmp_path, backend_store_uri=PG)
    assert not any("s3cret" in part for part in settings.command())
    assert settings.environment()["MLFLOW_BACKEND_STORE_URI"] == PG
    assert mask_password(PG) == "postgresql://mlflow:***@db.example:5432/mlflow"
    plain = ServerSettings(tmp_path, backend_store_uri="postgresql://mlflow@db/mlflow")
    assert "postgresql://mlflow@db/mlflow" in plain.command()


def test_loopback_by_default_and_the_one_folder_defaults(tmp_path) -> None:
    command = ServerSettings(tmp_path).command()
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}" in command
    assert str(tmp_path.resolve() / "artifacts") in command
    assert "--allowed-hosts" not in command and "--app-name" not in command


def test_serving_the_network_allows_this_machines_names(tmp_path) -> None:
    command = ServerSettings(tmp_path, host="0.0.0.0", allowed_hosts=("mlflow.team.example",))
    patterns = command.command()[command.command().index("--allowed-hosts") + 1].split(",")
    assert {"mlflow.team.example", "mlflow.team.example:*", "localhost"} <= set(patterns)
    assert f"{socket.gethostname()}:*" in patterns or socket.gethostname().startswith("127.")
    assert allowed_hosts("127.0.0.1") is None  # MLflow's own default
    assert allowed_hosts("0.0.0.0", ["*"]) == ["*"]


def test_the_auth_config_is_private_and_holds_no_admin_password(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "a-password-long-enough")
    auth = AuthSettings(database_uri=PG)
    settings = ServerSettings(tmp_path, auth=auth)
    env = settings.environment()
    config = (tmp_path / "basic_auth.ini").read_text()
    assert stat.S_IMODE((tmp_path / "basic_auth.ini").stat().st_mode) == 0o600
    assert "a-password-long-enough" not in config
    assert env[PASSWORD_ENV] == "a-password-long-enough"
    assert "s3cret%%40x" in config  # MLflow reads it with interpolation on
    assert "default_permission = NO_PERMISSIONS" in config
    assert "--app-name" in settings.command()
    key = env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    assert settings.environment()["MLFLOW_FLASK_SERVER_SECRET_KEY"] == key  # kept for restarts


def test_admin_password_problems_are_config_errors(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(ConfigError, match="no admin user exists yet: set MLFLOW_AUTH_ADMIN"):
        ServerSettings(tmp_path, auth=AuthSettings()).environment()
    short = tmp_path / "short"
    short.write_text("short\n")
    with pytest.raises(ConfigError, match="has 5 characters; MLflow needs at least 12"):
        ServerSettings(tmp_path, auth=AuthSettings(admin_password_file=short)).environment()
    with pytest.raises(ConfigError, match="cannot read the admin password file"):
        auth = AuthSettings(admin_password_file=tmp_path / "missing")
        ServerSettings(tmp_path, auth=auth).environment()
    with pytest.raises(ConfigError, match="default permission 'ALL'"):
        AuthSettings(default_permission="ALL")


def test_write_auth_config_replaces_the_file(tmp_path) -> None:
    write_auth_config(tmp_path, AuthSettings(default_permission="READ"))
    path = write_auth_config(tmp_path, AuthSettings())
    assert "default_permission = NO_PERMISSIONS" in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["basic_auth.ini"]


def test_a_port_someone_listens_on_is_a_problem() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_problem("127.0.0.1", port) is not None
    assert port_problem("127.0.0.1", port) is None
