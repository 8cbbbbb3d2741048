"""Reading and writing images: the one place that knows about grayscale, alpha and 16-bit files.

The model sees RGB in [0, 1]. What the file had beyond that is kept in :class:`Picture` and
restored on writing: grayscale stays grayscale, an alpha channel is upscaled (bicubic) and
reattached, 16-bit inputs give 16-bit PNGs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .atomic import atomic_path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


class ImageError(ValueError):
    """An input that is not a usable image; the message is one line naming the file."""


@dataclass
class Picture:
    rgb: torch.Tensor  # (3, H, W) float32 in [0, 1]
    alpha: torch.Tensor | None = None  # (1, H, W) float32 in [0, 1]
    grayscale: bool = False
    bit_depth: int = 8

    def upscaled(self, rgb: torch.Tensor) -> "Picture":
        """The same kind of picture with new RGB content; alpha follows by bicubic resizing."""
        alpha = self.alpha
        if alpha is not None:
            alpha = F.interpolate(alpha[None], size=rgb.shape[-2:], mode="bicubic")[0].clamp(0, 1)
        return replace(self, rgb=rgb, alpha=alpha)


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


def read_image(path: str | Path) -> Picture:
    """Read any Pillow-readable image (plus 16-bit PNG/TIFF through OpenCV)."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if not path.is_file():
        raise ImageError(f"{path}: not a file")
    try:
        with Image.open(path) as image:
            image.load()  # decodes fully: a truncated file fails here
            mode = image.mode
            pil_array = None
            if not (mode.startswith("I;16") or mode in ("I", "F")):  # deep formats: OpenCV below
                has_alpha = "A" in mode or "transparency" in image.info
                gray = mode in ("1", "L", "LA")
                target = ("LA" if has_alpha else "L") if gray else ("RGBA" if has_alpha else "RGB")
                pil_array = np.asarray(image.convert(target))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        reason = "not an image Pillow can read" if isinstance(error, UnidentifiedImageError) else str(error).splitlines()[0]
        raise ImageError(f"{path}: {reason}") from None
    # Pillow reduces 48/64-bit colour PNGs to 8 bits; OpenCV keeps 16-bit data intact.
    deep = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if deep is not None and deep.dtype == np.uint16:
        return _from_array(deep, 16, bgr=True)
    if pil_array is None:
        raise ImageError(f"{path}: unsupported pixel format {mode!r}")
    return _from_array(pil_array, 8, bgr=False)


def write_png(path: str | Path, picture: Picture) -> None:
    """Write atomically as PNG, in the picture's kind (gray/RGB, alpha, 8/16 bits)."""
    rgb = picture.rgb.clamp(0, 1)
    if picture.grayscale:
        luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        channels = [(rgb * luma).sum(0, keepdim=True)]
    else:
        channels = [rgb[[2, 1, 0]]]  # OpenCV writes BGR
    if picture.alpha is not None:
        channels.append(picture.alpha.clamp(0, 1))
    data = torch.cat(channels).permute(1, 2, 0).numpy()
    if picture.bit_depth == 16:
        array = np.round(data * 65535).astype(np.uint16)
    else:
        array = np.round(data * 255).astype(np.uint8)
    with atomic_path(Path(path).with_suffix(".png")) as tmp:
        if not cv2.imwrite(str(tmp), array[..., 0] if array.shape[-1] == 1 else array):
            raise ImageError(f"{path}: could not be written")


def list_images(inputs: list[str | Path]) -> list[Path]:
    """Files as given, and the image files inside given folders (sorted)."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        else:
            found.append(item)  # missing paths are reported when read
    return found
