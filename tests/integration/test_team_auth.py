"""Authentication and permissions on the team server (PostgreSQL, basic auth): a client
without a login is refused with one clear line, and a user without permission on an
experiment can neither read nor write its runs."""

from __future__ import annotations

import logging
import sys
import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from support import processes

from mlflow_audiodiag.monitoring.sink import DurableRunLogger, SinkConfig, recover

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLI = [sys.executable, "-m", "mlflow_audiodiag.cli.main"]


def _one_clear_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--epochs", "1", "--experiment", "anything"],
        ["compare", "--experiment", "anything"],
        ["diagnose", "0123456789abcdef0123456789abcdef"],
    ],
    ids=["train", "compare", "diagnose"],
)
def test_a_client_without_a_login_is_refused_with_one_clear_line(
    team_server, tmp_path, command
) -> None:
    start = time.monotonic()
    done = processes.run([*CLI, *command], env=team_server.env(None), cwd=tmp_path, timeout_s=120)
    assert done.returncode == 2
    line = _one_clear_line(done.stderr)
    assert line.startswith(f"error: MLflow tracking server {team_server.uri} requires a login")
    assert "MLFLOW_TRACKING_USERNAME" in line and "MLFLOW_TRACKING_PASSWORD" in line
    assert time.monotonic() - start < 60  # before any data or training work


def test_a_wrong_password_is_refused_with_one_clear_line(team_server, tmp_path) -> None:
    env = team_server.env("alice", password="not-the-password")
    done = processes.run([*CLI, "compare"], env=env, cwd=tmp_path, timeout_s=120)
    assert done.returncode == 2
    line = _one_clear_line(done.stderr)
    assert f"{team_server.uri} refused the login of user 'alice'" in line


def _denied(call) -> bool:
    try:
        call()
    except MlflowException as error:
        assert error.error_code == "PERMISSION_DENIED", error
        return True
    return False


def test_a_user_without_permission_cannot_read_or_write_the_runs(team_server, tmp_path) -> None:
    client = MlflowClient(team_server.uri)
    with team_server.logged_in("alice"):
        experiment_id = client.create_experiment("alice-private")
        run_id = client.create_run(experiment_id, run_name="private").info.run_id
        client.log_metric(run_id, "val/accuracy", 0.5, step=1)

    with team_server.logged_in("bob"):
        assert _denied(lambda: client.get_run(run_id))
        assert _denied(lambda: client.get_metric_history(run_id, "val/accuracy"))
        assert _denied(lambda: client.log_metric(run_id, "val/accuracy", 0.9, step=2))
        assert _denied(lambda: client.set_tag(run_id, "audiodiag.verdict", "healthy"))
        assert _denied(lambda: client.create_run(experiment_id))
        try:
            found = client.search_runs([experiment_id])
        except MlflowException as error:
            assert error.error_code == "PERMISSION_DENIED"
            found = []
        assert [r.info.run_id for r in found] == []
    done = processes.run(
        [*CLI, "diagnose", run_id], env=team_server.env("bob"), cwd=tmp_path, timeout_s=120
    )
    assert done.returncode == 2
    line = _one_clear_line(done.stderr)
    assert run_id in line and "ermission" in line

    team_server.grant("alice", "bob", experiment_id, "READ")  # the owner shares it, read-only
    with team_server.logged_in("bob"):
        assert client.get_run(run_id).data.metrics == {"val/accuracy": 0.5}
        assert _denied(lambda: client.log_metric(run_id, "val/accuracy", 0.9, step=2))
    with team_server.logged_in("alice"):
        history = client.get_metric_history(run_id, "val/accuracy")
        assert [(m.step, m.value) for m in history] == [(1, 0.5)]  # nothing of bob's landed


def test_a_refused_delivery_keeps_its_spool_and_warns_once(team_server, tmp_path, caplog) -> None:
    """The server refuses the monitor's writes (a user without permission on the run): nothing
    is lost, one warning says so, and `recover` with a permitted login delivers it all once."""
    client = MlflowClient(team_server.uri)
    with team_server.logged_in("alice"):
        experiment_id = client.create_experiment("alice-refused")
        run_id = client.create_run(experiment_id, run_name="refused").info.run_id
    config = SinkConfig(
        spool_root=tmp_path / "spool",
        flush_interval_s=0.05,
        retry_backoff_s=(0.05, 0.2),
        close_timeout_s=2.0,
    )
    caplog.set_level(logging.INFO, logger="mlflow_audiodiag.monitoring.sink")
    with team_server.logged_in("bob"):
        sink = DurableRunLogger(run_id, client, config)
        for step in range(300):
            sink.log("train/step_loss", float(step), step)
        sink.set_tag("audiodiag.live", "watching")
        time.sleep(1.5)  # several refused delivery attempts
        assert not sink.close()

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "refused the run's data (HTTP 403: permission denied" in warnings[0]
    assert str(sink.folder) in warnings[0]
    assert sink.folder.is_dir()

    with team_server.logged_in("alice"):
        [recovered] = recover(sink.folder, client)
        history = client.get_metric_history(run_id, "train/step_loss")
        run = client.get_run(run_id)
    assert recovered.points == 300
    assert sorted(m.step for m in history) == list(range(300))  # every point, exactly once
    assert run.data.tags["audiodiag.live"] == "watching"
    assert not sink.folder.exists()
