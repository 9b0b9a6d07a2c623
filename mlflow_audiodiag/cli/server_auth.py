"""MLflow's basic-auth app for the team server: its config file and the admin's password.

MLflow reads the auth settings from an ini file named by ``MLFLOW_AUTH_CONFIG_PATH``. The
wrapper writes that file into the server's folder (readable by its owner only, since a
database URI may hold a password) and hands the admin password to the server through
``MLFLOW_AUTH_ADMIN_PASSWORD`` only: it is never written to the file, the command line or the
output.
"""

from __future__ import annotations

import configparser
import io
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from mlflow_audiodiag.errors import ConfigError

AUTH_CONFIG_NAME = "basic_auth.ini"
AUTH_DATABASE_NAME = "basic_auth.db"
CONFIG_PATH_ENV = "MLFLOW_AUTH_CONFIG_PATH"
PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
SECRET_KEY_NAME = "flask_secret_key"
PERMISSIONS = ("NO_PERMISSIONS", "READ", "USE", "EDIT", "MANAGE")
MIN_PASSWORD_CHARS = 12  # MLflow refuses shorter passwords


@dataclass(frozen=True)
class AuthSettings:
    """Who administers the server and what everyone else may do by default.

    ``default_permission`` applies to every experiment a user has no explicit permission on;
    ``NO_PERMISSIONS`` keeps experiments private to their creator (who gets ``MANAGE``) until
    shared, ``READ`` lets everyone compare everything.
    """

    admin_username: str = "admin"
    admin_password_file: Path | None = None
    database_uri: str | None = None
    default_permission: str = "NO_PERMISSIONS"
    login_cache_seconds: int = 60

    def __post_init__(self) -> None:
        if self.default_permission not in PERMISSIONS:
            raise ConfigError(
                f"default permission {self.default_permission!r} is not one of "
                f"{', '.join(PERMISSIONS)}"
            )
        if self.login_cache_seconds < 0:
            raise ConfigError(f"login cache seconds must be >= 0, got {self.login_cache_seconds}")
        if not self.admin_username.strip():
            raise ConfigError("the admin user name is empty: pass --admin-username NAME")

    def database(self, root: Path) -> str:
        """Where the users and permissions live: ``database_uri``, else a sqlite file in
        the server's folder."""
        return self.database_uri or f"sqlite:///{root.resolve() / AUTH_DATABASE_NAME}"


def write_auth_config(root: Path, auth: AuthSettings) -> Path:
    """Writes ``root/basic_auth.ini`` (mode 0600) and returns its path."""
    values = {
        "default_permission": auth.default_permission,
        "database_uri": auth.database(root),
        "admin_username": auth.admin_username,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        # Each request's login costs a slow password hash; a worker remembers a verified login
        # this long (a password change made through another worker applies after it).
        "auth_cache_ttl_seconds": str(auth.login_cache_seconds),
    }
    config = configparser.ConfigParser(interpolation=None)
    # MLflow reads the file with interpolation on: a '%' (URL-encoded passwords) must be '%%'.
    config["mlflow"] = {key: value.replace("%", "%%") for key, value in values.items()}
    path = root / AUTH_CONFIG_NAME
    text = io.StringIO()
    text.write("# Written by mlflow-audiodiag server; the admin password is not stored.\n")
    config.write(text)
    _write_private(path, text.getvalue())
    return path


def _write_private(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` readable by its owner only, atomically."""
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(partial, path)


def secret_key(root: Path) -> str:
    """The key the auth app signs its CSRF tokens with: ``MLFLOW_FLASK_SERVER_SECRET_KEY``,
    else one generated once and kept in ``root`` (so restarts keep sessions valid)."""
    if os.environ.get(SECRET_KEY_ENV):
        return os.environ[SECRET_KEY_ENV]
    path = root / SECRET_KEY_NAME
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    key = secrets.token_hex(32)
    _write_private(path, key + "\n")
    return key


def admin_password(auth: AuthSettings, root: Path) -> str | None:
    """The admin password from ``--admin-password-file`` or ``MLFLOW_AUTH_ADMIN_PASSWORD``.

    MLflow needs it only to create the admin user on the first start; later starts may go
    without it. A first start (no sqlite user database yet) without one is refused here.
    """
    password = None
    if auth.admin_password_file is not None:
        try:
            password = auth.admin_password_file.read_text(encoding="utf-8").strip("\r\n")
        except OSError as error:
            raise ConfigError(
                f"cannot read the admin password file {auth.admin_password_file}: {error.strerror}"
            ) from error
    elif os.environ.get(PASSWORD_ENV):
        password = os.environ[PASSWORD_ENV]
    if password is not None and len(password) < MIN_PASSWORD_CHARS:
        where = auth.admin_password_file or PASSWORD_ENV
        raise ConfigError(
            f"the admin password from {where} has {len(password)} characters; MLflow needs at "
            f"least {MIN_PASSWORD_CHARS}"
        )
    first_start = auth.database_uri is None and not (root / AUTH_DATABASE_NAME).exists()
    if password is None and first_start:
        raise ConfigError(
            f"authentication is on and no admin user exists yet: set {PASSWORD_ENV} or pass "
            f"--admin-password-file FILE (at least {MIN_PASSWORD_CHARS} characters) for the "
            f"first start; user '{auth.admin_username}' is created with it"
        )
    return password
