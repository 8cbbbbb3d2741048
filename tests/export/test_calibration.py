import numpy as np
import pytest
import torch
from PIL import Image

from rsd_deploy.degradation import bicubic_degrade
from rsd_deploy.export.calibration import load_calibration, load_div2k


def _write_div2k(root, count=3, size=(520, 600), official_lr=False):
    rng = np.random.default_rng(0)
    hr_dir = root / "DIV2K_train_HR"
    hr_dir.mkdir(parents=True)
    for index in range(1, count + 1):
        y, x = np.mgrid[0 : size[0], 0 : size[1]]
        image = np.stack([(x * (index + 1)) % 256, (y * 3) % 256, rng.integers(0, 256, size)], -1).astype(np.uint8)
        Image.fromarray(image).save(hr_dir / f"{index:04d}.png")
        if official_lr:
            lr_dir = root / "DIV2K_train_LR_bicubic" / "X4"
            lr_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((size[0] // 4, size[1] // 4, 3), 7 * index, np.uint8)).save(lr_dir / f"{index:04d}x4.png")


def test_random_crops_are_seeded_and_paired(tmp_path):
    _write_div2k(tmp_path)
    first = load_div2k(tmp_path, count=5, crop=256, seed=1)
    again = load_div2k(tmp_path, count=5, crop=256, seed=1)
    other = load_div2k(tmp_path, count=5, crop=256, seed=2)
    assert first.lr.shape == (5, 3, 64, 64) and first.hr.shape == (5, 3, 256, 256)
    assert first.names == again.names and torch.equal(first.hr, again.hr)
    assert first.names != other.names
    torch.testing.assert_close(first.lr, bicubic_degrade(first.hr))
    assert "DIV2K folder" in first.source and "bicubic x4" in first.source
    assert all(int(n.split("@")[1].split(",")[0]) % 4 == 0 for n in first.names)


def test_centre_crops_and_official_lr_files(tmp_path):
    _write_div2k(tmp_path, count=2, official_lr=True)
    cal = load_div2k(tmp_path, count=2, crop=256, random_crops=False)
    assert cal.names == ["0001.png@132,172", "0002.png@132,172"]
    assert torch.allclose(cal.lr[0], torch.full_like(cal.lr[0], 7 / 255)) and torch.allclose(cal.lr[1], torch.full_like(cal.lr[1], 14 / 255))
    assert "official X4 LR files" in cal.source


def test_bad_folders_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no DIV2K images"):
        load_div2k(tmp_path, count=1)
    _write_div2k(tmp_path, count=1, size=(200, 200))
    with pytest.raises(ValueError, match="at least 256x256"):
        load_div2k(tmp_path, count=1, crop=256)
    with pytest.raises(ValueError, match="multiple of 256"):
        load_div2k(tmp_path, count=1, crop=100)


def test_bundled_photos_without_a_folder():
    cal = load_calibration(None, count=3, crop=256, seed=0)
    assert cal.lr.shape == (3, 3, 64, 64) and "scikit-image bundled photos" in cal.source
    assert cal.names == ["skimage.data.astronaut()@220,164", "skimage.data.coffee()@72,92", "skimage.data.chelsea()@12,8"]
    torch.testing.assert_close(cal.lr, bicubic_degrade(cal.hr))
    assert 0 <= cal.lr.min() and cal.lr.max() <= 1 and cal.hr.std() > 0.05
    calibration, held_out = cal.split(1)
    assert len(calibration.names) == 2 and len(held_out.names) == 1 and "held out" in held_out.source
