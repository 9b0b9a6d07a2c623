"""``mlflow-audiodiag server`` as an operator runs it: serving the network answers clients that
use this machine's name, a busy port is a failure, and stopping the wrapper stops its server."""

from __future__ import annotations

import contextlib
import fnmatch
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import processes

from mlflow_audiodiag.cli.server import free_port
from mlflow_audiodiag.cli.server_network import port_problem

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERVER = [sys.executable, "-m", "mlflow_audiodiag.cli.main", "server"]
ONE_WORKER = ["--workers", "1"]
STARTED = "mlflow server on"


def _env() -> dict[str, str]:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@contextlib.contextmanager
def _wrapper(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen, Path]]:
    log_path = tmp_path / "wrapper.log"
    command = [*SERVER, "--root", str(tmp_path / "server"), *args]
    with (
        log_path.open("wb") as log,
        processes.spawned(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env()
        ) as process,
    ):
        yield process, log_path


def _wait_started(process: subprocess.Popen, log_path: Path, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        output = log_path.read_text(errors="replace")
        if STARTED in output:
            return
        if process.poll() is not None:
            raise AssertionError(f"the wrapper exited with {process.returncode}:\n{output[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"the wrapper did not start within {timeout_s:.0f} s")


def _status_as(port: int, host_header: str) -> int:
    """HTTP status of a runs API request that names the server as ``host_header``."""
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
    request = urllib.request.Request(url, headers={"Host": host_header})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_serving_the_network_answers_clients_that_use_this_machines_name(tmp_path) -> None:
    from mlflow.server.security_utils import get_default_allowed_hosts

    name = socket.gethostname()
    if any(fnmatch.fnmatch(name, p) for p in get_default_allowed_hosts()):
        pytest.skip(f"MLflow allows this machine's name {name!r} anyway")
    port = free_port()
    with _wrapper(tmp_path, "--host", "0.0.0.0", "--port", str(port), *ONE_WORKER) as started:
        _wait_started(*started)
        assert _status_as(port, f"{name}:{port}") == 200
        assert _status_as(port, f"127.0.0.1:{port}") == 200
        assert _status_as(port, f"attacker.example:{port}") == 403  # still guarded


def test_allowed_hosts_adds_the_name_the_server_is_published_under(tmp_path) -> None:
    port = free_port()
    args = ["--port", str(port), "--allowed-hosts", "mlflow.team.example", *ONE_WORKER]
    with _wrapper(tmp_path, *args) as started:
        _wait_started(*started)
        assert _status_as(port, f"mlflow.team.example:{port}") == 200
        assert _status_as(port, f"other.example:{port}") == 403


class _Answers200(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _something_listening() -> Iterator[int]:
    """Another server on a port, answering 200 to everything (``/health`` included)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers200)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_busy_port_is_a_failure_not_a_success(tmp_path) -> None:
    with _something_listening() as port:
        done = processes.run(
            [*SERVER, "--root", str(tmp_path / "server"), "--port", str(port)],
            env=_env(),
            timeout_s=180,
        )
    assert done.returncode != 0
    assert STARTED not in done.stdout
    assert f"127.0.0.1:{port}" in done.stderr and "--port" in done.stderr
    assert "Traceback" not in done.stderr


def test_sigterm_to_the_wrapper_stops_its_server(tmp_path) -> None:
    port = free_port()
    with _wrapper(tmp_path, "--port", str(port)) as (process, log_path):
        _wait_started(process, log_path)
        server = processes.descendants(process.pid)
        assert server, "the wrapper has no server process"
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        deadline = time.monotonic() + 30
        while any(processes.is_alive(pid) for pid in server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [pid for pid in server if processes.is_alive(pid)] == []
        assert port_problem("127.0.0.1", port) is None  # nobody listens any more
