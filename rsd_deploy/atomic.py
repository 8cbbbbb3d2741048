"""Write-then-rename, so a crash never leaves a half-written artifact where a good one was."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the final suffix (``.onnx``, ``.png``...) so writers that dispatch
    on the extension still work.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".partial{final.suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; artifacts are read by other users (e.g. a Triton server)
        umask = os.umask(0)
        os.umask(umask)
        if tmp.is_file():
            tmp.chmod(0o666 & ~umask)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
