"""The large-image run of rsd-bench: every tile batch size sees the same tiles, calls shrink with
the batch, the gain column is relative to tile-batch 1, and --large-image reaches the reports."""

from __future__ import annotations

import json
import math

from rsd_deploy.export.bench import main
from rsd_deploy.export.bench_tiled import OVERLAP, large_photo, markdown_rows, measure_tiled
from rsd_deploy.tiling import TileOptions, plan_tiles


def test_every_batch_size_runs_the_same_tiles(micro_pixel_unshuffle):
    image = large_photo(192)
    assert image.shape == (3, 192, 192) and 0 <= image.min() and image.max() <= 1
    rows = measure_tiled("pytorch-fp32", micro_pixel_unshuffle.tile_model(), image, tile=64, batches=(1, 3))
    tiles = len(plan_tiles(192, 192, TileOptions(size=64, overlap=OVERLAP, static=True), scale=4).boxes)
    assert [(r.tile_batch, r.tiles, r.calls) for r in rows] == [(1, tiles, tiles), (3, tiles, math.ceil(tiles / 3))]
    assert rows[0].gain_vs_batch_1 == 1.0 and rows[1].gain_vs_batch_1 == round(rows[1].tiles_per_s / rows[0].tiles_per_s, 3)
    assert all(r.wall_s > 0 and r.compute_s > 0 for r in rows)
    table = markdown_rows(rows)
    assert "one 192 x 192 LR photo, tiles of 64 LR px" in table[1] and table[-1].startswith("| pytorch-fp32 | 3 |")


def test_large_image_option_reaches_the_reports(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--preset", "tiny-rsd", "--backends", "pytorch-fp32,onnxruntime-cpu", "--batch", "1", "--iters", "1", "--min-iters", "1",
                 "--budget-s", "0", "--device", "cpu", "--threads", "1", "--large-image", "128", "--tile", "64", "--tile-batch", "1,2",
                 "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    rows = [(r["backend"], r["tile_batch"]) for r in report["large_image"]]
    assert rows == [("pytorch-fp32", 1), ("pytorch-fp32", 2), ("onnxruntime-cpu", 1), ("onnxruntime-cpu", 2)]
    assert "Large image: one 128 x 128 LR photo" in (out / "bench.md").read_text()
    assert "large image, tile batch 2" in capsys.readouterr().out
