"""Write-then-rename, so a crash never leaves a half-written artifact where a good one was.

The temporary file sits beside the target, named ``.{stem}.{random}.{host}-{pid}.partial{suffix}``,
and is flushed to disk before the rename. A run killed mid-write leaves that file behind; the
next write into the same folder removes it once it is certainly stale: its process (same host
tag) no longer runs, or, for a file from another host or from an older release, it has not been
touched for :data:`STALE_AFTER_S`. A file that a live process may still be writing is never removed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import tempfile
import time
import zlib
from pathlib import Path
from typing import Iterator

PARTIAL_MARK = ".partial"
STALE_AFTER_S = 24 * 3600  # no artifact takes a day between two writes to its temporary file
# .{stem}.{8 random chars}[.{host}-{pid}].partial{suffix}; the host-pid tag is absent in files
# written before it existed
_PARTIAL_NAME = re.compile(r"^\..*\.[a-z0-9_]{8}(?:\.([0-9a-f]{8})-(\d+))?\.partial(?:\.[^.]*)?$")
_swept: set[Path] = set()  # folders already cleaned by this process


class TargetExistsError(FileExistsError):
    """``atomic_path(..., replace=False)`` found its target taken; the new file was discarded."""


@functools.cache
def _host_tag() -> str:
    """8 hex digits naming this host and PID namespace (a PID means nothing elsewhere)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{zlib.crc32(f'{socket.gethostname()}:{namespace}'.encode()):08x}"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_stale_partial(path: Path, now: float | None = None) -> bool:
    """True for a temporary file of :func:`atomic_path` that no live process can still be writing."""
    match = _PARTIAL_NAME.match(path.name)
    if not match:
        return False
    host, pid = match.groups()
    if host == _host_tag():
        return not _running(int(pid))
    try:
        age = (time.time() if now is None else now) - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    return age > STALE_AFTER_S


def remove_stale_partials(folder: Path) -> list[Path]:
    """Delete the stale temporary files in ``folder`` (see :func:`is_stale_partial`); return them."""
    removed = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            path = Path(entry.path)
            if PARTIAL_MARK in entry.name and entry.is_file(follow_symlinks=False) and is_stale_partial(path):
                with contextlib.suppress(FileNotFoundError):  # another process removed it first
                    path.unlink()
                    removed.append(path)
    return removed


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the data itself was synced
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def _move_without_replacing(tmp: Path, final: Path) -> None:
    try:
        os.link(tmp, final)  # fails if final exists: atomic, unlike a check then a rename
    except FileExistsError:
        raise TargetExistsError(f"{final}: exists") from None
    except OSError:  # no hard links on this file system (FAT, some network shares)
        if final.exists():
            raise TargetExistsError(f"{final}: exists") from None
        os.replace(tmp, final)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    The temporary name keeps the final suffix (``.onnx``, ``.png``...) so writers that dispatch
    on the extension still work. With ``replace=False`` an existing ``path`` is never replaced,
    even one created by another process while the block ran: :class:`TargetExistsError`.
    """
    final = Path(path)
    folder = final.parent
    folder.mkdir(parents=True, exist_ok=True)
    if folder.resolve() not in _swept:
        remove_stale_partials(folder)
        _swept.add(folder.resolve())
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{final.stem}.", suffix=f".{_host_tag()}-{os.getpid()}{PARTIAL_MARK}{final.suffix}", dir=folder
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; artifacts are read by other users (e.g. a Triton server)
        umask = os.umask(0)
        os.umask(umask)
        if tmp.is_file():
            tmp.chmod(0o666 & ~umask)
            _fsync(tmp)  # the data is on disk before the name says it is complete
        if replace:
            os.replace(tmp, final)
        else:
            _move_without_replacing(tmp, final)
        _fsync(folder)
    finally:
        tmp.unlink(missing_ok=True)
