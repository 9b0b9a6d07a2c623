"""The team set-up as an operator starts it: ``mlflow-audiodiag server`` with a PostgreSQL
store, artifact serving and MLflow's basic-auth app, on a free 127.0.0.1 port; plus users."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_audiodiag.cli.server import free_port
from support.processes import stop_group

CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@dataclass
class TeamServer:
    """``mlflow-audiodiag server`` in team mode; ``users`` maps names to passwords."""

    root: Path
    store_uri: str
    auth_database_uri: str | None = None
    workers: int = 2
    port: int = field(default_factory=free_port)
    admin_password: str = field(default_factory=lambda: secrets.token_hex(12))
    users: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "wrapper.log"

    def start(self, timeout_s: float = 180.0) -> TeamServer:
        self.root.mkdir(parents=True, exist_ok=True)
        password_file = self.root / "admin-password"
        password_file.write_text(self.admin_password + "\n")
        password_file.chmod(0o600)
        self.users["admin"] = self.admin_password
        command = [
            sys.executable, "-m", "mlflow_audiodiag.cli.main", "server",
            "--root", str(self.root / "server"), "--port", str(self.port),
            "--backend-store-uri", self.store_uri,
            "--artifacts-destination", str(self.root / "artifacts"),
            "--app-name", "basic-auth", "--admin-password-file", str(password_file),
            "--workers", str(self.workers),
        ]  # fmt: skip
        if self.auth_database_uri:
            command += ["--auth-database-uri", self.auth_database_uri]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        for name in ("MLFLOW_TRACKING_URI", *CREDENTIAL_VARS):
            env.pop(name, None)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            output = self.log_path.read_text(errors="replace")
            if "mlflow server on" in output:
                return self
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"the team server did not start:\n{output[-4000:]}")
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the team server did not start within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process is not None:
            process, self.process = self.process, None
            stop_group(process, grace_s=15.0)

    def env(self, user: str | None, password: str | None = None) -> dict[str, str]:
        """The environment of a client process logged in as ``user`` (``None``: anonymous)."""
        env = {**os.environ, "MLFLOW_TRACKING_URI": self.uri}
        for name in CREDENTIAL_VARS:
            env.pop(name, None)
        if user is not None:
            env["MLFLOW_TRACKING_USERNAME"] = user
            env["MLFLOW_TRACKING_PASSWORD"] = password or self.users[user]
        return env

    @contextlib.contextmanager
    def logged_in(self, user: str) -> Iterator[None]:
        """This process talks to the server as ``user`` (MLflow reads the variables per call)."""
        saved = {name: os.environ.get(name) for name in CREDENTIAL_VARS}
        os.environ["MLFLOW_TRACKING_USERNAME"] = user
        os.environ["MLFLOW_TRACKING_PASSWORD"] = self.users[user]
        os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def create_user(self, name: str) -> str:
        """Creates user ``name`` (as the admin, through MLflow's auth API); returns the password."""
        from mlflow.server import get_app_client

        password = secrets.token_hex(12)
        with self.logged_in("admin"):
            get_app_client("basic-auth", tracking_uri=self.uri).create_user(name, password)
        self.users[name] = password
        return password

    def grant(self, granter: str, user: str, experiment_id: str, permission: str) -> None:
        """``granter`` (the admin or a MANAGE holder) gives ``user`` ``permission`` on it."""
        from mlflow.server import get_app_client

        with self.logged_in(granter):
            get_app_client("basic-auth", tracking_uri=self.uri).grant_user_permission(
                user, "experiment", experiment_id, permission
            )
