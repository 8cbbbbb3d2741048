"""HR crops for training and validation, and the (HR, LR) pairs made from them.

Crop ``i`` of a dataset is a pure function of ``(seed, i)``: which image, where, flipped or not.
Training step ``s`` of process ``rank`` reads crops ``(s * world + rank) * batch ...``, so a run
resumed at step ``s`` sees exactly the data it would have seen without the interruption, and
LR synthesis is seeded by the same numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from rsd_deploy import imageio, photos
from rsd_deploy.degradation import bicubic_degrade

from .degradations import RealESRGANConfig, realesrgan_degrade


def list_images(folders: list[str]) -> list[Path]:
    paths = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise ValueError(f"{root}: no such image folder")
        paths += sorted(p for p in root.rglob("*") if p.suffix.lower() in imageio.IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{', '.join(folders)}: no images ({', '.join(sorted(imageio.IMAGE_SUFFIXES))}) found")
    return paths


def read_image(source: Path | np.ndarray) -> np.ndarray:
    """HxWx3 uint8 from an image file (or an array, returned as is)."""
    return source if isinstance(source, np.ndarray) else photos.read_uint8(source)


class HRCrops(Dataset):
    """Random ``crop`` x ``crop`` HR patches, item ``i`` determined by ``(seed, i)``.

    Sources are image files (read on demand, so DataLoader workers share the work) or arrays.
    Augmentation as basicsr's ``augment``: ``hflip`` (p 0.5), and with ``rot`` also a vertical flip
    and a transpose (p 0.5 each: all 8 orientations). ``rescale_gt`` (ResShift / RSD): the patch
    is a random square of the image's shorter side, area-resized to ``crop``. ``scale_range``
    (lo, hi <= 1): the patch is a random ``crop / s`` square, area-resized to ``crop``, ``s`` drawn
    uniformly: the same photos at several scales. ``shuffle_channels``: the RGB channels in a random
    order (x4 SR of each channel does not depend on its colour; a handful of photos with peculiar
    colours, such as fundus or microscopy images, then teach no colour bias). Images smaller than
    the patch are reflect-padded.
    """

    def __init__(self, sources: list[Path | np.ndarray], crop: int, seed: int = 0, hflip: bool = True, rot: bool = False,
                 rescale_gt: bool = False, scale_range: tuple[float, float] = (1.0, 1.0), shuffle_channels: bool = False):
        if not sources:
            raise ValueError("HRCrops: no source images")
        self.sources = sources
        self.crop = crop
        self.seed = seed
        self.hflip, self.rot = hflip, rot
        self.rescale_gt = rescale_gt
        self.scale_range = tuple(scale_range)
        self.shuffle_channels = shuffle_channels

    def __len__(self) -> int:
        return 2**62  # an unbounded stream: items are drawn, not enumerated

    def _side(self, image: np.ndarray, rng: np.random.Generator) -> int:
        if self.rescale_gt:
            return max(min(image.shape[:2]), self.crop)
        if self.scale_range == (1.0, 1.0):
            return self.crop
        return int(round(self.crop / rng.uniform(*self.scale_range)))

    def __getitem__(self, i: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, i])
        image = read_image(self.sources[int(rng.integers(len(self.sources)))])
        side = self._side(image, rng)
        h, w = image.shape[:2]
        if h < side or w < side:
            pad = ((0, max(0, side - h)), (0, max(0, side - w)), (0, 0))
            image = np.pad(image, pad, mode="reflect")
            h, w = image.shape[:2]
        top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        patch = image[top : top + side, left : left + side]
        if side != self.crop:
            patch = cv2.resize(np.ascontiguousarray(patch), (self.crop, self.crop), interpolation=cv2.INTER_AREA)
        if self.hflip and rng.uniform() < 0.5:
            patch = patch[:, ::-1]
        if self.rot:
            if rng.uniform() < 0.5:
                patch = patch[::-1]
            if rng.uniform() < 0.5:
                patch = patch.transpose(1, 0, 2)
        if self.shuffle_channels:
            patch = patch[..., rng.permutation(3)]
        return torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1).float() / 255


class StepSampler(Sampler):
    """Item indices of process ``rank`` from training step ``start`` on, ``batch`` per step."""

    def __init__(self, start: int, batch: int, rank: int = 0, world: int = 1):
        self.start, self.batch, self.rank, self.world = start, batch, rank, world

    def __iter__(self) -> Iterator[int]:
        step = self.start
        while True:
            first = (step * self.world + self.rank) * self.batch
            yield from range(first, first + self.batch)
            step += 1


def grid_crops(image: np.ndarray, crop: int, count: int) -> list[np.ndarray]:
    """Up to ``count`` non-overlapping crops spread over the image (validation: fixed, no randomness)."""
    h, w = image.shape[:2]
    rows, cols = max(1, h // crop), max(1, w // crop)
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    picks = np.linspace(0, len(cells) - 1, min(count, len(cells))).round().astype(int)
    out = []
    for index in picks:
        r, c = cells[index]
        top = (h - rows * crop) // 2 + r * crop
        left = (w - cols * crop) // 2 + c * crop
        out.append(image[top : top + crop, left : left + crop])
    return out


def make_lr(hr: torch.Tensor, degradation: str, seed: int) -> torch.Tensor:
    """LR for an HR batch in [0, 1]: the Real-ESRGAN pipeline (seeded) or plain bicubic."""
    if degradation == "bicubic":
        return bicubic_degrade(hr)
    return realesrgan_degrade(hr, seed, RealESRGANConfig())


def step_seed(seed: int, step: int, rank: int, stream: int = 0) -> int:
    """One 63-bit seed per (run seed, step, process, purpose)."""
    state = np.random.SeedSequence([seed, step, rank, stream]).generate_state(2)
    return int(state[0]) << 31 ^ int(state[1])


def validation_pairs(sources: list[Path | np.ndarray], crop: int, per_image: int, degradation: str, seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed held-out (HR, LR) pairs in [0, 1]."""
    crops = [c for source in sources for c in grid_crops(read_image(source), crop, per_image)]
    hr = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    return hr, make_lr(hr, degradation, seed)


def load_sources(folders: list[str], names: list[str]) -> list[Path | np.ndarray]:
    """Image files from folders when given, else the named bundled photos (:mod:`rsd_deploy.photos`)."""
    return list_images(folders) if folders else [photos.photo_array(name) for name in names]
