"""rsd-upscale end to end: kinds of images kept, bad inputs reported, the batch goes on."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from rsd_deploy.cli.upscale import main


def test_batch_with_good_and_bad_inputs(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((20, 24)) * 255).astype(np.uint8)).save(src / "gray.png")
    Image.fromarray((rng.random((20, 24, 4)) * 255).astype(np.uint8)).save(src / "rgba.png")
    cv2.imwrite(str(src / "deep.png"), (rng.random((12, 16, 3)) * 65535).astype(np.uint16))
    (src / "notes.png").write_text("not an image")
    good = (src / "gray.png").read_bytes()
    (src / "cut.png").write_bytes(good[: len(good) // 2])
    out = tmp_path / "out"
    code = main([str(src), str(tmp_path / "absent.png"), "--preset", "tiny-rsd", "-o", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    for name, reason in [("notes.png", "not an image"), ("cut.png", "truncated"), ("absent.png", "no such file")]:
        line = next(l for l in err.splitlines() if name in l)
        assert reason in line
    assert sorted(p.name for p in out.iterdir()) == ["deep_x4.png", "gray_x4.png", "rgba_x4.png"]
    gray = cv2.imread(str(out / "gray_x4.png"), cv2.IMREAD_UNCHANGED)
    rgba = cv2.imread(str(out / "rgba_x4.png"), cv2.IMREAD_UNCHANGED)
    deep = cv2.imread(str(out / "deep_x4.png"), cv2.IMREAD_UNCHANGED)
    assert gray.shape == (80, 96) and gray.dtype == np.uint8
    assert rgba.shape == (80, 96, 4)
    assert deep.shape == (48, 64, 3) and deep.dtype == np.uint16


def test_bad_checkpoint_is_one_line(tmp_path, capsys):
    bogus = tmp_path / "model.pth"
    bogus.write_bytes(b"garbage")
    assert main(["--checkpoint", str(bogus), "--vae", str(bogus), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.pth" in err
