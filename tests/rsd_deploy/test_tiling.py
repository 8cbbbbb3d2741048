"""Padding and tiling: any size works, one tile equals no tiling, tiles blend without seams; the
tile scheduler (one shape, batches across images, host work beside compute, one failing image
fails alone); the official scripts' chopping reproduced."""

from __future__ import annotations

import contextlib
import threading

import pytest
import torch
import torch.nn.functional as F

from rsd_deploy.chain import pad_to_multiple
from rsd_deploy.checkpoints import default_pipeline
from rsd_deploy.pipeline import SRPipeline
from rsd_deploy.sampling import PRIOR_STREAM
from rsd_deploy.tiling import (
    OFFICIAL,
    ImageJob,
    NonFiniteOutputError,
    StripBlender,
    TileModel,
    TileOptions,
    TileScheduler,
    blend_ramp,
    plan_tiles,
    tile_starts,
    upscale_images,
)


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
    with pytest.raises(ValueError, match="multiple of 64"):
        TileOptions(size=(128, 100))
    with pytest.raises(ValueError, match="overlap"):
        TileOptions(size=64, overlap=64)
    for batch in (0, -1):  # -1 once gave an all-black image, 0 a range() error
        with pytest.raises(ValueError, match="tile batch must be at least 1"):
            TileOptions(size=64, batch=batch)
    with pytest.raises(ValueError, match="tiling must be one of seamless, official"):
        TileOptions(tiling="fast")
    with pytest.raises(ValueError, match="cannot be static"):
        TileOptions(tiling=OFFICIAL, static=True)


def official_chop_starts(length: int, chop: int, stride: int) -> list[int]:
    """ImageSpliterTh.extract_starts of the ResShift / SinSR / RSD repositories, transcribed."""
    if length <= chop:
        return [0]
    starts = list(range(0, length, stride))
    starts = [min(start, length - chop) if start + chop > length else start for start in starts]
    return sorted(set(starts), key=starts.index)


@pytest.mark.parametrize("chop,stride", [(512, 448), (256, 224), (64, 48)])
def test_tile_starts_are_the_official_chop_starts(chop, stride):
    for length in range(1, 3 * chop + 2):
        assert tile_starts(length, min(chop, length), chop - stride) == official_chop_starts(length, chop, stride), length


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


def test_nan_output_is_an_error():
    from rsd_deploy.checkpoints import default_pipeline

    pipe = default_pipeline()
    with torch.no_grad():
        pipe.unet.out[-1].bias.fill_(float("nan"))
    with pytest.raises(NonFiniteOutputError, match="NaN/Inf"):
        pipe(torch.rand(1, 3, 16, 16))


def test_static_tiles_pad_small_images_up_to_the_tile():
    plan = plan_tiles(20, 300, TileOptions(128, 32, static=True), scale=4)
    assert plan.canvas == (128, 320) and plan.shape == (128, 128) and [top for top, _ in plan.boxes] == [0, 0, 0]
    assert plan_tiles(20, 300, TileOptions(128, 32), scale=4).shape == (64, 128)  # not static: tiles shrink to the image
    official = plan_tiles(150, 40, TileOptions(64, 16, tiling=OFFICIAL), scale=4)
    assert official.canvas == (150, 40) and official.chop == (64, 40) and official.shape == (64, 64)
    assert official.boxes == ((0, 0), (48, 0), (86, 0)) and official.ramp == 0


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


# --- the tile scheduler -------------------------------------------------------------------------


def elementwise_model(calls: list | None = None, black_fails: bool = False) -> TileModel:
    """A stand-in network whose tiles cannot influence each other (nearest x4 of lq plus some of
    its noise), for exact checks of the scheduling; it records every call's input shape and,
    with ``black_fails``, returns NaN for all-black tiles."""

    def run(lq: torch.Tensor, noise) -> dict[str, torch.Tensor]:
        if calls is not None:
            calls.append(tuple(lq.shape))
        hr = F.interpolate(lq + 0.1 * noise(PRIOR_STREAM, 3), scale_factor=4, mode="nearest")
        if black_fails:
            hr[(lq == -1).flatten(1).all(1)] = float("nan")
        return {"hr": hr}

    return TileModel(run, scale=4, latent_channels=3)


def photos(*sizes: tuple[int, int], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=generator) for h, w in sizes]


