"""One writer at a time for the on-disk caches (the generated dataset, the feature cache).

Several trainings starting together on an empty cache would otherwise all build the same
files, each deleting or truncating what the others were writing or already reading. The lock
is an exclusive ``flock`` on a small lock file next to the cache entry; it is released when
the holder exits, even by a crash. Lock files are left in place: removing one while another
process waits on it would let a third process lock a new file and run concurrently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no inter-process lock; atomic renames still protect readers
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``path`` (created if missing), waiting for other holders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
