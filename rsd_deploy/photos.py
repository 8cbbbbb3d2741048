"""Real photographs that ship with the dependencies (no download): scikit-image's sample images
(``skimage.data.<name>``) and matplotlib's ``grace_hopper``.

:func:`photo_array` gives HxWx3 uint8 (grey ones repeated, alpha dropped), :func:`photo` a
(3, H, W) float tensor in [0, 1]; :func:`centre_box` and :func:`random_box` place crops on a grid
of ``multiple`` pixels (the SR scale, so that an HR crop has an exact LR crop).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import imageio

# scikit-image's real photographs, in the order calibration and benchmark inputs draw them:
# four everyday colour scenes, then microscopy, astronomy and two grey ones.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "coins", "camera")
SCENES = PHOTOS[:4]
# The one real photograph in matplotlib's sample data (a dependency): a photo beyond scikit-image's.
MATPLOTLIB_PHOTOS = {"grace_hopper": "grace_hopper.jpg"}


def _rgb(array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


def read_uint8(path: Path) -> np.ndarray:
    """An image file as HxWx3 uint8 (read by :func:`rsd_deploy.imageio.read_image`: 16-bit and grey
    files too; a bad file is an ImageError, a ValueError)."""
    return (imageio.read_image(path).rgb * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def photo_array(name: str) -> np.ndarray:
    """The bundled photo ``name`` as HxWx3 uint8; ValueError for a name neither library has."""
    if name in MATPLOTLIB_PHOTOS:
        import matplotlib.cbook

        return read_uint8(Path(matplotlib.cbook.get_sample_data(MATPLOTLIB_PHOTOS[name], asfileobj=False)))
    from skimage import data

    loader = getattr(data, name, None)
    if loader is None:
        raise ValueError(f"skimage.data has no image {name!r}")
    image = loader()
    return _rgb(image[0] if isinstance(image, tuple) else image)


def photo(name: str) -> torch.Tensor:
    """The bundled photo ``name`` as a (3, H, W) float32 tensor in [0, 1]."""
    return torch.from_numpy(photo_array(name)).permute(2, 0, 1).float() / 255


def centre_box(height: int, width: int, size: int, multiple: int = 1) -> tuple[int, int]:
    """Top-left corner of the centred ``size`` crop, rounded down to a multiple of ``multiple``."""
    return (height - size) // 2 // multiple * multiple, (width - size) // 2 // multiple * multiple


def random_box(height: int, width: int, size: int, rng: np.random.Generator, multiple: int = 1) -> tuple[int, int]:
    """Top-left corner of a uniformly drawn ``size`` crop on the ``multiple`` grid (top drawn first)."""
    top = int(rng.integers(0, (height - size) // multiple + 1)) * multiple
    left = int(rng.integers(0, (width - size) // multiple + 1)) * multiple
    return top, left
