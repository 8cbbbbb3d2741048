"""Padding and tiling: any size works, one tile equals no tiling, tiles blend without seams."""

from __future__ import annotations

import pytest
import torch

from rsd_deploy.models.autoencoder import PixelUnshuffleCodec
from rsd_deploy.models.unet import UNetModelSwin
from rsd_deploy.pipeline import (
    NonFiniteOutputError,
    SRPipeline,
    StripBlender,
    TileOptions,
    blend_ramp,
    pad_to_multiple,
    tile_starts,
)
from rsd_deploy.presets import TINY_UNET
from rsd_deploy.schedule import TEACHER_15


def test_pad_to_multiple():
    x = torch.arange(2 * 70.0).view(1, 1, 2, 70)
    padded = pad_to_multiple(x)
    assert padded.shape == (1, 1, 64, 128)  # 2 rows cannot reflect 62 -> replicate
    y = torch.rand(1, 3, 100, 65)
    p = pad_to_multiple(y)
    assert p.shape == (1, 3, 128, 128) and torch.equal(p[..., :100, :65], y)
    assert torch.equal(p[..., 100, :65], y[..., 98, :])  # reflect, as the reference
    assert pad_to_multiple(torch.rand(1, 3, 64, 128)).shape == (1, 3, 64, 128)


@pytest.mark.parametrize("length,tile,overlap", [(64, 256, 32), (320, 256, 32), (1024, 256, 64), (4032, 512, 64)])
def test_tile_starts_cover_with_overlap(length, tile, overlap):
    starts = tile_starts(length, min(tile, length), overlap)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    assert all(b - a <= size - overlap for a, b in zip(starts, starts[1:]))


def test_blend_ramp_is_partition_of_unity_on_overlap():
    ramp = 32
    left = blend_ramp(128, ramp, fade_in=False, fade_out=True)
    right = blend_ramp(128, ramp, fade_in=True, fade_out=False)
    # overlap of 32 samples: left's last 32 + right's first 32 sum to 1
    assert torch.allclose(left[-32:] + right[:32], torch.ones(32))


def test_tile_options_validated():
    with pytest.raises(ValueError, match="multiple of 64"):
        TileOptions(size=100)
    with pytest.raises(ValueError, match="overlap"):
        TileOptions(size=64, overlap=64)
    for batch in (0, -1):  # -1 once gave an all-black image, 0 a range() error
        with pytest.raises(ValueError, match="tile batch must be at least 1"):
            TileOptions(size=64, batch=batch)


def test_strip_blend_equals_the_whole_canvas_blend():
    """Tiles blended in strips, rows handed out as soon as no later tile touches them, give
    bit for bit the whole-canvas blend; the rows held at once never exceed a row of tiles."""
    height, width, tile, overlap, scale = 100, 70, 32, 10, 4
    generator = torch.Generator().manual_seed(3)
    boxes = [(t, l) for t in tile_starts(height, tile, overlap) for l in tile_starts(width, tile, overlap)]
    tiles = [torch.rand(3, tile * scale, tile * scale, generator=generator) for _ in boxes]
    ramp = overlap * scale

    def weight(top, left):
        return (blend_ramp(tile * scale, ramp, top > 0, top + tile < height)[:, None]
                * blend_ramp(tile * scale, ramp, left > 0, left + tile < width)[None, :])

    total = torch.zeros(3, height * scale, width * scale)
    weights = torch.zeros(1, height * scale, width * scale)
    for (top, left), hr in zip(boxes, tiles):
        y, x = top * scale, left * scale
        total[:, y : y + tile * scale, x : x + tile * scale] += hr * weight(top, left)
        weights[:, y : y + tile * scale, x : x + tile * scale] += weight(top, left)
    whole = total / weights

    blender, strips, held = StripBlender(3, width * scale), [], 0
    for index, ((top, left), hr) in enumerate(zip(boxes, tiles)):
        blender.add(hr, weight(top, left), top * scale, left * scale)
        held = max(held, blender.total.shape[1])
        finished = boxes[index + 1][0] * scale if index + 1 < len(boxes) else height * scale
        if finished > blender.top:
            strips.append(blender.take(finished))
    assert torch.equal(torch.cat(strips, 1), whole)
    assert len(strips) == len(tile_starts(height, tile, overlap)) and held == tile * scale
    with pytest.raises(ValueError, match="arrived after"):
        blender.add(tiles[0], weight(0, 0), 0, 0)


def test_strips_are_the_forward_output(micro_pixel_unshuffle):
    lr = torch.rand(3, 100, 70, generator=torch.Generator().manual_seed(5))  # padded to 128 x 128
    tiles = TileOptions(size=64, overlap=16, batch=2)  # 3 x 3 tiles; batches straddle rows of tiles
    strips = list(micro_pixel_unshuffle.upscale_strips(lr, seed=7, tiles=tiles))
    assert [s.shape[1:] for s in strips] == [(192, 280), (64, 280), (144, 280)]  # the padding cropped
    whole = micro_pixel_unshuffle(lr[None], seed=7, tiles=tiles)[0]
    assert torch.equal(torch.cat(strips, 1), whole)


def test_nan_output_is_an_error():
    from rsd_deploy.checkpoints import default_pipeline

    pipe = default_pipeline()
    with torch.no_grad():
        pipe.unet.out[-1].bias.fill_(float("nan"))
    with pytest.raises(NonFiniteOutputError, match="NaN/Inf"):
        pipe(torch.rand(1, 3, 16, 16))


def test_tiled_equals_untiled_when_one_tile_fits(tiny_rsd):
    lr = torch.rand(1, 3, 70, 100, generator=torch.Generator().manual_seed(0))
    whole = tiny_rsd(lr, seed=4, tiles=TileOptions(size=256))
    assert torch.equal(whole, tiny_rsd(lr, seed=4, tiles=TileOptions(size=128, overlap=16)))


def test_tiles_agree_where_they_overlap(tiny_rsd):
    # far from tile borders, tiled output matches the untiled one closely: same noise, same
    # model; only the receptive field near tile edges differs
    lr = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    whole = tiny_rsd(lr, seed=2, tiles=TileOptions(size=128))
    tiled = tiny_rsd(lr, seed=2, tiles=TileOptions(size=64, overlap=32, batch=4))
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().mean() < (whole - whole.mean()).abs().mean()


def test_one_pixel_input(tiny_rsd):
    out = tiny_rsd(torch.full((1, 3, 1, 1), 0.5))
    assert out.shape == (1, 3, 4, 4) and torch.isfinite(out).all()


@pytest.mark.slow
def test_4000x3000_input_is_tiled():
    # the real UNet code path on a real 4000x3000 image; a one-level model with the parameter-free
    # codec keeps it within CI time
    torch.manual_seed(0)
    unet = UNetModelSwin(**{**TINY_UNET, "in_channels": 48, "out_channels": 48, "channel_mult": [1],
                            "num_res_blocks": [1], "attention_resolutions": [64]}).eval()
    pipe = SRPipeline(unet, PixelUnshuffleCodec(), TEACHER_15)
    lr = torch.rand(1, 3, 3000, 4000)
    out = pipe(lr, tiles=TileOptions(size=512, overlap=32, batch=1))
    assert out.shape == (1, 3, 12000, 16000) and torch.isfinite(out).all()
