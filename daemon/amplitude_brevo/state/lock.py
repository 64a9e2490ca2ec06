"""One writer per state file: an exclusive ``flock`` on ``<state path>.lock``, held until the store closes.

Why a sidecar file and ``flock``: SQLite's own locks last one transaction, so two daemons on one file
would both run, each re-reading and re-sending what the other delivers. The kernel drops an ``flock``
when its last descriptor closes, which includes the process dying by ``kill -9``: there is never a stale
lock to clean up, and the lock file itself is never deleted (deleting it while another process has it
open would let two processes each lock a different file of the same name).

The holder writes its pid and a short description into the file after locking, so a refused process can
name it; the content is informational only, the lock is the ``flock``.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

from amplitude_brevo import __version__
from amplitude_brevo.state.base import StateError, StateLocked


def lock_path(state_path: Path) -> Path:
    return state_path.with_name(state_path.name + ".lock")


class WriterLock:
    """A held lock; :meth:`release` (or process exit) gives it up."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_path: Path, *, why: str | None = None) -> WriterLock:
        """Take the lock without waiting; :class:`StateLocked` naming the holder if another has it.

        ``why`` (e.g. "needs migrating …") says in the refusal what the lock was wanted for.
        """
        path = lock_path(state_path)
        try:
            # Created 0600 like the state file; O_CLOEXEC (Python's default too) keeps children from
            # inheriting the descriptor and with it the lock.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"cannot open lock file {path} of state file {state_path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder_pid(fd)
            os.close(fd)
            raise StateLocked(_locked_message(state_path, pid, why), path=state_path, pid=pid) from None
        except OSError as exc:  # e.g. ENOLCK: a filesystem without locks
            os.close(fd)
            raise StateError(f"cannot lock {path} of state file {state_path}: {exc}") from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n{_description()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise StateError(f"cannot write lock file {path} of state file {state_path}: {exc}") from exc
        return cls(path, fd)

    def release(self) -> None:
        """Empty the file (so no later reader names a pid that has gone) and drop the lock; idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # informational content only; closing below is what matters
        finally:
            os.close(fd)


def _holder_pid(fd: int) -> int | None:
    try:
        first = os.pread(fd, 64, 0).split(b"\n", 1)[0]
        return int(first)
    except (OSError, ValueError):
        # Empty: the holder has locked but not written yet (or wrote something else).
        return None


def _locked_message(state_path: Path, pid: int | None, why: str | None) -> str:
    subject = f"state file {state_path} {why}, but it" if why else f"state file {state_path}"
    if pid is not None and pid == os.getpid():
        return (
            f"{subject} is already open for writing in this process (pid {pid}); "
            f"use that store, or open this one with lock=False"
        )
    holder = f"pid {pid}" if pid is not None else "pid unknown"
    return (
        f"{subject} is in use by another amplitude-brevo process ({holder}); "
        f"stop it first, or point state.path elsewhere"
    )


def _description() -> str:
    since = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    command = shlex.join(sys.argv)
    if len(command) > 200:
        command = command[:197] + "..."
    return f"amplitude-brevo {__version__}, since {since}: {command}"
