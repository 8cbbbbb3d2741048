"""imageio: upright reading, size limits before decoding, PNGs written strip by strip."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from rsd_deploy.imageio import (
    EXIF_ORIENTATION,
    ImageError,
    ImageTooLargeError,
    Picture,
    list_images,
    png_strips,
    read_image,
    resize_rows,
    write_png,
)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation, suffix):
    rng = np.random.default_rng(orientation)
    image = Image.fromarray(rng.integers(0, 256, (6, 10, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    path = tmp_path / f"phone{suffix}"
    image.save(path, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    got = read_image(path).rgb.permute(1, 2, 0).numpy()
    assert np.array_equal(np.round(got * 255).astype(np.uint8), expected)


def test_exif_orientation_of_16_bit_files(tmp_path):
    deep = (np.arange(6 * 10).reshape(6, 10) * 1000).astype(np.uint16)  # not a multiple of 257: truly 16-bit
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored turned left: shown turned right
    path = tmp_path / "deep.png"
    Image.fromarray(deep).save(path, exif=exif)
    picture = read_image(path)
    assert picture.bit_depth == 16 and picture.grayscale
    assert np.array_equal(np.round(picture.rgb[0].numpy() * 65535).astype(np.uint16), np.rot90(deep, -1))


def test_declared_size_is_checked_before_decoding(tmp_path, declared_png):
    big = tmp_path / "big.png"
    declared_png(big, 6000, 6000)  # its pixel data is missing: decoding would say "truncated"
    with pytest.raises(ImageTooLargeError, match=r"6000x6000 is 36000000 pixels, over the limit of 16777216"):
        read_image(big, max_pixels=4096 * 4096)
    with pytest.raises(ImageError, match="truncated"):  # under the limit it is decoded
        read_image(big, max_pixels=6000 * 6000)


def test_decompression_bomb_is_an_image_error(tmp_path, declared_png):
    bomb = tmp_path / "bomb.png"
    declared_png(bomb, 100_000, 100_000)
    with pytest.raises(ImageTooLargeError, match="bomb.png: declares more pixels than Pillow's"):
        read_image(bomb)


def test_resize_rows_equals_rows_of_the_whole_resize():
    generator = torch.Generator().manual_seed(0)
    for h, w in [(1, 1), (2, 3), (37, 23)]:
        alpha = torch.rand(1, h, w, generator=generator)
        whole = F.interpolate(alpha[None], size=(4 * h, 4 * w), mode="bicubic")[0]
        for cuts in ([0, 4 * h], [0, 1, 4 * h], [0, 5, 13, 4 * h], sorted({*range(0, 4 * h, 3), 4 * h})):
            rows = [resize_rows(alpha, 4, top, bottom) for top, bottom in zip(cuts, cuts[1:]) if bottom > top]
            assert torch.equal(torch.cat(rows, 1), whole)


@pytest.mark.parametrize("kind", ["gray", "rgba", "deep"])
def test_strips_give_the_whole_picture_pixels(tmp_path, kind):
    """An upscale written in strips (alpha resized per strip) has exactly the pixels of the same
    upscale written at once, alpha resized whole."""
    generator = torch.Generator().manual_seed(1)
    lr = Picture(torch.rand(3, 9, 7, generator=generator), grayscale=kind == "gray", bit_depth=16 if kind == "deep" else 8)
    if kind == "rgba":
        lr.alpha = torch.rand(1, 9, 7, generator=generator)
    hr = torch.rand(3, 36, 28, generator=generator)
    with png_strips(tmp_path / "strips.png", lr, scale=4) as write:
        for top, bottom in [(0, 1), (1, 17), (17, 36)]:
            write(hr[:, top:bottom])
    alpha = None if lr.alpha is None else F.interpolate(lr.alpha[None], size=(36, 28), mode="bicubic")[0].clamp(0, 1)
    write_png(tmp_path / "whole.png", Picture(hr, alpha, lr.grayscale, lr.bit_depth))
    strips = cv2.imread(str(tmp_path / "strips.png"), cv2.IMREAD_UNCHANGED)
    whole = cv2.imread(str(tmp_path / "whole.png"), cv2.IMREAD_UNCHANGED)
    assert strips.shape == whole.shape and strips.dtype == whole.dtype and np.array_equal(strips, whole)
    assert strips.shape[:2] == (36, 28) and strips.dtype == (np.uint16 if kind == "deep" else np.uint8)
    assert strips.ndim == (2 if kind == "gray" else 3)


def test_kinds_survive_a_write_and_read(tmp_path):
    generator = torch.Generator().manual_seed(2)
    rgb = torch.rand(3, 5, 6, generator=generator)
    gray = rgb[:1].expand(3, -1, -1)
    for name, picture in [
        ("rgb", Picture(rgb)),
        ("gray", Picture(gray.clone(), grayscale=True)),
        ("rgba", Picture(rgb, torch.rand(1, 5, 6, generator=generator))),
        ("deep", Picture(rgb, bit_depth=16)),
    ]:
        write_png(tmp_path / f"{name}.png", picture)
        back = read_image(tmp_path / f"{name}.png")
        levels = 65535 if picture.bit_depth == 16 else 255
        assert (back.grayscale, back.bit_depth, back.alpha is None) == (picture.grayscale, picture.bit_depth, picture.alpha is None)
        assert (back.rgb - picture.rgb).abs().max() <= 0.5 / levels + 1e-6
        if picture.alpha is not None:
            assert (back.alpha - picture.alpha).abs().max() <= 0.5 / levels + 1e-6


def test_failed_strip_write_leaves_nothing(tmp_path):
    picture = Picture(torch.rand(3, 4, 4))
    with pytest.raises(RuntimeError):
        with png_strips(tmp_path / "out.png", picture, scale=4) as write:
            write(torch.rand(3, 8, 16))
            raise RuntimeError("the model failed half-way")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="rows missing"):  # too few rows is a failure too
        with png_strips(tmp_path / "out.png", picture, scale=4) as write:
            write(torch.rand(3, 8, 16))
    assert list(tmp_path.iterdir()) == []


def test_list_images_recurses_and_skips_hidden_and_output(tmp_path):
    for name in ["b.png", "a.JPG", "notes.txt", ".hidden.png", ".x.abcdefgh.partial.png", "sub/c.png", ".git/d.png", "out/e_x4.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = list_images([tmp_path, tmp_path / "sub" / "c.png", tmp_path / "absent.png"], skip=tmp_path / "out")
    assert [(str(p.relative_to(tmp_path)), str(n)) for p, n in found[:3]] == [("a.JPG", "a.JPG"), ("b.png", "b.png"), ("sub/c.png", "sub/c.png")]
    assert [(p.name, str(n)) for p, n in found[3:]] == [("c.png", "c.png"), ("absent.png", "absent.png")]
