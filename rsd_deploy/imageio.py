"""Reading and writing images: the one place that knows about grayscale, alpha and 16-bit files.

The model sees RGB in [0, 1], upright (EXIF orientation applied). What the file had beyond that
is kept in :class:`Picture` and restored on writing: grayscale stays grayscale, an alpha channel
is upscaled (bicubic) and reattached, 16-bit inputs give 16-bit PNGs. PNGs are written strip by
strip (:func:`png_strips`), so an upscaled picture and its alpha are never whole in memory.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .atomic import atomic_path
from .png_stream import PNGStreamWriter

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the array operation that makes the picture upright (as PIL.ImageOps.exif_transpose)
_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}
_LUMA = (0.299, 0.587, 0.114)


class ImageError(ValueError):
    """An input that is not a usable image; the message is one line naming the file."""


class ImageTooLargeError(ImageError):
    """An image whose header declares more pixels than the caller allows; it was not decoded."""


@dataclass
class Picture:
    rgb: torch.Tensor  # (3, H, W) float32 in [0, 1]
    alpha: torch.Tensor | None = None  # (1, H, W) float32 in [0, 1]
    grayscale: bool = False
    bit_depth: int = 8


def _from_array(array: np.ndarray, bit_depth: int, bgr: bool) -> Picture:
    scale = 65535.0 if bit_depth == 16 else 255.0
    data = torch.from_numpy(array.astype(np.float32) / scale)
    if data.dim() == 2:
        return Picture(data.expand(3, *data.shape).clone(), grayscale=True, bit_depth=bit_depth)
    channels = data.permute(2, 0, 1)
    if bgr:  # OpenCV order
        channels = torch.cat([channels[[2, 1, 0]], channels[3:]]) if channels.shape[0] >= 3 else channels
    if channels.shape[0] == 2:  # gray + alpha
        return Picture(channels[:1].expand(3, -1, -1).clone(), channels[1:], True, bit_depth)
    alpha = channels[3:4] if channels.shape[0] == 4 else None
    return Picture(channels[:3].contiguous(), alpha, False, bit_depth)


def read_image(path: str | Path, max_pixels: int | None = None) -> Picture:
    """Read any Pillow-readable image (plus 16-bit PNG/TIFF through OpenCV), upright.

    ``max_pixels`` is checked against the size the header declares, before anything is decoded
    (:class:`ImageTooLargeError`); Pillow's decompression-bomb limit applies in any case.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if not path.is_file():
        raise ImageError(f"{path}: not a file")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLargeError(f"{path}: {width}x{height} is {width * height} pixels, over the limit of {max_pixels}; not decoded")
            image.load()  # decodes fully: a truncated file fails here
            # read after decoding: a PNG may store EXIF after the pixels, and Pillow's TIFF decoder
            # applies the orientation itself and then drops the tag
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            mode = image.mode
            pil_array = None
            if mode.startswith("I;16"):  # 16-bit grey
                pil_array = np.asarray(image).astype(np.uint16)
            elif mode not in ("I", "F"):
                has_alpha = "A" in mode or "transparency" in image.info
                gray = mode in ("1", "L", "LA")
                target = ("LA" if has_alpha else "L") if gray else ("RGBA" if has_alpha else "RGB")
                pil_array = np.asarray(image.convert(target))
            # Pillow reduces 48/64-bit colour PNG / TIFF to 8 bits: OpenCV reads those below
            may_be_deep_colour = image.format in ("PNG", "TIFF") and not mode.startswith("I;16")
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageTooLargeError(f"{path}: declares more pixels than Pillow's decompression-bomb limit ({2 * Image.MAX_IMAGE_PIXELS}); not decoded") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        reason = "not an image Pillow can read" if isinstance(error, UnidentifiedImageError) else str(error).splitlines()[0]
        raise ImageError(f"{path}: {reason}") from None
    upright = _UPRIGHT.get(orientation, lambda a: a)
    deep = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if may_be_deep_colour else None  # ignores EXIF
    if deep is not None and deep.dtype == np.uint16:
        return _from_array(upright(deep), 16, bgr=True)
    if pil_array is None:
        raise ImageError(f"{path}: unsupported pixel format {mode!r}")
    return _from_array(upright(pil_array), 16 if pil_array.dtype == np.uint16 else 8, bgr=False)


