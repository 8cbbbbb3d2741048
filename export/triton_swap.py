"""Replacing models in a Triton repository that may be shared, without losing anything.

Triton loads every sub-folder of a repository as a model, hidden ones too (a ``.staging`` folder
fails the start of the bundled 2.51 server: "No model version was found"), so new models are
never built inside the repository. :func:`replace_models` builds them in
``.<repo>.rsd-staging`` beside it (same file system), lets the caller check them, then swaps each
with the old one by one atomic exchange of the two folders: every model folder in the
repository is at all times a complete model, old or new. Only models named in the repository's
manifest (``rsd_repository.json``) are ever replaced. The staging folder's ``rsd_staging.json``
records the repository and, once every model is built, each new folder's inode: a run that
finds it (after a kill) finishes that swap first. One writer at a time per repository.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator

from rsd_deploy.atomic import atomic_path

from .triton_config import RepositoryError

MANIFEST = "rsd_repository.json"  # names the models rsd-deploy wrote: the only ones it replaces
STAGING_SUFFIX = ".rsd-staging"  # new models are built in .<repo>.rsd-staging beside the repository
_STAGING_MARKER = "rsd_staging.json"


def staging_folder(repository: Path) -> Path:
    """Where new models of ``repository`` are built: beside it, never inside it."""
    return repository.parent / f".{repository.name}{STAGING_SUFFIX}"


def _write_json(path: Path, value: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2) + "\n")


def _read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RepositoryError(f"{path}: unreadable {what} ({error})") from None
    if not isinstance(value, dict):
        raise RepositoryError(f"{path}: unreadable {what} (not a JSON object)")
    return value


def _inode(path: Path) -> int | None:
    try:
        return os.lstat(path).st_ino
    except FileNotFoundError:
        return None


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> None:
    """Swap two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``). Where the kernel or
    file system cannot, move ``b`` aside into ``a``'s folder and ``a`` in: a kill between the two
    renames leaves ``b`` missing until the next run finishes the swap."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(b))
    aside = a.with_name(a.name + ".replaced")
    os.rename(b, aside)
    os.rename(a, b)


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` to disk before it is swapped in."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(Path(root) / name, "rb") as file:
                os.fsync(file.fileno())
        descriptor = os.open(root, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@contextlib.contextmanager
def _locked(repository: Path) -> Iterator[None]:
    """One writer at a time per repository (an advisory lock on the folder itself)."""
    import fcntl

    descriptor = os.open(repository, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RepositoryError(f"{repository}: another rsd-deploy run is writing this repository now") from None
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _swap_in(repository: Path, staging: Path, marker: dict) -> None:
    """Write the manifest, swap every staged model in, remove the staging folder (old models)."""
    _write_json(repository / MANIFEST, marker["manifest"])  # ownership recorded before any folder moves
    for name, inode in marker["models"].items():
        new, target = staging / name, repository / name
        if _inode(target) == inode:
            continue  # swapped in before an interruption
        if _inode(new) != inode:
            raise RepositoryError(f"{staging}: the interrupted update of {repository} cannot be finished ({name} is gone); "
                                  f"remove {staging} and write the repository again")
        if _inode(target) is None:
            os.rename(new, target)
        else:
            _exchange(new, target)
    shutil.rmtree(staging)


def _finish_interrupted_update(repository: Path) -> str | None:
    """Complete (or discard) what a killed run left in the staging folder; say what was done."""
    staging = staging_folder(repository)
    if not staging.exists() and not staging.is_symlink():
        return None
    marker_path = staging / _STAGING_MARKER
    if staging.is_symlink() or not staging.is_dir() or (not marker_path.is_file() and any(staging.iterdir())):
        raise RepositoryError(f"{staging}: in the way of this repository's staging folder and not made by rsd-deploy; move it")
    if not marker_path.is_file():  # killed between creating the folder and its marker
        staging.rmdir()
        return None
    marker = _read_json(marker_path, "staging record")
    if marker.get("repository") != str(repository):
        raise RepositoryError(f"{staging}: staging folder of {marker.get('repository')}, not of {repository}; move it")
    if marker.get("models"):
        _swap_in(repository, staging, marker)
        return f"finished the interrupted update of {repository}"
    shutil.rmtree(staging)  # a build killed before its swap: the repository was never touched
    return f"removed the unfinished build {staging}"


def _check_target(repository: Path) -> Path:
    """The repository folder (absolute), checked: a writable folder or creatable, not a link,
    with a writable parent on the same file system for the staging folder."""
    if repository.is_symlink():
        raise RepositoryError(f"{repository}: a symbolic link; give the folder it points to")
    repository = repository.absolute()
    if repository.exists() and not repository.is_dir():
        raise RepositoryError(f"{repository}: exists and is not a folder")
    existing = repository if repository.exists() else repository.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RepositoryError(f"{existing}: not writable")
    parent = repository.parent
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise RepositoryError(f"{parent}: not writable; models are built beside the repository in "
                              f"{staging_folder(repository).name} and swapped in whole")
    if repository.exists() and os.stat(repository).st_dev != os.stat(parent).st_dev:
        raise RepositoryError(f"{repository}: a mount point; models are built beside the repository and renamed in, "
                              "so write to a folder inside it (and serve that folder)")
    return repository


def _owned_models(repository: Path) -> set[str]:
    path = repository / MANIFEST
    if not path.exists():
        return set()
    manifest = _read_json(path, "rsd-deploy manifest")
    models = manifest.get("models")
    if not isinstance(models, list) or not all(isinstance(m, str) and m and "/" not in m and m not in (".", "..") for m in models):
        raise RepositoryError(f"{path}: unreadable rsd-deploy manifest (no list of model names)")
    return set(models)


def check_repository_target(out_dir: str | Path, names: list[str], overwrite: bool) -> Path:
    """Raise :class:`RepositoryError` (one line) unless the models ``names`` can be written into
    ``out_dir``: a usable folder where each of those names is free, or (with ``overwrite``) a
    model rsd-deploy wrote. Cheap: call it before the first expensive step. Returns the folder."""
    repository = _check_target(Path(out_dir))
    owned = _owned_models(repository) if repository.is_dir() else set()
    for name in names:
        folder = repository / name
        if _inode(folder) is None:
            continue
        if name not in owned:
            raise RepositoryError(f"{folder}: a model folder rsd-deploy did not write (not in {MANIFEST}); "
                                  "refusing to replace it: move it or write to another folder")
        if folder.is_symlink() or not folder.is_dir():
            raise RepositoryError(f"{folder}: not the folder rsd-deploy wrote (a link or a file now); move it")
        if not overwrite:
            raise RepositoryError(f"{folder}: exists (written by rsd-deploy); pass overwrite=True / --overwrite to replace "
                                  "rsd-deploy's models")
    return repository


def replace_models(out_dir: str | Path, names: list[str], overwrite: bool, build: Callable[[Path], None], manifest: dict) -> Path:
    """Put the models ``names`` into the repository ``out_dir`` (created if missing): ``build``
    writes them, complete and checked, into the folder it is given (the staging folder); then
    each is swapped in whole and the manifest (``manifest`` plus every model rsd-deploy wrote
    there) records them. A repository left by an interrupted update is finished first (said on
    stderr). Returns the repository folder."""
    repository = check_repository_target(out_dir, names, overwrite)
    repository.mkdir(parents=True, exist_ok=True)
    with _locked(repository):
        done = _finish_interrupted_update(repository)
        if done:
            print(f"note: {done}", file=sys.stderr)
        check_repository_target(repository, names, overwrite)  # again, now that nobody else writes
        owned = _owned_models(repository)
        staging = staging_folder(repository)
        staging.mkdir()
        try:
            _write_json(staging / _STAGING_MARKER, {"repository": str(repository)})
            build(staging)
            _fsync_tree(staging)
            manifest = {**manifest, "models": sorted(owned | set(names))}  # every model written here (the ones it may replace)
            marker = {"repository": str(repository), "models": {name: _inode(staging / name) for name in names}, "manifest": manifest}
            _write_json(staging / _STAGING_MARKER, marker)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # half built, ours; the repository was not touched
            raise
        _swap_in(repository, staging, marker)
    return repository
