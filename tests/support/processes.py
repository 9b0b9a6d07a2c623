"""Child processes that never outlive their test.

Every child starts in its own session (``start_new_session=True``), so its process group id is
its PID and reaches whatever it spawns (a trainer's delivery process, ``mlflow run``'s
training, a server's workers). On leaving :func:`spawned` (normally, by an exception or a
timeout) the whole group is terminated, then killed, by that id, and waited for. A timed-out
``communicate()`` alone would leave the child running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

GRACE_S = 3.0
"""How long a group gets to exit after SIGTERM before SIGKILL."""


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel whether the group still exists
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat[stat.rindex(")") + 2] != "Z"


def descendants(pid: int) -> list[int]:
    """Live processes below ``pid`` (children, their children, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z":
                parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in parents.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_empty(pgid: int, timeout_s: float, leader: subprocess.Popen | None = None) -> bool:
    """Waits until the group has no live member (and ``leader``, if given, is reaped)."""
    deadline = time.monotonic() + timeout_s
    while (leader is not None and leader.poll() is None) or group_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop_group(process: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """Terminates, then kills, the process group led by ``process``, and reaps the leader.

    The group is stopped even when the leader has already exited: its children may not have.
    Descendants that left the group (a server started in its own session) are killed by PID.
    """
    pgid = process.pid
    members = group_members(pgid)
    family = {pid for member in members for pid in descendants(member)} - set(members)
    if process.poll() is None or members:
        _signal_group(pgid, signal.SIGTERM)
        if not _wait_empty(pgid, grace_s, leader=process):
            _signal_group(pgid, signal.SIGKILL)
    process.wait()
    for pid in family:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if is_alive(pid):
                os.kill(pid, signal.SIGKILL)
    if not _wait_empty(pgid, timeout_s=10.0):
        raise RuntimeError(f"processes {group_members(pgid)} of group {pgid} survived SIGKILL")


@contextlib.contextmanager
def spawned(args: Sequence[str], **popen_kwargs) -> Iterator[subprocess.Popen]:
    """``subprocess.Popen(args, ...)`` in a new session; its group is stopped on exit."""
    process = subprocess.Popen(list(args), start_new_session=True, **popen_kwargs)
    try:
        yield process
    finally:
        stop_group(process)


def run(
    args: Sequence[str], *, timeout_s: float, text: bool = True, **popen_kwargs
) -> subprocess.CompletedProcess:
    """Like ``subprocess.run(args, capture_output=True, timeout=timeout_s)``, except that on
    timeout (or any error) the child's whole process group is gone before this returns."""
    popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
    popen_kwargs.setdefault("stdout", subprocess.PIPE)
    popen_kwargs.setdefault("stderr", subprocess.PIPE)
    with spawned(args, text=text, **popen_kwargs) as process:
        try:
            out, err = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop_group(process)
            out, err = _drain(process)
            raise subprocess.TimeoutExpired(list(args), timeout_s, output=out, stderr=err) from None
    return subprocess.CompletedProcess(list(args), process.returncode, out, err)


def _drain(process: subprocess.Popen) -> tuple[str | bytes | None, str | bytes | None]:
    """What a stopped child left in its pipes (nothing if a pipe is held open elsewhere)."""
    try:
        return process.communicate(timeout=5)
    except (subprocess.TimeoutExpired, ValueError):
        return None, None


def communicate_all(
    processes: dict[str, subprocess.Popen], timeout_s: float
) -> dict[str, tuple[int, str, str]]:
    """Waits for processes running side by side, sharing one deadline; returns
    ``name -> (returncode, stdout, stderr)``. On timeout every group is stopped and the error
    names the processes still running."""
    deadline = time.monotonic() + timeout_s
    results: dict[str, tuple[int, str, str]] = {}
    for name, process in processes.items():
        try:
            out, err = process.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            late = [n for n, p in processes.items() if p.poll() is None]
            for other in processes.values():
                stop_group(other)
            raise subprocess.TimeoutExpired(
                f"{', '.join(late)} (still running)", timeout_s
            ) from None
        results[name] = (process.returncode, out, err)
    return results
