"""A real ``mlflow server`` subprocess on 127.0.0.1 with a sqlite store, for outage tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_audiodiag.cli.server import free_port, server_command
from support.processes import stop_group


@dataclass
class MlflowServer:
    """``mlflow server`` with one worker; ``restart`` keeps the port, the store and artifacts."""

    root: Path
    port: int = field(default_factory=free_port)
    startup_timeout_s: float = 60.0
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    starts: int = field(default=0, init=False)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / f"server-{self.starts}.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self, timeout_s: float = 1.0) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=timeout_s) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> MlflowServer:
        """Starts the server and waits until ``/health`` answers."""
        if self.running:
            raise RuntimeError(f"mlflow server on {self.uri} is already running")
        self.root.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        command = [*server_command(self.root, port=self.port), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() reaches the workers
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self._error(f"exited with code {self.process.returncode} before answering")
            if self.healthy(timeout_s=1.0):
                return self
            time.sleep(0.2)
        self.stop(kill=True)
        raise self._error(f"did not answer /health within {self.startup_timeout_s:.0f} s")

    def _error(self, problem: str) -> RuntimeError:
        output = self.log_path.read_text(errors="replace")[-4000:]
        return RuntimeError(f"mlflow server on {self.uri} {problem}. Its output:\n{output}")

    def stop(self, kill: bool = False) -> None:
        """Stops the server's whole process group (its workers too) and waits for it; with
        ``kill``, at once by SIGKILL (as a crash would)."""
        if self.process is None:
            return
        process, self.process = self.process, None
        if kill:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # group id = pid (start_new_session)
        stop_group(process)

    def restart(self) -> MlflowServer:
        """Stops the server if it runs, then starts it again on the same port and store."""
        self.stop()
        return self.start()

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
