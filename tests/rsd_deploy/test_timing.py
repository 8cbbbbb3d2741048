"""The shared timer: how many calls it makes and times, the statistics it reports, peak RSS. No
assertion compares one duration with another (benchmarks only)."""

from __future__ import annotations

import mmap
import time

import pytest
import torch

from rsd_deploy.timing import PeakRSS, Timer, Timing, cuda_graph


class Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return self.calls


def test_warmup_then_min_iters_when_the_budget_is_spent():
    counter = Counter()
    timing, last = Timer("cpu", warmup=2, min_iters=3, max_iters=10, budget_s=0.0).measure(counter)
    assert timing.iterations == 3 and counter.calls == 2 + 3 and last == 5  # the last call's result
    assert timing.first_call_ms is not None and timing.first_call_ms >= 0
    assert 0 <= timing.min_ms <= timing.p50_ms <= timing.p90_ms <= timing.p99_ms <= timing.max_ms


def test_max_iters_bounds_a_large_budget():
    counter = Counter()
    timing, _ = Timer("cpu", warmup=1, min_iters=1, max_iters=4, budget_s=60.0).measure(counter)
    assert timing.iterations == 4 and counter.calls == 5


def test_percentiles_of_known_times():
    timing = Timing.of([float(v) for v in range(1, 101)], first_call_ms=7.0)
    assert (timing.p50_ms, timing.min_ms, timing.max_ms, timing.mean_ms) == (50.5, 1.0, 100.0, 50.5)
    assert timing.p90_ms == pytest.approx(90.1) and timing.p99_ms == pytest.approx(99.01)
    assert timing.to_json()["iterations"] == 100 and timing.to_json()["first_call_ms"] == 7.0
    with pytest.raises(ValueError, match="no timed calls"):
        Timing.of([])


@pytest.mark.parametrize("settings", [dict(warmup=0), dict(min_iters=0), dict(min_iters=5, max_iters=4), dict(budget_s=-1)])
def test_bad_settings_are_refused(settings):
    with pytest.raises(ValueError, match="timer: need"):
        Timer("cpu", **settings)


def test_settings_name_the_clock():
    settings = Timer("cpu", flush_l2=True).settings()
    assert settings["clock"] == "perf_counter" and settings["flush_l2"] is False  # no L2 to flush on the CPU


def test_peak_rss_sees_memory_freed_before_the_block_ends():
    sampler = PeakRSS()
    size = 64 * 2**20
    with sampler.track():
        block = mmap.mmap(-1, size)  # its own mapping: unmapped (and gone from RSS) on close
        block.write(b"\x01" * size)
        touched = sampler.rss()
        deadline = time.monotonic() + 30
        while sampler.peak < touched and time.monotonic() < deadline:  # the sampling thread's next look
            time.sleep(0.01)
        block.close()
    assert touched - sampler.start >= 48 * 2**20 and sampler.peak >= touched


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA events and graphs need a CUDA GPU")
def test_cuda_events_l2_flush_and_graph_replay():
    x = torch.randn(1024, 1024, device="cuda")
    out = torch.empty_like(x)
    timer = Timer("cuda", warmup=2, min_iters=5, max_iters=5, budget_s=0.0, flush_l2=True)
    timing, _ = timer.measure(lambda: torch.mm(x, x, out=out))
    assert timing.iterations == 5 and timing.p50_ms > 0
    assert timer.settings()["clock"] == "CUDA events" and timer.settings()["flush_l2"] is True
    replay = cuda_graph(lambda: out.add_(1), calls=3)
    out.zero_()
    replay()
    torch.cuda.synchronize()
    assert out.eq(3).all()
