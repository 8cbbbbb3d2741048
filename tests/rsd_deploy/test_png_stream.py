"""PNGStreamWriter: files that other decoders read back exactly, whatever the strips."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from rsd_deploy.png_stream import IDAT_BYTES, ROWS_PER_PASS, PNGStreamWriter


def encode(image: np.ndarray, cuts: list[int]) -> bytes:
    channels = 1 if image.ndim == 2 else image.shape[2]
    buffer = io.BytesIO()
    png = PNGStreamWriter(buffer, image.shape[1], image.shape[0], channels, 16 if image.dtype == np.uint16 else 8)
    for top, bottom in zip([0, *cuts], [*cuts, image.shape[0]]):
        png.write(image[top:bottom])
    png.close()
    return buffer.getvalue()


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_roundtrip_in_uneven_strips(channels, dtype):
    rng = np.random.default_rng(channels)
    shape = (ROWS_PER_PASS + 37, 29) if channels == 1 else (ROWS_PER_PASS + 37, 29, channels)
    smooth = np.cumsum(rng.integers(0, 3, shape), axis=1)  # photo-like: neighbours predict
    image = (smooth % np.iinfo(dtype).max).astype(dtype)
    data = encode(image, [1, 2, 40, ROWS_PER_PASS + 5])
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if channels >= 3:  # OpenCV gives BGR(A)
        decoded = np.concatenate([decoded[..., 2::-1], decoded[..., 3:]], axis=2)
    if channels == 2:  # OpenCV drops grey + alpha to BGRA; Pillow keeps it (8-bit only)
        if dtype == np.uint8:
            decoded = np.asarray(Image.open(io.BytesIO(data)).convert("LA"))
        else:
            decoded = np.stack([decoded[..., 0], decoded[..., 3]], axis=2)
    assert decoded.dtype == dtype and np.array_equal(decoded, image)


def test_large_image_spans_several_idat_chunks():
    image = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)  # incompressible
    data = encode(image, [100, 350])
    assert data.count(b"IDAT") >= 2 and len(data) > IDAT_BYTES
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), image)


def test_row_count_and_kind_are_enforced():
    png = PNGStreamWriter(io.BytesIO(), 4, 3, 3, 8)
    with pytest.raises(ValueError, match="uint8"):
        png.write(np.zeros((1, 4, 3), np.uint16))
    with pytest.raises(ValueError, match="shape"):
        png.write(np.zeros((1, 5, 3), np.uint8))
    png.write(np.zeros((2, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="1 rows missing"):
        png.close()
    with pytest.raises(ValueError, match="more rows"):
        png.write(np.zeros((2, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="1 to 4 channels"):
        PNGStreamWriter(io.BytesIO(), 4, 3, 5, 8)