def resize_rows(image: torch.Tensor, scale: int, top: int, bottom: int) -> torch.Tensor:
    """Rows ``top:bottom`` of the bicubic x``scale`` resize of ``image`` (C, h, w), computed from
    the few input rows they need; bit for bit the rows of resizing the whole image."""
    if scale == 1:
        return image[:, top:bottom]
    h = image.shape[1]
    # output row y samples input rows around (y + 0.5) / scale - 0.5; bicubic reaches 2 past it
    first = max(top // scale - 2, 0)
    last = min((bottom - 1) // scale + 3, h)
    # the slice's own edges clamp only where they are the image's: kept rows see the same inputs
    rows = F.interpolate(image[None, :, first:last], scale_factor=scale, mode="bicubic")[0]
    return rows[:, top - first * scale : bottom - first * scale]


def to_pixels(rgb: torch.Tensor, alpha: torch.Tensor | None, grayscale: bool, bit_depth: int) -> np.ndarray:
    """(rows, W, channels) uint8/uint16 array of a picture's kind from RGB (3, rows, W) and alpha
    (1, rows, W) in [0, 1]: grey by Rec. 601 luma, alpha last."""
    rgb = rgb.clamp(0, 1)
    channels = [(rgb * torch.tensor(_LUMA).view(3, 1, 1)).sum(0, keepdim=True)] if grayscale else [rgb]
    if alpha is not None:
        channels.append(alpha.clamp(0, 1))
    data = torch.cat(channels).permute(1, 2, 0).numpy()
    if bit_depth == 16:
        return np.round(data * 65535).astype(np.uint16)
    return np.round(data * 255).astype(np.uint8)


@contextlib.contextmanager
def png_strips(path: str | Path, like: Picture, scale: int = 1, replace: bool = True) -> Iterator[Callable[[torch.Tensor], None]]:
    """Write a PNG of ``like``'s kind (grey or RGB, alpha, 8 or 16 bits), ``scale`` times its size,
    from RGB strips (3, rows, width) in [0, 1] passed top to bottom to the yielded function.
    ``like``'s alpha is resized (bicubic) strip by strip. Atomic: nothing appears at ``path``
    unless every row was written; with ``replace=False`` an existing file is kept
    (:class:`~rsd_deploy.atomic.TargetExistsError`)."""
    height, width = like.rgb.shape[1] * scale, like.rgb.shape[2] * scale
    channels = (1 if like.grayscale else 3) + (like.alpha is not None)
    done = 0

    with atomic_path(Path(path).with_suffix(".png"), replace=replace) as tmp, open(tmp, "wb") as file:
        png = PNGStreamWriter(file, width, height, channels, like.bit_depth)

        def write(rgb: torch.Tensor) -> None:
            nonlocal done
            rows = rgb.shape[1]
            alpha = None if like.alpha is None else resize_rows(like.alpha, scale, done, done + rows)
            png.write(to_pixels(rgb, alpha, like.grayscale, like.bit_depth))
            done += rows

        yield write
        png.close()


def write_png(path: str | Path, picture: Picture) -> None:
    """Write a whole picture atomically as PNG, in its kind (gray/RGB, alpha, 8/16 bits)."""
    with png_strips(path, picture) as write:
        write(picture.rgb)


def list_images(inputs: list[str | Path], skip: Path | None = None) -> list[tuple[Path, Path]]:
    """``(path, name)`` of every image to read: files as given (named by their file name), and
    the image files found in given folders, searched recursively in sorted order and named by
    their path inside that folder. Hidden files and folders, and the folder ``skip`` (an output
    folder inside an input folder), are never searched."""
    skipped = Path(os.path.realpath(skip)) if skip is not None else None
    found: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if not item.is_dir():
            found.append((item, Path(item.name)))  # missing paths are reported when read
            continue
        for folder, subfolders, files in os.walk(item):
            subfolders[:] = sorted(
                d for d in subfolders if not d.startswith(".") and Path(os.path.realpath(Path(folder, d))) != skipped
            )
            for name in sorted(files):
                path = Path(folder, name)
                if not name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                    found.append((path, path.relative_to(item)))
    return found
