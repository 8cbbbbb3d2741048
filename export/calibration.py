"""Calibration / evaluation images: a DIV2K-style folder, or scikit-image's bundled photos.

A DIV2K folder holds ``DIV2K_train_HR/*.png`` and/or ``DIV2K_valid_HR/*.png`` (HR images),
optionally with the official bicubic LR files ``DIV2K_train_LR_bicubic/X4/0001x4.png``. From it
:func:`load_div2k` makes ``count`` (HR crop, LR crop) pairs: random crops (seeded) or centre
crops of ``crop`` HR pixels; the LR crop is the matching window of the official X4 file when it
exists, else the HR crop downscaled x4 by :func:`rsd_deploy.degradation.bicubic_degrade`.
With no folder, :func:`bundled_photos` uses the real photographs shipped with scikit-image
(:mod:`rsd_deploy.photos`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rsd_deploy import imageio, photos
from rsd_deploy.degradation import bicubic_degrade

SCALE = 4
HR_DIRS = ("DIV2K_train_HR", "DIV2K_valid_HR")


@dataclass
class CalibrationSet:
    """LR crops (N, 3, h, w) and HR crops (N, 3, 4h, 4w) in [0, 1], and where they came from."""

    lr: torch.Tensor
    hr: torch.Tensor
    source: str
    names: list[str]

    def split(self, held_out: int) -> tuple["CalibrationSet", "CalibrationSet"]:
        """(calibration, held-out evaluation) with the last ``held_out`` crops held out."""
        if not 0 < held_out < len(self.names):
            raise ValueError(f"held-out count must be in 1..{len(self.names) - 1}, got {held_out}")
        cut = len(self.names) - held_out
        first = CalibrationSet(self.lr[:cut], self.hr[:cut], self.source, self.names[:cut])
        second = CalibrationSet(self.lr[cut:], self.hr[cut:], self.source + " (held out)", self.names[cut:])
        return first, second

    def to_json(self) -> dict:
        return {"source": self.source, "count": len(self.names), "lr_size": list(self.lr.shape[-2:]), "crops": self.names}


def _read(path: Path) -> torch.Tensor:
    return imageio.read_image(path).rgb  # (3, H, W) in [0, 1]; grey, 16-bit and bad files handled there


def _crop_boxes(height: int, width: int, crop: int, per_image: int, rng: np.random.Generator | None) -> list[tuple[int, int]]:
    """Top-left corners (multiples of the scale) of HR crops: random, or one centred."""
    if rng is None:
        return [photos.centre_box(height, width, crop, SCALE)]
    return [photos.random_box(height, width, crop, rng, SCALE) for _ in range(per_image)]


def _official_lr(hr_path: Path) -> Path | None:
    """``DIV2K_train_HR/0001.png`` -> ``DIV2K_train_LR_bicubic/X4/0001x4.png`` if present."""
    folder = hr_path.parent.name.replace("_HR", "_LR_bicubic")
    candidate = hr_path.parent.parent / folder / f"X{SCALE}" / f"{hr_path.stem}x{SCALE}{hr_path.suffix}"
    return candidate if candidate.is_file() else None


def load_div2k(root: str | Path, count: int = 32, crop: int = 256, seed: int = 0, random_crops: bool = True) -> CalibrationSet:
    """``count`` crop pairs from a DIV2K-style folder (see the module docstring)."""
    root = Path(root)
    if crop <= 0 or crop % (SCALE * 64):
        raise ValueError(f"crop must be a positive multiple of {SCALE * 64} HR pixels (LR multiple of 64), got {crop}")
    folders = [root / name for name in HR_DIRS if (root / name).is_dir()]
    if not folders and list(root.glob("*.png")):
        folders = [root]  # a bare folder of HR PNGs
    files = sorted(p for folder in folders for p in folder.glob("*.png"))
    if not files:
        raise FileNotFoundError(f"{root}: no DIV2K images (expected {HR_DIRS[0]}/*.png or {HR_DIRS[1]}/*.png)")
    rng = np.random.default_rng(seed) if random_crops else None
    per_image = -(-count // len(files)) if random_crops else 1
    hr_crops, lr_crops, names = [], [], []
    for path in files:
        if len(names) >= count:
            break
        hr = _read(path)
        height, width = hr.shape[-2:]
        if height < crop or width < crop:
            continue
        lr_path = _official_lr(path)
        lr_full = _read(lr_path) if lr_path else None
        for top, left in _crop_boxes(height, width, crop, per_image, rng)[: count - len(names)]:
            hr_crop = hr[:, top : top + crop, left : left + crop]
            if lr_full is not None:
                t, l, c = top // SCALE, left // SCALE, crop // SCALE
                lr_crop = lr_full[:, t : t + c, l : l + c]
            else:
                lr_crop = bicubic_degrade(hr_crop[None])[0]
            hr_crops.append(hr_crop)
            lr_crops.append(lr_crop)
            names.append(f"{path.name}@{top},{left}")
    if not names:
        raise ValueError(f"{root}: no image is at least {crop}x{crop} pixels")
    if len(names) < count:
        raise ValueError(f"{root}: only {len(names)} crops of {crop} px available, {count} requested")
    kind = "random" if random_crops else "centre"
    official = "official X4 LR files" if any(_official_lr(p) for p in files) else "bicubic x4 downscaling"
    return CalibrationSet(torch.stack(lr_crops), torch.stack(hr_crops), f"DIV2K folder {root} ({kind} {crop}px crops, seed {seed}, LR from {official})", names)


def bundled_photos(count: int = 8, crop: int = 256, seed: int = 0) -> CalibrationSet:
    """``count`` random crops from scikit-image's bundled photographs (real photos, no download)."""
    if crop <= 0 or crop % (SCALE * 64):
        raise ValueError(f"crop must be a positive multiple of {SCALE * 64} HR pixels, got {crop}")
    rng = np.random.default_rng(seed)
    loaded = [(name, photos.photo(name)) for name in photos.PHOTOS]
    usable = [(name, image) for name, image in loaded if min(image.shape[-2:]) >= crop]
    hr_crops, names = [], []
    for index in range(count):
        name, image = usable[index % len(usable)]
        top, left = photos.random_box(*image.shape[-2:], crop, rng, SCALE)
        hr_crops.append(image[:, top : top + crop, left : left + crop])
        names.append(f"skimage.data.{name}()@{top},{left}")
    hr = torch.stack(hr_crops)
    return CalibrationSet(bicubic_degrade(hr), hr, f"scikit-image bundled photos ({crop}px random crops, seed {seed}, LR by bicubic x4)", names)


def load_calibration(root: str | Path | None, count: int, crop: int = 256, seed: int = 0) -> CalibrationSet:
    """A DIV2K folder when given, else the bundled photos (the ``source`` string says which)."""
    return load_div2k(root, count, crop, seed) if root else bundled_photos(count, crop, seed)
