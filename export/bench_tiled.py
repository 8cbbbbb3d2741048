"""``rsd-bench --large-image SIDE``: one SIDE x SIDE LR photo through the tile scheduler of
``rsd-upscale`` (:func:`rsd_deploy.tiling.upscale_images`: static tiles, a reader and a writer
thread beside the network), on each backend that runs the chain's stages, once per
``--tile-batch``. The gain of batching tiles is each row's tiles/s over the same backend's
tile-batch 1 row, measured side by side in one run; every batch size gets the same pixels.

Each timed run follows an untimed one-call run at the same tile shape and batch (sessions,
engines and allocators warm), so the rows compare steady states.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rsd_deploy import photos
from rsd_deploy.tiling import TileModel, TileOptions, upscale_images

OVERLAP = TileOptions.overlap  # the tiling default, rsd-upscale's too


@dataclass
class TiledResult:
    backend: str
    lr_size: int
    tile: int
    tile_batch: int
    tiles: int
    calls: int
    wall_s: float
    tiles_per_s: float
    compute_s: float  # time inside the network calls
    host_s: float  # the reader's and the writer's busy time (overlapping compute)
    gain_vs_batch_1: float | None = None  # tiles/s over this backend's tile-batch 1 row


def large_photo(side: int) -> torch.Tensor:
    """A (3, side, side) LR image in [0, 1]: scikit-image's astronaut, resized (bicubic) to side."""
    image = photos.photo("astronaut")[None]
    return F.interpolate(image, size=(side, side), mode="bicubic", align_corners=False, antialias=True)[0].clamp(0, 1)


def measure_tiled(name: str, model: TileModel, image: torch.Tensor, tile: int, batches: tuple[int, ...], seed: int = 0) -> list[TiledResult]:
    """``image`` through ``model`` with tiles of ``tile`` LR px, once per tile batch size."""
    results = []
    for batch in batches:
        options = TileOptions(size=tile, overlap=OVERLAP, batch=batch, static=True)
        upscale_images(model, [image[:, :tile, :tile]], options, seed)  # warm-up: one call of this shape
        _, stats = upscale_images(model, [image], options, seed)
        results.append(TiledResult(name, image.shape[-1], tile, batch, stats.tiles, stats.calls, round(stats.wall_s, 2),
                                   round(stats.tiles_per_s(), 3), round(stats.compute_s, 2), round(stats.read_s + stats.write_s, 2)))
    base = next((r for r in results if r.tile_batch == 1), None)
    for r in results:
        r.gain_vs_batch_1 = round(r.tiles_per_s / base.tiles_per_s, 3) if base and base.tiles_per_s else None
    return results


def markdown_rows(results: list[TiledResult]) -> list[str]:
    """The ``bench.md`` table of the large-image runs (empty when there were none)."""
    if not results:
        return []
    first = results[0]
    lines = ["", f"Large image: one {first.lr_size} x {first.lr_size} LR photo, tiles of {first.tile} LR px (overlap {OVERLAP}), "
             "rsd-upscale's tile scheduler:", "",
             "| backend | tile batch | tiles (calls) | wall s | tiles/s | x tile-batch 1 | network s | host s |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        gain = "-" if r.gain_vs_batch_1 is None else f"{r.gain_vs_batch_1:.2f}"
        lines.append(f"| {r.backend} | {r.tile_batch} | {r.tiles} ({r.calls}) | {r.wall_s:.1f} | {r.tiles_per_s:.2f} | {gain} | "
                     f"{r.compute_s:.1f} | {r.host_s:.1f} |")
    return lines
