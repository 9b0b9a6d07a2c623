"""The ``server`` command's options, and the :class:`ServerSettings` they make."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlflow_audiodiag.cli.server import ServerSettings
from mlflow_audiodiag.cli.server_auth import PERMISSIONS, AuthSettings


def add_server_parser(commands: argparse._SubParsersAction) -> None:
    server = commands.add_parser(
        "server",
        help="start an mlflow server: a team's (PostgreSQL, artifact serving, logins) or a "
        "local one to try it (sqlite)",
        description="Without options: a sqlite store and artifacts in --root, on 127.0.0.1, to "
        "try it out. For a team: --backend-store-uri postgresql://USER@HOST/DB "
        "--artifacts-destination DIR_OR_URI --app-name basic-auth (the admin password comes "
        "from MLFLOW_AUTH_ADMIN_PASSWORD or --admin-password-file on the first start).",
    )
    server.add_argument("--root", type=Path, default=Path("mlflow-server"), help="its folder")
    server.add_argument(
        "--host", default="127.0.0.1", help="interface to bind; 0.0.0.0 to serve the network"
    )
    server.add_argument("--port", type=int, default=5000)
    server.add_argument(
        "--backend-store-uri",
        default=None,
        help="SQLAlchemy URI of the store, e.g. postgresql://mlflow@db.example/mlflow "
        "(default: sqlite file ROOT/mlflow.db)",
    )
    server.add_argument(
        "--artifacts-destination",
        default=None,
        help="where served artifacts are stored: a folder or e.g. s3://bucket/path "
        "(default: ROOT/artifacts)",
    )
    server.add_argument(
        "--app-name",
        choices=["basic-auth"],
        default=None,
        help="basic-auth: every client logs in (MLFLOW_TRACKING_USERNAME/PASSWORD)",
    )
    server.add_argument("--admin-username", default="admin", help="the auth app's admin user")
    server.add_argument(
        "--admin-password-file",
        type=Path,
        default=None,
        help="file holding the admin password (else MLFLOW_AUTH_ADMIN_PASSWORD); needed on the "
        "first start only",
    )
    server.add_argument(
        "--auth-database-uri",
        default=None,
        help="where users and permissions live (default: sqlite file ROOT/basic_auth.db)",
    )
    server.add_argument(
        "--default-permission",
        default="NO_PERMISSIONS",
        choices=PERMISSIONS,
        help="what users may do on experiments they have no explicit permission on",
    )
    server.add_argument(
        "--login-cache-seconds",
        type=int,
        default=60,
        help="how long a server worker trusts a verified login (0: verify every request)",
    )
    server.add_argument(
        "--allowed-hosts",
        action="append",
        default=[],
        help="host name(s) clients use to reach the server, comma-separated (repeatable); "
        "this machine's names are allowed when serving the network, '*' allows any",
    )
    server.add_argument("--workers", type=int, default=None, help="server worker processes")


def server_settings(args: argparse.Namespace) -> ServerSettings:
    auth = None
    if args.app_name == "basic-auth":
        auth = AuthSettings(
            admin_username=args.admin_username,
            admin_password_file=args.admin_password_file,
            database_uri=args.auth_database_uri,
            default_permission=args.default_permission,
            login_cache_seconds=args.login_cache_seconds,
        )
    hosts = tuple(h.strip() for value in args.allowed_hosts for h in value.split(",") if h.strip())
    return ServerSettings(
        root=args.root,
        host=args.host,
        port=args.port,
        backend_store_uri=args.backend_store_uri,
        artifacts_destination=args.artifacts_destination,
        auth=auth,
        allowed_hosts=hosts,
        workers=args.workers,
    )
