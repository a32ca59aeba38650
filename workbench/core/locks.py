"""One lock per folder: an exclusive OS lock (``fcntl.flock`` on ``<folder>/.lock``) that a long job (a training, an
evaluation) holds for its whole run, so a second job on the same folder fails at once, naming the holder.

:func:`folder_lock` opens the lock file with ``O_NOFOLLOW`` and refuses anything but a plain file of its own (a
symbolic link, a hard link to another file, a folder or a FIFO planted under the name, or a plain file holding
anything but a lock record, raises :class:`LockFileRefused`), so the holder's record (pid, host, start time, JSON)
is never written into a user's file. The same thread may nest the lock (a CLI locks, then the library function it
calls locks again).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

LOCK = ".lock"


class FolderBusy(OSError):
    """Another process (or thread) holds the lock of a folder."""


class LockFileRefused(OSError):
    """The lock file's name is taken by something the workbench must not write into (a link, a folder, ...)."""


_HELD: dict[str, tuple[int, int]] = {}  # lock path -> (thread holding it, depth): re-entrant within one thread
_GUARD = threading.Lock()


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096).decode("utf-8", "replace")
    try:
        info = json.loads(raw)
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return f"holder unknown ({raw.strip()[:80]!r})"


def _is_lock_record(fd: int) -> bool:
    """Whether the open lock file is empty (new) or holds a lock record the workbench wrote (JSON with pid, host,
    started), i.e. whether it may be overwritten with this holder's record."""
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4097)
    if not raw.strip():
        return True
    try:
        info = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    return isinstance(info, dict) and set(info) == {"pid", "host", "started"}


def _open_lock_file(path: Path) -> int:
    """A read-write descriptor of the plain lock file `path` (created if absent); never follows a link."""
    refuse = (f"refusing to use {str(path)!r} as a lock file: it is {{}}; the workbench writes its lock record only "
              f"into a plain file of its own. Remove it and run again")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP or path.is_symlink():
            raise LockFileRefused(refuse.format("a symbolic link")) from None
        if e.errno == errno.EISDIR:
            raise LockFileRefused(refuse.format("a folder")) from None
        raise
    info = os.fstat(fd)
    fault = ("not a plain file" if not stat.S_ISREG(info.st_mode) else
             f"a hard link shared with {info.st_nlink - 1} other name(s)" if info.st_nlink > 1 else None)
    if fault:
        os.close(fd)
        raise LockFileRefused(refuse.format(fault))
    return fd


@contextlib.contextmanager
def folder_lock(directory: str | os.PathLike, what: str = "folder", by: str = "job",
                busy: type[FolderBusy] = FolderBusy) -> Iterator[Path]:
    """Hold an exclusive OS lock on `directory` (created if needed) for the block; yields the lock file's path.

    If another process or thread holds it, raises `busy` (a :class:`FolderBusy`): "<what> '<dir>' is in use by
    another <by> (pid P on host H, started T); wait for it to finish or choose another folder". A lock name taken by a
    link or anything but a plain file raises :class:`LockFileRefused`. Not POSIX (no ``fcntl``): no lock.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield Path(directory)
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK
    key, me = str(path.resolve()), threading.get_ident()
    with _GUARD:
        held = _HELD.get(key)
        if held is not None and held[0] == me:
            _HELD[key] = (me, held[1] + 1)
    if held is not None and held[0] == me:
        try:
            yield path
        finally:
            with _GUARD:
                _HELD[key] = (me, _HELD[key][1] - 1)
        return
    fd = _open_lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy(f"{what} {str(directory)!r} is in use by another {by} ({_holder(fd)}); wait for it to "
                       f"finish or choose another folder") from None
        if not _is_lock_record(fd):
            raise LockFileRefused(f"refusing to use {str(path)!r} as a lock file: it holds something else than a "
                                  "workbench lock record (pid, host, start time); the workbench never overwrites a "
                                  "file it did not write. Move it away and run again")
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        with _GUARD:
            _HELD[key] = (me, 1)
        try:
            yield path
        finally:
            with _GUARD:
                _HELD.pop(key, None)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
