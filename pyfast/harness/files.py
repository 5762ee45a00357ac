"""Files that are never torn, and output locations that are never shared by accident.

Every file a command writes is replaced atomically (:func:`atomic_write`). An output location (a run directory, a
reinforced file) is held by one process at a time (:class:`OutputLock`), and one that already holds a result is
refused unless the user said to continue it or to start over (:func:`claim_output`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from pyfast.harness.config import ConfigError


class OutputError(ConfigError):
    """An output location that cannot be used: a file where a directory is needed, not writable, in use by another
    process, or holding an earlier result that would be overwritten."""


def _fsync_dir(path: Path) -> None:
    if os.name == "posix":  # make a rename in this directory durable
        dir_fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write(path: str | os.PathLike, write: Callable, keep_previous: str | os.PathLike | None = None) -> None:
    """Write ``path`` so that it is either the old complete file or the new complete file, never a torn one.

    ``write(f)`` fills a temporary file (binary mode) in the same directory; it is flushed, fsync-ed and renamed
    over ``path`` with ``os.replace`` (atomic on POSIX and Windows). If ``write`` raises (or Ctrl-C arrives), the
    temporary file is removed and ``path`` is untouched.

    ``keep_previous``: where the file ``path`` held until now is kept (e.g. ``prev.pt`` beside ``last.pt``). It is
    hard-linked there (atomically, replacing an older one) just before the new file takes ``path``, so ``path`` is a
    complete file at every moment and ``keep_previous`` holds the one before it.
    """
    path = Path(path)
    tmp = _temporary_name(path)
    # os.open rather than tempfile.mkstemp: the file gets the umask's permissions (mkstemp's are 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            previous = Path(keep_previous)
            link = _temporary_name(previous)
            try:
                os.link(path, link)
            except OSError:  # a file system without hard links: copy
                shutil.copy2(path, link)
            os.replace(link, previous)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


class OutputLock:
    """An exclusive lock on an output location, held by one process (``with OutputLock(path, "--out"):``).

    ``path``: a run directory (the lock is ``path/.lock``) or a file (the lock is ``path.lock`` beside it). The lock
    is an ``flock`` on that file, so it goes away with the process that held it, however that process ended; the
    file keeps the pid of the holder for the message another process gets. ``what`` names the option in messages.
    """

    def __init__(self, path: str | os.PathLike, what: str, directory: bool = True):
        self.path = Path(path)
        self.what = what
        self.lock_path = self.path / ".lock" if directory else self.path.with_name(self.path.name + ".lock")
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:  # noqa: PYI034  (typing.Self needs Python 3.11)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(f"{self.what} {self.path} is in use by another pyfast process (pid {holder}); "
                                  f"wait for it to finish or choose another {self.what}") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock; the file stays (removing it would race a new holder)
            self._fd = None


def check_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Create the output directory ``path`` (and its parents) if needed; an :class:`OutputError` naming ``what`` if
    it is a file, or cannot be created or written."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file; it must be a directory (a new or an existing run directory)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{what} {path} cannot be created: {err.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path} is not writable")
    return path


def claim_output(path: Path, files: Iterable[str], *, resume: bool, overwrite: bool, describe: Callable[[], str],
                 what: str = "--out") -> None:
    """The rule for an output location that may hold an earlier result (the run files ``files`` in directory
    ``path``): with none of them it is free; with some, ``resume`` continues it and ``overwrite`` removes them
    (only them: other files in the directory are the user's); else an :class:`OutputError` saying what is there
    (``describe()``) and how to go on. Call it while holding the location's :class:`OutputLock`."""
    present = [name for name in files if (path / name).exists()]
    if not present or resume:
        return
    if not overwrite:
        raise OutputError(f"{what} {path} already holds {describe()}; pass --resume to continue it, --overwrite to "
                          f"start over (removing {', '.join(present)}), or choose another {what}")
    for name in present:
        (path / name).unlink()
    _fsync_dir(path)
