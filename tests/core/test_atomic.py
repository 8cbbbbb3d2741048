"""atomic_path: all or nothing, with ordinary permissions."""

from __future__ import annotations

import os

import pytest

from rsd_deploy.atomic import atomic_path


def test_complete_write_lands_with_umask_permissions(tmp_path):
    target = tmp_path / "model.onnx"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".onnx" and tmp.parent == tmp_path
        tmp.write_bytes(b"new")
    umask = os.umask(0)
    os.umask(umask)
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert list(tmp_path.iterdir()) == [target]


def test_failed_write_keeps_the_old_artifact(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"good"
    assert list(tmp_path.iterdir()) == [target]