def test_one_tile_shape_for_every_call_and_batches_across_images():
    images = photos((20, 24), (100, 300), (64, 64))
    calls = []
    tiles = TileOptions(128, 32, batch=3, static=True)
    batched, stats = upscale_images(elementwise_model(calls), images, tiles, seed=5)
    # 1 + 3 + 1 tiles: two calls of three (the second filled up with a copy), all 128 x 128
    assert calls == [(3, 3, 128, 128)] * 2 and (stats.tiles, stats.calls, stats.filler_tiles) == (5, 2, 1)
    for index, (image, out) in enumerate(zip(images, batched)):
        alone, _ = upscale_images(elementwise_model(), [image], TileOptions(128, 32, batch=1, static=True), seed=5, samples=[index])
        assert out.shape == (3, 4 * image.shape[1], 4 * image.shape[2]) and torch.equal(out, alone[0])


def test_reading_and_writing_overlap_compute():
    """The first network call waits until the second image has been read, and the first image's
    strip is written only once the network works on the second image: a run that read, computed
    and wrote one step after the other would wait in vain at both."""
    second_read, second_call = threading.Event(), threading.Event()
    waited, calls, written = [], [], {0: [], 1: []}
    model = elementwise_model()

    def run(lq, noise):
        calls.append(1)
        if len(calls) == 1:
            waited.append(("second image read during the first call", second_read.wait(30)))
        else:
            second_call.set()
        return model.run(lq, noise)

    def job(index: int, image: torch.Tensor) -> ImageJob:
        def read():
            if index == 1:
                second_read.set()
            return image

        @contextlib.contextmanager
        def sink():
            def write(strip):
                if index == 0:
                    waited.append(("second call while the first image is written", second_call.wait(30)))
                written[index].append(strip)

            yield write

        return ImageJob(read, sink)

    scheduler = TileScheduler(TileModel(run, 4, 3), TileOptions(64, 0, static=True))
    results = list(scheduler.run([job(i, image) for i, image in enumerate(photos((64, 64), (64, 64)))]))
    assert [r.error for r in results] == [None, None]
    assert waited == [("second image read during the first call", True), ("second call while the first image is written", True)]
    stats = scheduler.stats
    assert stats.images == 2 and stats.read_s >= 0 and stats.write_s > 0 and stats.compute_s > 0


def test_a_failing_image_fails_alone():
    """Unreadable, NaN output, or a sink that cannot be opened: that image fails (its sink sees
    the error, so it discards its file); the others, batched with it, are unaffected."""
    good = photos((64, 100), (64, 64), seed=1)
    black = torch.zeros(3, 64, 200)
    exits = {}

    def job(name: str, image: torch.Tensor | None, open_error: Exception | None = None) -> ImageJob:
        def read():
            if image is None:
                raise ValueError(f"{name}: not an image")
            return image

        @contextlib.contextmanager
        def sink():
            if open_error is not None:
                raise open_error
            try:
                yield lambda strip: None
            except BaseException as error:
                exits[name] = error
                raise
            exits[name] = None

        return ImageJob(read, sink, key=name)

    jobs = [job("a", good[0]), job("black", black), job("unreadable", None), job("no room", good[1], OSError("disk full")), job("b", good[1])]
    results = list(TileScheduler(elementwise_model(black_fails=True), TileOptions(64, 0, batch=4, static=True)).run(jobs))
    assert [r.job.key for r in results] == ["a", "black", "unreadable", "no room", "b"]
    errors = {r.job.key: r.error for r in results}
    assert errors["a"] is None and errors["b"] is None
    assert isinstance(errors["black"], NonFiniteOutputError) and "decoded image has NaN/Inf values (tile at LR row 0, column 0)" in str(errors["black"])
    assert str(errors["unreadable"]) == "unreadable: not an image" and str(errors["no room"]) == "disk full"
    assert exits == {"a": None, "black": errors["black"], "b": None}


def test_torch_cpu_tile_batch_difference_is_bounded():
    """PyTorch's CPU Linear layers (the time embedding) round differently for another batch size,
    so --tile-batch 4 and 1 differ in the last bits (ONNX Runtime's do not: tested with the
    command line). Measured: 6e-7 at most, and under 1e-5 of the 8-bit values move by one."""
    pipe = default_pipeline()
    images = photos((100, 150), (64, 64), seed=2)
    one, _ = upscale_images(pipe.tile_model(), images, TileOptions(64, 16, batch=1, static=True), seed=3)
    four, stats = upscale_images(pipe.tile_model(), images, TileOptions(64, 16, batch=4, static=True), seed=3)
    assert (stats.tiles, stats.calls, stats.filler_tiles) == (13, 4, 3)  # 12 + 1 tiles
    for a, b in zip(one, four):
        assert (a - b).abs().max() <= 1e-5
        assert ((a * 255).round() - (b * 255).round()).abs().max() <= 1


