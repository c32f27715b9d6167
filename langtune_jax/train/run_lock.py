"""``train.lock``: one training process per run folder.

The lock file holds the pid, host and start time of the process training in the folder. A second
process stops at once with who holds it; a lock left by a dead process on this host is taken over
with a warning (a lock from another host is never taken over: its process cannot be checked).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
from pathlib import Path

from langtune_jax.train.run_folder import LOCK_FILE, RunFolderRefused

log = logging.getLogger("langtune_jax")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """``RUN_DIR/train.lock``: held by the one process training in a run folder.

    The lock file is made complete under a temporary name and hard-linked into place, so it is
    created atomically and never read half-written.
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_FILE
        self._held = False

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunFolderRefused` when a live process holds it."""
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        tmp = self.path.with_name(f".{LOCK_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(me), encoding="utf-8")
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    self._take_over_if_stale()
                    continue
                self._held = True
                return
            raise RunFolderRefused(f"could not take the lock {self.path}; retry")
        finally:
            tmp.unlink(missing_ok=True)

    def _take_over_if_stale(self) -> None:
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            holder = {}
        pid, host = holder.get("pid"), holder.get("host")
        here = socket.gethostname()
        if isinstance(pid, int) and host == here and not _alive(pid):
            log.warning(
                "taking over the stale lock %s of process %d on %s, which is gone (killed?)",
                self.path,
                pid,
                host,
            )
            self.path.unlink(missing_ok=True)
            return
        raise RunFolderRefused(
            f"{self.path.parent} is in use: process {pid} on {host} is training in it (since "
            f"{holder.get('since')}); wait for it to finish, or if that process is gone, delete "
            f"{self.path}"
        )

    def release(self) -> None:
        """Remove the lock file if this process holds it."""
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False
