"""The benchmark script runs end to end (CPU smoke mode: the numbers mean nothing, the table,
the correctness column and the JSON must be there)."""

from __future__ import annotations

import json

from rsd_deploy.kernels import bench_window_attention as bench


def test_benchmark_smoke_run_writes_table_and_json(tmp_path, capsys, kernel_device):
    if kernel_device.type == "cuda":
        args = ["--skip-model", "--grids", "8", "--batches", "1", "--out", str(tmp_path)]
    else:
        args = ["--smoke", "--skip-model", "--grids", "8", "--out", str(tmp_path)]
    assert bench.main(args) == 0
    printed = capsys.readouterr().out
    assert "| 8x8 | 1 | 0 |" in printed and "vs eager" in printed
    result = json.loads((tmp_path / "bench_window_attention.json").read_text())
    (row,) = result["ops"]
    assert row["rel_err"] < 2e-3
    assert {"eager_us", "sdpa_us", "triton_us", "vs_eager", "vs_sdpa", "triton_tbps"} <= set(row)
    assert result["environment"]["versions"]["torch"] and result["summary"]["targets"] == bench.TARGETS
    assert result["environment"]["smoke_run"] == (kernel_device.type == "cpu")
