"""rsd-bench's reports from a report: JSON, the markdown table and the plot, with backend
properties read from the report (no backend names in the renderer)."""

from __future__ import annotations

import json
import math

from PIL import Image

from rsd_deploy.export.bench_measure import BenchReport, CaseResult
from rsd_deploy.export.bench_report import markdown, write_report
from rsd_deploy.timing import Timing


def timing(ms: float) -> dict:
    return Timing.of([ms, ms * 1.1, ms * 1.2], first_call_ms=ms * 3).to_json()


def result(backend: str, batch: int, ms: float, psnr: float | None, speedups: dict) -> CaseResult:
    stages = {"encoder": timing(ms / 10), "generator": timing(ms * 0.8), "decoder": timing(ms / 10)}
    return CaseResult(backend, batch, 64, {**timing(ms), "images_per_s": batch * 1000 / ms}, stages,
                      {"peak_rss_mib": 900.0, "rss_growth_mib": 10.0}, {"psnr_db": psnr, "lpips": None if psnr is None else 0.01},
                      speedups)


def properties(**flags) -> dict:
    props = {"summary": "a backend", "needs_gpu": False, "reference": False, "upstream": False, "same_model": True,
             "notes": "", "prepare_s": 0.1, "end_to_end": "the fused pipeline stage"}
    return {**props, **flags}


def report() -> BenchReport:
    env = {"device": "CPU (test, 2 cores)", "versions": {"python": "3.11", "torch": "2"}, "torch_threads": 2, "load_average": [0.5, 0.4, 0.3]}
    timer = {"warmup": 1, "min_iters": 3, "max_iters": 20, "budget_s": 1.0, "clock": "perf_counter", "flush_l2": False}
    return BenchReport(
        env, "a model", {"batch": [1, 2], "lr_size": [64]}, timer, {"psnr": "dB vs ref", "lpips": "LPIPS-alex"},
        backends={"ref": properties(reference=True), "anchor": properties(upstream=True, end_to_end="the procedure itself"),
                  "chain": properties(upstream=True, same_model=False, notes="15 steps")},
        results=[result("ref", 1, 100.0, math.inf, {"anchor": 1.5, "chain": 15.0}), result("ref", 2, 180.0, math.inf, {"anchor": 1.6}),
                 result("anchor", 1, 150.0, 60.0, {"anchor": 1.0, "chain": 10.0}), result("chain", 1, 1500.0, None, {"chain": 1.0})],
        unavailable=[{"backend": "gpu-thing", "reason": "needs a CUDA GPU"}],
    )


def test_markdown_has_one_row_per_result_and_a_column_per_upstream_anchor():
    text = markdown(report())
    header = next(line for line in text.splitlines() if line.startswith("| backend"))
    assert header.endswith("| x anchor | x chain |") and "encoder p50 | generator p50 | decoder p50" in header
    assert "| ref | 1 | 64 | 110.0 / 118.0 / 119.8 | 10.00 |" in text  # percentiles of 100, 110, 120
    assert "| inf | 0.010 | 1.50 | 15.00 |" in text and "| 60.0 | 0.010 | 1.00 | 10.00 |" in text
    assert "| - | - | - | 1.00 |" in text  # the teacher: no quality, no one-step anchor
    assert "- `gpu-thing`: needs a CUDA GPU" in text and "- `chain`: a backend (15 steps); end to end: the fused pipeline stage" in text
    assert "load average at start 0.5, 0.4, 0.3" in text and "Latency (perf_counter)" in text


def test_files_written_whole(tmp_path):
    paths = write_report(report(), tmp_path / "out")
    assert [p.name for p in paths] == ["bench.json", "bench.md", "bench.png"]
    saved = json.loads(paths[0].read_text())
    assert saved["results"][0]["quality"]["psnr_db"] == math.inf and saved["backends"]["anchor"]["upstream"] is True
    with Image.open(paths[2]) as image:
        assert image.size[0] > 300 and image.size[1] > 200
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bench.json", "bench.md", "bench.png"]  # no temporaries left
