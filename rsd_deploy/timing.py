"""Timing for every benchmark in the project (``rsd-bench``, the kernel benchmark): one way to time.

:class:`Timer` times calls of a function: CUDA events around each call on a GPU (what the device
spent), ``perf_counter`` on the CPU. It makes ``warmup`` untimed calls (the first one, timed on its
own, includes lazy work: compilation, allocator growth, autotuning), then at least ``min_iters``
and at most ``max_iters`` timed calls, stopping once ``budget_s`` seconds have been spent. A
:class:`Timing` holds the percentiles. ``flush_l2`` overwrites a buffer larger than the GPU's L2
cache before each timed call (as ``triton.testing.do_bench``), so a kernel reads its inputs from
memory rather than from a cache the previous call warmed. :func:`cuda_graph` captures calls in
one CUDA graph (no launch overhead). :class:`PeakRSS` samples the process's resident memory while
a block runs.

    timer = Timer(torch.device("cpu"), warmup=1, min_iters=3, max_iters=20, budget_s=1.0)
    timing, output = timer.measure(lambda: model(x))
    timing.p50_ms, timing.iterations
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch

T = TypeVar("T")
L2_FLUSH_BYTES = 256 * 2**20  # larger than any current GPU's L2 (H100/H200: 50 MB, B200: 126 MB)


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call over ``iterations`` timed calls; ``first_call_ms`` is the first
    (warm-up) call alone."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    iterations: int
    first_call_ms: float | None = None

    @classmethod
    def of(cls, times_ms: list[float], first_call_ms: float | None = None) -> "Timing":
        if not times_ms:
            raise ValueError("no timed calls")
        values = np.asarray(times_ms, dtype=np.float64)
        p50, p90, p99 = (float(v) for v in np.percentile(values, (50, 90, 99)))
        return cls(p50, p90, p99, float(values.mean()), float(values.min()), float(values.max()), len(values), first_call_ms)

    def to_json(self) -> dict:
        return asdict(self)


class Timer:
    """See the module docstring. ``device`` decides the clock: CUDA events on ``cuda``, wall
    clock elsewhere."""

    def __init__(self, device: torch.device | str = "cpu", warmup: int = 1, min_iters: int = 3, max_iters: int = 20,
                 budget_s: float = 1.0, flush_l2: bool = False):
        if warmup < 1 or min_iters < 1 or max_iters < min_iters or budget_s < 0:
            raise ValueError(f"timer: need warmup >= 1, 1 <= min_iters <= max_iters, budget_s >= 0; got "
                             f"{warmup}, {min_iters}, {max_iters}, {budget_s}")
        self.device = torch.device(device)
        self.warmup, self.min_iters, self.max_iters, self.budget_s = warmup, min_iters, max_iters, budget_s
        self.on_gpu = self.device.type == "cuda"
        self._flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=self.device) if flush_l2 and self.on_gpu else None

    def settings(self) -> dict:
        return {"warmup": self.warmup, "min_iters": self.min_iters, "max_iters": self.max_iters, "budget_s": self.budget_s,
                "clock": "CUDA events" if self.on_gpu else "perf_counter", "flush_l2": self._flush is not None}

    def time_once(self, fn: Callable[[], T]) -> tuple[float, T]:
        """Milliseconds of one call of ``fn`` and what it returned."""
        if self._flush is not None:
            self._flush.zero_()
        if self.on_gpu:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end), result
        began = time.perf_counter()
        result = fn()
        return (time.perf_counter() - began) * 1000, result

    def measure(self, fn: Callable[[], T]) -> tuple[Timing, T]:
        """Timing statistics of ``fn`` and what its last call returned."""
        first_ms, result = self.time_once(fn)
        for _ in range(self.warmup - 1):
            self.time_once(fn)
        times: list[float] = []
        started = time.perf_counter()
        while len(times) < self.max_iters and (len(times) < self.min_iters or time.perf_counter() - started < self.budget_s):
            elapsed, result = self.time_once(fn)
            times.append(elapsed)
        return Timing.of(times, first_ms), result


def cuda_graph(fn: Callable[[], object], calls: int = 1) -> Callable[[], None]:
    """``calls`` calls of ``fn`` captured in one CUDA graph; returns its replay. ``fn`` runs once
    on a side stream first, so lazy work (allocation, kernel compilation) stays out of the graph.
    Time the replay and divide by ``calls``: the per-call time without launch overhead."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph.replay


class PeakRSS:
    """Peak resident set size of this process (bytes) while :meth:`track` runs, sampled every
    ``interval_s`` by a thread (Linux ``/proc/self/statm``; elsewhere ``peak`` stays 0)."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self.start = self.peak = 0
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 0
        self._stop = threading.Event()

    def rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:
            return 0

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.rss())

    @contextmanager
    def track(self) -> Iterator["PeakRSS"]:
        self.start = self.peak = self.rss()
        self._stop.clear()
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            self.peak = max(self.peak, self.rss())
