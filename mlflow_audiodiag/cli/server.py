"""A local ``mlflow server`` for trying the team set-up: a SQL (sqlite) backend and artifact
serving, in one folder."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from mlflow_audiodiag.errors import ConfigError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def server_command(root: Path, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """``mlflow server`` with its store at ``root/mlflow.db`` and artifacts under
    ``root/artifacts``, served through the server (clients need no storage credentials)."""
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root.resolve() / 'mlflow.db'}",
        "--artifacts-destination", str(root.resolve() / "artifacts"),
        "--host", host,
        "--port", str(port),
    ]  # fmt: skip


def wait_until_healthy(uri: str, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Waits for ``uri/health``; raises a clear error if the server exits or never answers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(f"mlflow server exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    process.terminate()
    raise ConfigError(f"mlflow server at {uri} did not answer /health within {timeout_s:.0f} s")


def run_server(root: Path, host: str, port: int) -> int:
    """Starts the server, says how clients connect, and serves until Ctrl-C."""
    root.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(server_command(root, host, port))
    uri = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    try:
        wait_until_healthy(uri, process)
        print(
            f"mlflow server on {uri} (store {root / 'mlflow.db'}, artifacts {root / 'artifacts'})"
        )
        print(f"clients: export MLFLOW_TRACKING_URI={uri}")
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return process.wait()
