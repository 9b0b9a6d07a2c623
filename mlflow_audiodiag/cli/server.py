"""``mlflow-audiodiag server``: an ``mlflow server`` for a team, or for trying one out.

Team set-up: a PostgreSQL backend store (``--backend-store-uri postgresql://...``), artifacts
served through the server (``--artifacts-destination``) and MLflow's authentication app
(``--app-name basic-auth``). Trying it out: a sqlite file and the artifacts in one folder (the
defaults). Either way the wrapper refuses a busy port before starting, checks that the server
accepts the host names its clients will use, reports a server that dies as a failure, and
takes the server's whole process group down with it (Ctrl-C, SIGTERM, SIGHUP).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mlflow_audiodiag.cli.server_auth import (
    CONFIG_PATH_ENV,
    PASSWORD_ENV,
    SECRET_KEY_ENV,
    AuthSettings,
    admin_password,
    secret_key,
    write_auth_config,
)
from mlflow_audiodiag.cli.server_network import (
    allowed_hosts,
    free_port,
    is_loopback,
    local_address,
    machine_names,
    port_problem,
    probe_names,
    rejected_host_headers,
)
from mlflow_audiodiag.errors import ConfigError

__all__ = ["ServerSettings", "free_port", "run_server", "server_command", "wait_until_healthy"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOP_GRACE_S = 10.0


def mask_password(uri: str) -> str:
    """``uri`` with the password of its user part replaced by ``***``, for printing."""
    parts = urlsplit(uri)
    if not parts.password:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class ServerSettings:
    """What to serve, where, and for whom; ``None`` means the one-folder default."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 5000
    backend_store_uri: str | None = None
    artifacts_destination: str | None = None
    auth: AuthSettings | None = None
    allowed_hosts: tuple[str, ...] = ()
    workers: int | None = None

    @property
    def store_uri(self) -> str:
        return self.backend_store_uri or f"sqlite:///{self.root.resolve() / 'mlflow.db'}"

    @property
    def artifacts(self) -> str:
        return self.artifacts_destination or str(self.root.resolve() / "artifacts")

    @property
    def uri(self) -> str:
        """Where this machine reaches the server."""
        return f"http://{local_address(self.host)}:{self.port}"

    @property
    def client_uri(self) -> str:
        """What other machines set as ``MLFLOW_TRACKING_URI``."""
        if is_loopback(self.host):
            return self.uri
        names = [h for h in self.allowed_hosts if "*" not in h] + machine_names()
        name = names[0] if names else socket.gethostname()
        return f"http://{name}:{self.port}" if ":" not in name else f"http://{name}"

    def command(self) -> list[str]:
        """The ``mlflow server`` command line; a store URI holding a password is passed in the
        environment instead (see :meth:`environment`), so that process listings do not show it."""
        command = [sys.executable, "-m", "mlflow", "server"]
        if not urlsplit(self.store_uri).password:
            command += ["--backend-store-uri", self.store_uri]
        command += [
            "--artifacts-destination", self.artifacts,
            "--host", self.host,
            "--port", str(self.port),
        ]  # fmt: skip
        if self.auth is not None:
            command += ["--app-name", "basic-auth"]
        patterns = allowed_hosts(self.host, self.allowed_hosts)
        if patterns is not None:
            command += ["--allowed-hosts", ",".join(patterns)]
        if self.workers is not None:
            command += ["--workers", str(self.workers)]
        return command

    def environment(self) -> dict[str, str]:
        """Variables the server process needs on top of the caller's environment; writes the
        auth config into ``root`` when authentication is on."""
        env: dict[str, str] = {}
        if urlsplit(self.store_uri).password:
            env["MLFLOW_BACKEND_STORE_URI"] = self.store_uri
        if self.auth is not None:
            env[CONFIG_PATH_ENV] = str(write_auth_config(self.root, self.auth))
            env[SECRET_KEY_ENV] = secret_key(self.root)
            password = admin_password(self.auth, self.root)
            if password is not None:
                env[PASSWORD_ENV] = password
        return env


def server_command(root: Path, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """``mlflow server`` with its store at ``root/mlflow.db`` and artifacts under
    ``root/artifacts``, served through the server (clients need no storage credentials)."""
    return ServerSettings(root, host, port).command()


def wait_until_healthy(uri: str, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Waits for ``uri/health``; raises a clear error if the server exits or never answers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(
                f"mlflow server exited with status {process.returncode} before answering at "
                f"{uri}; its output above says why"
            )
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise ConfigError(f"mlflow server at {uri} did not answer /health within {timeout_s:.0f} s")


def stop_process_group(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to the server's process group (its workers too), SIGKILL after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)  # the group id is the server's pid (own session)
        try:
            process.wait(timeout=grace_s)
            if sig == signal.SIGTERM:  # the workers may outlive the leader by a moment
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue
    process.wait()


class _StopRequested(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _ignore_stop_signals() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """Turns SIGTERM, SIGINT and SIGHUP into :class:`_StopRequested` while serving."""

    def handler(signum: int, _frame: object) -> None:
        _ignore_stop_signals()  # a second signal must not interrupt the shutdown
        raise _StopRequested(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_server(settings: ServerSettings) -> int:
    """Starts the server, says how clients connect, and serves until stopped.

    Returns 0 after a requested stop, non-zero when the server could not start or died.
    """
    settings.root.mkdir(parents=True, exist_ok=True)
    problem = port_problem(settings.host, settings.port)
    if problem is not None:
        raise ConfigError(
            f"cannot serve on {settings.host}:{settings.port}: {problem} (another server "
            "listens there?); stop it or choose another --port"
        )
    env = {**os.environ, **settings.environment()}
    process: subprocess.Popen | None = None
    with _stop_signals_raise():
        try:
            process = subprocess.Popen(settings.command(), env=env, start_new_session=True)
            wait_until_healthy(settings.uri, process)
            _check_host_names(settings)
            _print_connection(settings)
            code = process.wait()
            print(f"error: mlflow server exited with status {code}", file=sys.stderr, flush=True)
            return code or 1
        except _StopRequested as stop:
            print(f"stopping mlflow server ({stop})", file=sys.stderr, flush=True)
            return 0
        finally:
            _ignore_stop_signals()  # nothing may interrupt taking the server down
            if process is not None:
                stop_process_group(process)


def _check_host_names(settings: ServerSettings) -> None:
    """A server that answers ``/health`` but refuses its clients' ``Host`` is not serving."""
    rejected = rejected_host_headers(
        settings.uri, probe_names(settings.host, settings.allowed_hosts, settings.port)
    )
    if rejected:
        raise ConfigError(
            f"mlflow server answers 403 'Invalid Host header' to clients that address it as "
            f"{', '.join(rejected)}: add the names clients use with --allowed-hosts"
        )


def _print_connection(settings: ServerSettings) -> None:
    auth = settings.auth
    print(
        f"mlflow server on {settings.uri} (store {mask_password(settings.store_uri)}, "
        f"artifacts {settings.artifacts}, authentication {'on' if auth else 'off'})",
        flush=True,
    )
    print(f"clients: export MLFLOW_TRACKING_URI={settings.client_uri}", flush=True)
    if auth is not None:
        print(
            "         export MLFLOW_TRACKING_USERNAME=... MLFLOW_TRACKING_PASSWORD=... "
            f"(accounts: admin user '{auth.admin_username}', see the README)",
            flush=True,
        )
