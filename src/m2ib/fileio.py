"""Atomic file writes (a crash never leaves a half-written result behind) and a folder lock
(two runs never write the same results file at once)."""

from __future__ import annotations

import os
import tempfile
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import InputError

LOCK_NAME = ".m2ib.lock"


def writable_folder(path: str | os.PathLike, name: str) -> Path:
    """Create the folder ``path`` and prove it is writable, or raise one :class:`InputError` line that
    names the argument ``name`` (``--out``, ``directory``): a file in its place or above it, a place
    that cannot be created or written. Used before any work, so the error does not come after it."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            raise InputError(f"{name} {path}: {parent} is a file, not a folder; pick another {name}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".m2ib-probe-"):
            pass
    except OSError as exc:
        raise InputError(f"{name} {path}: cannot write there ({exc.strerror or exc}); pick a writable folder") from None
    return path


def writable_files(folder: Path, files: Sequence[str], name: str) -> None:
    """Each of ``files`` can be written in ``folder`` (already proven by :func:`writable_folder`): no
    folder has its name. ``name`` is the argument an error names (``stem``)."""
    for file in files:
        path = folder / file
        if path.is_dir():
            raise InputError(f"{name} {path}: is a folder, not a file; remove it or pick another name")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk, then rename
    it over ``path``. Missing folders are created; on any error the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (an OS lock on ``folder/.m2ib.lock``) for the block;
    ``what`` names the holder in the error another process gets (e.g. "m2ib evaluate").

    A second process that asks for it fails at once with a one-line error instead of appending
    to (or repairing the torn tail of) a results file that another run is writing. The OS drops
    the lock when the holder exits, however it exits, so a crash never leaves a stale lock.
    Where the platform or file system has no locks (Windows, some network mounts), the block
    runs unguarded, with a warning.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fcntl: types.ModuleType | None
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None
    if fcntl is None:
        warnings.warn(f"{folder}: no file locks on this platform; make sure no other run writes there", stacklevel=3)
        yield
        return
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, _, holder = os.pread(fd, 256, 0).decode("utf-8", "replace").partition(" ")
            raise InputError(
                f"{folder} is in use by another {holder.strip() or 'run'} (pid {pid or '?'}): "
                "wait for it to end, or use another --out"
            ) from None
        except OSError as exc:  # a file system without locks
            warnings.warn(f"{folder}: cannot lock ({exc.strerror}); make sure no other run writes there", stacklevel=3)
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {what}".encode(), 0)  # for the error a second run shows
        yield
    finally:
        os.close(fd)  # releases the lock
