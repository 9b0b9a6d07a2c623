"""Network checks of the server wrapper: is the port free, which ``Host`` names may clients
use, and does the running server accept them.

MLflow's security middleware answers 403 "Invalid Host header" to any request whose ``Host``
is not allowed (default: localhost and private addresses); ``/health`` is exempt, so a health
check alone passes while every remote client is refused.
"""

from __future__ import annotations

import contextlib
import socket
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
PROBE_PATH = "/api/3.0/mlflow/server-info"  # public (no login), behind the Host check
INVALID_HOST = "Invalid Host header"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound (e.g. another server listens there), or ``None``.

    Binds with ``SO_REUSEADDR`` as the server does, so only a listener makes it fail.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            return error.strerror or str(error)
    return None


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def local_address(host: str) -> str:
    """The address this machine reaches a server bound to ``host`` at."""
    if host in WILDCARD_HOSTS:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def machine_names() -> list[str]:
    """Names and IPv4 addresses remote clients may use for this machine."""
    names = [socket.gethostname(), socket.getfqdn()]
    with contextlib.suppress(OSError):
        names += socket.gethostbyname_ex(socket.gethostname())[2]
    return [name for name in dict.fromkeys(names) if name and not is_loopback(name)]


def allowed_hosts(host: str, extra: Sequence[str] = ()) -> list[str] | None:
    """The ``--allowed-hosts`` patterns for a server bound to ``host``.

    ``None`` (MLflow's default: localhost and private addresses) for a loopback-only server
    without ``extra``. A server on the network also accepts this machine's names and
    addresses, on any port; ``extra`` adds the names behind which it is published (a DNS
    name, a proxy); ``*`` accepts every name.
    """
    if "*" in extra:
        return ["*"]
    names = list(extra)
    if not is_loopback(host):
        names += machine_names()
        if host not in WILDCARD_HOSTS:
            names.append(host)
    if not names:
        return None
    from mlflow.server.security_utils import get_default_allowed_hosts

    patterns = list(get_default_allowed_hosts())
    for name in names:
        patterns += [name] if ":" in name or "*" in name else [name, f"{name}:*"]
    return list(dict.fromkeys(patterns))


def probe_names(host: str, extra: Sequence[str], port: int) -> list[str]:
    """``Host`` headers a check should send: each literal name clients may use, with the port."""
    names = [name for name in extra if "*" not in name]
    if not is_loopback(host):
        names += machine_names()
    return [name if ":" in name else f"{name}:{port}" for name in dict.fromkeys(names)]


def rejected_host_headers(uri: str, headers: Iterable[str], timeout_s: float = 5.0) -> list[str]:
    """The ``Host`` headers for which the server at ``uri`` answers 'Invalid Host header'."""
    rejected = []
    for header in headers:
        request = urllib.request.Request(uri.rstrip("/") + PROBE_PATH, headers={"Host": header})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):
                continue
        except urllib.error.HTTPError as error:
            body = error.read().decode("utf-8", "replace")
            if error.code == 403 and INVALID_HOST in body:
                rejected.append(header)
        except (urllib.error.URLError, OSError):
            continue  # not this check's business: the health check covers reachability
    return rejected
