"""A private PostgreSQL cluster: ``initdb`` in a temporary folder, ``pg_ctl`` on a free
127.0.0.1 port with its unix socket inside that folder, always stopped and removed.

PostgreSQL refuses to run as root, so under root the cluster belongs to an unprivileged user
(``postgres``, or ``$AUDIODIAG_POSTGRES_USER``). Durability settings are off (``fsync``,
``synchronous_commit``): the cluster lives as long as one test session or benchmark.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_audiodiag.cli.server import free_port
from support.processes import is_alive

REQUIRE_ENV = "AUDIODIAG_REQUIRE_POSTGRES"
USER_ENV = "AUDIODIAG_POSTGRES_USER"
BIN_ENV = "AUDIODIAG_POSTGRES_BIN"
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    "shared_buffers": "64MB",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


def find_bin_dir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: ``$AUDIODIAG_POSTGRES_BIN``, the PATH, or the
    newest ``/usr/lib/postgresql/<version>/bin`` (Debian puts them there)."""
    explicit = os.environ.get(BIN_ENV)
    candidates = [Path(explicit)] if explicit else []
    debian = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    candidates += sorted(debian, key=lambda p: int(p.parent.name), reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def missing_reason() -> str | None:
    """Why a cluster cannot be made here (what to install), or ``None``."""
    if find_bin_dir() is None:
        return (
            "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql, "
            f"or set {BIN_ENV} to their folder"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return 'psycopg (3) is not installed: pip install -e ".[team]"'
    if os.geteuid() == 0:
        name = os.environ.get(USER_ENV, "postgres")
        try:
            pwd.getpwnam(name)
        except KeyError:
            return (
                f"running as root, and PostgreSQL refuses root: create the unprivileged user "
                f"{name!r} (the postgresql package does) or set {USER_ENV}"
            )
    return None


@dataclass
class PostgresCluster:
    """One cluster; ``uri(db)`` gives SQLAlchemy URIs with a password over TCP."""

    bin_dir: Path
    port: int = field(default_factory=free_port)
    user: str = "audiodiag"
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    root: Path | None = field(default=None, init=False)

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.root is not None
        return self.root / "socket"

    def uri(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _owner(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        return pwd.getpwnam(os.environ.get(USER_ENV, "postgres"))

    def _run(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
        owner = self._owner()
        done = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            user=owner.pw_uid if owner else None,
            group=owner.pw_gid if owner else None,
            extra_groups=[] if owner else None,
            cwd=self.root,
            env={**os.environ, "LC_ALL": "C"},
            start_new_session=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
        return done

    def start(self) -> PostgresCluster:
        # /tmp, not pytest's tmp_path: the cluster's owner must be able to reach the folder.
        self.root = Path(tempfile.mkdtemp(prefix="audiodiag-pg-"))
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        self.socket_dir.mkdir()
        owner = self._owner()
        if owner is not None:
            for path in (self.root, password_file, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        try:
            self._run(
                "initdb", "-D", str(self.data_dir), "-U", self.user, f"--pwfile={password_file}",
                "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
            )  # fmt: skip
            password_file.unlink()
            with (self.data_dir / "postgresql.conf").open("a") as conf:
                for key, value in {
                    **SETTINGS,
                    "port": str(self.port),
                    "unix_socket_directories": f"'{self.socket_dir}'",
                }.items():
                    conf.write(f"{key} = {value}\n")
            self._run(
                "pg_ctl", "-D", str(self.data_dir), "-l", str(self.root / "server.log"),
                "-w", "-t", "120", "start",
            )  # fmt: skip
        except BaseException:
            self.stop()
            raise
        return self

    def create_database(self, name: str) -> str:
        """Creates database ``name``; returns its URI."""
        import psycopg

        with psycopg.connect(self.uri("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Stops the cluster (fast, then immediate, then SIGKILL by PID) and removes it."""
        if self.root is None:
            return
        pid = self._postmaster_pid()
        if pid is not None:
            for mode in ("fast", "immediate"):
                try:
                    self._run(
                        "pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "30", "stop"
                    )
                    break
                except (RuntimeError, subprocess.TimeoutExpired):
                    continue
            _kill_until_gone(pid)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _kill_until_gone(pid: int, timeout_s: float = 10.0) -> None:
    """SIGKILL to the postmaster (its backends exit with it) until it is gone."""
    deadline = time.monotonic() + timeout_s
    while is_alive(pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the PostgreSQL postmaster {pid} survived SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
