"""atomic_path: all or nothing, synced, with ordinary permissions; stale leftovers removed."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from rsd_deploy.atomic import STALE_AFTER_S, TargetExistsError, atomic_path, remove_stale_partials


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


def test_data_is_synced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda src, dst: (events.append(("replace", str(src))), real_replace(src, dst)))
    with atomic_path(tmp_path / "model.onnx") as tmp:
        tmp.write_bytes(b"new")
    assert events == [("fsync", str(tmp)), ("replace", str(tmp)), ("fsync", str(tmp_path))]


def test_stale_partials_are_removed_and_live_ones_kept(tmp_path):
    killed = "from rsd_deploy.atomic import atomic_path\nimport os, sys\nwith atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half')\n    os._exit(9)\n"
    subprocess.run([sys.executable, "-c", killed, str(tmp_path / "model.onnx")], check=False)
    (leftover,) = tmp_path.iterdir()  # a run killed mid-write leaves its temporary file
    day_old = time.time() - STALE_AFTER_S - 60
    files = {
        ".model.ijklmnop.0badcafe-1.partial.onnx": False,  # another host, fresh: may be writing
        ".model.qrstuvwx.0badcafe-1.partial.png": True,  # another host, a day untouched
        ".model.yz012345.partial.onnx": True,  # an older release's name, a day untouched
        ".model.6789abcd.partial.json": False,  # an older release's name, fresh
        ".notes.partial.txt": False,  # not ours
    }
    for name in files:
        (tmp_path / name).write_bytes(b"x")
    for name in [".model.qrstuvwx.0badcafe-1.partial.png", ".model.yz012345.partial.onnx", ".notes.partial.txt"]:
        os.utime(tmp_path / name, (day_old, day_old))
    with atomic_path(tmp_path / "report.json") as writing:  # the first write into a folder sweeps it
        writing.write_text("{}")
        assert remove_stale_partials(tmp_path) == []  # a sweep never takes a live process's file
        assert writing.exists()
    left = {p.name for p in tmp_path.iterdir()}
    assert leftover.name not in left
    assert left == {name for name, stale in files.items() if not stale} | {"report.json"}


def test_no_replace_keeps_a_file_that_appeared(tmp_path):
    target = tmp_path / "photo_x4.png"
    with pytest.raises(TargetExistsError):
        with atomic_path(target, replace=False) as tmp:
            tmp.write_bytes(b"ours")
            target.write_bytes(b"someone else's")  # another process, while we were computing
    assert target.read_bytes() == b"someone else's"
    assert list(tmp_path.iterdir()) == [target]
    with atomic_path(tmp_path / "new.png", replace=False) as tmp:
        tmp.write_bytes(b"new")
    assert (tmp_path / "new.png").read_bytes() == b"new"