def test_the_chain_over_another_stage_function_is_the_pipelines_output(tiny_rsd):
    """``tile_model(stage=...)``: another backend's stages with the model's constants; here the
    model's own stages wrapped as a foreign stage function give the same pixels."""
    images = photos((64, 64), seed=4)
    calls = []

    def stage(name, feeds):
        calls.append(name)
        return tiny_rsd.run_stage(name, feeds)

    mine, _ = upscale_images(tiny_rsd.tile_model(), images, seed=5)
    theirs, _ = upscale_images(tiny_rsd.tile_model(stage=stage), images, seed=5)
    assert calls == ["encoder", "generator", "decoder"] and torch.equal(mine[0], theirs[0])
    with pytest.raises(ValueError, match="not 15 steps"):
        tiny_rsd.tile_model(15, stage=stage)


# --- the official scripts' chopping --------------------------------------------------------------


def official_procedure(pipe: SRPipeline, images: list[torch.Tensor], chop: int, stride: int, seed: int) -> list[torch.Tensor]:
    """The ResShift / SinSR / RSD inference scripts on one-step RSD, transcribed: torch seeded once
    per run; every chop (ImageSpliterTh order) reflect-padded to a multiple of 64, the noise map,
    eps and the step's posterior noise drawn in turn, decoded, cropped, clamped; chops summed and
    divided by their count."""
    generator = torch.Generator().manual_seed(seed)
    scale, outputs = pipe.codec.scale, []
    for lr in images:
        lq = (lr[None] - 0.5) / 0.5
        height, width = lq.shape[-2:]
        total, count = torch.zeros(1, 3, height * scale, width * scale), torch.zeros(1, 3, height * scale, width * scale)
        for top in official_chop_starts(height, chop, stride):
            for left in official_chop_starts(width, chop, stride):
                y0 = lq[..., top : top + chop, left : left + chop]
                rows, cols = y0.shape[-2:]
                if rows % 64 or cols % 64:
                    y0 = F.pad(y0, (0, -cols % 64, 0, -rows % 64), mode="reflect")
                noise_map = torch.randn(1, pipe.unet.noise_channels, *y0.shape[-2:], generator=generator)
                z_y = pipe.run_stage("encoder", {"lq_up": F.interpolate(y0, scale_factor=scale, mode="bicubic")})
                x_t = z_y + pipe.schedule.prior_scale * torch.randn(z_y.shape, generator=generator)
                x0 = pipe.run_stage("generator", {"x_t": x_t, "lq": y0, "noise_map": noise_map})
                torch.randn(x_t.shape, generator=generator)  # p_sample's noise at t = T-1: drawn, unused by one step
                hr = pipe.run_stage("decoder", {"z": x0})[..., : rows * scale, : cols * scale].clamp(-1, 1)
                total[..., top * scale : (top + rows) * scale, left * scale : (left + cols) * scale] += hr
                count[..., top * scale : (top + rows) * scale, left * scale : (left + cols) * scale] += 1
        outputs.append((total / count)[0] * 0.5 + 0.5)
    return outputs


def test_official_tiling_is_the_official_procedure():
    """Chops of 64 with stride 48 (the scripts' smallest setting), a side narrower than a chop
    (padded on its own), an image smaller than a chop (run whole), two images in one run (the
    noise runs on). One chop per call, as the scripts run them (PyTorch's CPU results move in
    the last bits with the batch size)."""
    pipe = default_pipeline()
    images = photos((150, 40), (40, 50), seed=4)
    with torch.no_grad():
        expected = official_procedure(pipe, images, 64, 48, seed=9)
    got, _ = upscale_images(pipe.tile_model(), images, TileOptions(64, 16, tiling=OFFICIAL), seed=9)
    for a, b in zip(got, expected):
        assert a.shape == b.shape and torch.equal(a, b)


def test_official_chops_of_one_padded_shape_share_calls():
    calls = []
    images = photos((150, 40), (40, 50), (100, 100))
    upscale_images(elementwise_model(calls), images, TileOptions(64, 16, batch=2, tiling=OFFICIAL))
    # 3 chops of 64 x 40 and the 40 x 50 image run at 64 x 64; the 100 x 100 image is chopped into 64 x 64 ones
    assert calls == [(2, 3, 64, 64)] * 4
