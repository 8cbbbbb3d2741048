"""Tiles: how an image is cut, the order every tile of a run goes through the network, and how
the outputs are blended back into strips of the image.

Two tilings (:attr:`TileOptions.tiling`):

- ``seamless`` (the default): the LR image is reflect-padded to multiples of 64 (with
  ``static=True`` also to at least one tile) and cut into tiles of one size that overlap by
  ``overlap`` LR pixels; overlaps are blended with linear ramps, and the noise of every tile is a
  crop of one :class:`~rsd_deploy.sampling.NoiseField`, so the result does not depend on the
  tiling (a tile sees exactly the noise an untiled run would).
- ``official``: what the ResShift / SinSR / RSD inference scripts do (``ImageSpliterTh`` and
  ``sample_func``): an image larger than the chop (``size``; the scripts use 512 LR px with stride
  448, or 256 / 224) is cut into chops at the same start offsets, each chop is reflect-padded to
  a multiple of 64 on its own and cropped back, the chops are averaged uniformly where they
  overlap, and each chop draws fresh noise from one seeded generator in the scripts' order
  (the RSD noise map, the prior's eps, then the noise each sampler step draws, used or not).

:class:`TileScheduler` runs every tile of every image of a run through one :class:`TileModel`,
``batch`` tiles per call across image boundaries (the last call of a shape is filled up with
copies, so every call has the same batch shape), while a reader thread decodes images, pads
them and makes the noise, and a writer thread blends finished tiles (one :class:`StripBlender`
per image) and hands each image's strips to its sink (a PNG encoder in ``rsd-upscale``).
:func:`upscale_images` is the in-memory form (``SRPipeline.forward``, benchmarks).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable, Iterator, Sequence

import torch

from . import chain
from .chain import SIZE_MULTIPLE, padded_size
from .sampling import NOISE_MAP_STREAM, PRIOR_STREAM, STEP_STREAM, NoiseField

SEAMLESS, OFFICIAL = "seamless", "official"
TILINGS = (SEAMLESS, OFFICIAL)
STRIP_ROWS = 256  # HR rows handed to a sink at once: bounds the float copies on the way to the PNG

# noise(stream, channels=None) -> N(0, 1) noise for a batch of tiles, `channels` deep (default: the latent's)
NoiseSource = Callable[..., torch.Tensor]
# (lq tiles (B, 3, h, w) in [-1, 1], noise) -> chain tensors by name: at least "hr" (B, 3, s*h, s*w) in
# [-1, 1]; "x0" too when there is one (checked for NaN/Inf: the decoder's clamp would hide them)
TileFn = Callable[[torch.Tensor, NoiseSource], dict[str, torch.Tensor]]


class NonFiniteOutputError(ValueError):
    """The network produced NaN or Inf (broken weights, or an fp16 overflow); one line."""


# --- geometry -----------------------------------------------------------------------------------


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering [0, length), consecutive tiles sharing >= overlap. These are
    also the official scripts' chop starts (``range(0, length, stride)``, the ones past the end
    moved back to ``length - tile``, duplicates dropped) for ``stride = tile - overlap``."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def blend_ramp(length: int, ramp: int, fade_in: bool, fade_out: bool) -> torch.Tensor:
    """1-D tile weight: linear ramps over the overlaps with neighbours, 1 elsewhere."""
    position = torch.arange(length, dtype=torch.float32) + 0.5
    weight = torch.ones(length)
    if fade_in:
        weight = torch.minimum(weight, position / ramp)
    if fade_out:
        weight = torch.minimum(weight, (length - position) / ramp)
    return weight


@dataclass(frozen=True)
class TileOptions:
    """How images are cut. Sizes in LR pixels, multiples of 64; ``size`` is one side or
    (height, width)."""

    size: int | tuple[int, int] = 256  # tile (seamless) or chop (official) size
    overlap: int = 32  # LR pixels shared by neighbouring tiles (official: chop size - stride)
    batch: int = 1  # tiles per network call
    tiling: str = SEAMLESS
    static: bool = False  # seamless only: every tile exactly `size` (smaller images padded up to it)

    def __post_init__(self):
        for side in self.shape:
            if isinstance(side, bool) or not isinstance(side, int) or side <= 0 or side % SIZE_MULTIPLE:
                raise ValueError(f"tile size must be a positive multiple of {SIZE_MULTIPLE}, got {self.size}")
        if not 0 <= self.overlap < min(self.shape):
            raise ValueError(f"tile overlap must be in [0, tile size), got {self.overlap}")
        if self.batch < 1:
            raise ValueError(f"tile batch must be at least 1, got {self.batch}")
        if self.tiling not in TILINGS:
            raise ValueError(f"tiling must be one of {', '.join(TILINGS)}, got {self.tiling!r}")
        if self.static and self.tiling == OFFICIAL:
            raise ValueError("official tiling runs each chop at its own padded size; it cannot be static")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one ``height x width`` LR image lie. Tile boxes are (top, left) in the
    ``canvas`` (LR pixels): the padded image (seamless) or the image itself (official, whose
    chops are ``chop`` big and each run padded to ``shape``)."""

    height: int
    width: int
    canvas: tuple[int, int]
    chop: tuple[int, int]  # LR region each tile covers
    shape: tuple[int, int]  # LR size each tile runs at
    boxes: tuple[tuple[int, int], ...]  # (top, left), top to bottom
    ramp: int  # HR pixels of the blend ramps; 0: uniform averaging
    scale: int

    def weight(self, top: int, left: int) -> torch.Tensor:
        """The HR blend weight (rows, cols) of the tile at (top, left)."""
        rows, cols = (self.scale * c for c in self.chop)
        if not self.ramp:
            return torch.ones(rows, cols)
        height, width = self.canvas
        return (blend_ramp(rows, self.ramp, top > 0, top + self.chop[0] < height)[:, None]
                * blend_ramp(cols, self.ramp, left > 0, left + self.chop[1] < width)[None, :])

    def finished_rows(self, index: int) -> int:
        """HR canvas rows no tile after tile ``index`` touches."""
        following = index + 1
        return self.scale * (self.boxes[following][0] if following < len(self.boxes) else self.canvas[0])


def plan_tiles(height: int, width: int, options: TileOptions, scale: int) -> TilePlan:
    """The tiles of an LR image under ``options`` (see the module docstring)."""
    tile_h, tile_w = options.shape
    if options.tiling == OFFICIAL:
        canvas = (height, width)
        chop = (min(tile_h, height), min(tile_w, width))
        shape = (padded_size(chop[0]), padded_size(chop[1]))
        ramp = 0
    else:
        canvas = (padded_size(height), padded_size(width))
        if options.static:
            canvas = (max(canvas[0], tile_h), max(canvas[1], tile_w))
        chop = shape = (min(tile_h, canvas[0]), min(tile_w, canvas[1]))
        ramp = max(options.overlap * scale, 1)
    boxes = tuple((top, left) for top in tile_starts(canvas[0], chop[0], options.overlap)
                  for left in tile_starts(canvas[1], chop[1], options.overlap))
    return TilePlan(height, width, canvas, chop, shape, boxes, ramp, scale)


class StripBlender:
    """Weighted sum of the tiles of one image, kept only for rows that a later tile may still
    touch: tiles arrive top to bottom (by their top row), and :meth:`take` hands out the finished
    rows. Each pixel sums the same products in the same order as a whole-canvas blend would, so
    the result is bit for bit the same."""

    def __init__(self, channels: int, width: int):
        self.top = 0  # first row not yet handed out
        self.total = torch.zeros(channels, 0, width)
        self.weights = torch.zeros(1, 0, width)

    def add(self, tile: torch.Tensor, weight: torch.Tensor, top: int, left: int) -> None:
        if top < self.top:
            raise ValueError(f"tile at row {top} arrived after row {self.top} was handed out")
        bottom = top + tile.shape[-2]
        grow = bottom - self.top - self.total.shape[1]
        if grow > 0:
            self.total, self.weights = self._grown(self.total, grow), self._grown(self.weights, grow)
        rows, cols = slice(top - self.top, bottom - self.top), slice(left, left + tile.shape[-1])
        self.total[:, rows, cols] += tile * weight
        self.weights[:, rows, cols] += weight

    def take(self, until: int) -> torch.Tensor:
        """Blended rows ``self.top:until``; no tile added later may start above ``until``."""
        count = until - self.top
        done = self.total[:, :count] / self.weights[:, :count]
        # copies of the rows still open, so that the finished rows' memory goes now
        self.total, self.weights = self.total[:, count:].clone(), self.weights[:, count:].clone()
        self.top = until
        return done

    @staticmethod
    def _grown(rows: torch.Tensor, grow: int) -> torch.Tensor:
        grown = rows.new_zeros(rows.shape[0], rows.shape[1] + grow, rows.shape[2])
        grown[:, : rows.shape[1]] = rows
        return grown


# --- the model and its noise --------------------------------------------------------------------


@dataclass(frozen=True)
class TileModel:
    """What the scheduler runs and needs to know: the tile function, the scale, the noise it
    takes, and the device noise is drawn on for the official tiling (the scripts draw it there)."""

    run: TileFn
    scale: int
    latent_channels: int
    noise_channels: int = 0  # the RSD student's noise map; 0: none
    steps: int = 1  # network calls per tile: 1, or the teacher's T
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_stages(cls, stage: chain.StageFn, scale: int, prior_scale: float, latent_channels: int, noise_channels: int = 0,
                    device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> "TileModel":
        """The one-step chain (:func:`rsd_deploy.chain.run`) over any stage function: PyTorch
        modules, ONNX Runtime sessions, TensorRT engines, a Triton server. Inputs go to
        ``device`` (and ``dtype`` when given) first."""
        device = torch.device(device)

        def run(lq: torch.Tensor, noise: NoiseSource) -> dict[str, torch.Tensor]:
            def put(x: torch.Tensor) -> torch.Tensor:
                return x.to(device=device, dtype=dtype or x.dtype)

            noise_map = put(noise(NOISE_MAP_STREAM, noise_channels)) if noise_channels else None
            return chain.run(stage, put(lq), put(noise(PRIOR_STREAM, latent_channels)), noise_map, prior_scale, scale)

        return cls(run, scale, latent_channels, noise_channels, 1, device)

    def noise_draws(self) -> list[tuple[int | None, int]]:
        """(stream, channels) of every N(0, 1) tensor one tile draws, in the official samplers'
        order: the noise map, eps, then the posterior noise of each step t = T-1 .. 0 (drawn at
        every step, also where it is not used: stream None)."""
        draws = [(NOISE_MAP_STREAM, self.noise_channels)] if self.noise_channels else []
        draws.append((PRIOR_STREAM, self.latent_channels))
        total = self.steps if self.steps > 1 else 1
        for t in range(total - 1, -1, -1):
            used = self.steps > 1 and t > 0  # one step: x0 is the output, its posterior noise unused
            draws.append((STEP_STREAM + t if used else None, self.latent_channels))
        return draws


class SeamlessNoise:
    """Tile noise as crops of one :class:`NoiseField`: independent of the tiling."""

    def __init__(self, seed: int, streams: list[tuple[int, int]]):
        self.field = NoiseField(seed)
        self.streams = streams

    def tile(self, sample: int, top: int, left: int, height: int, width: int) -> dict[int, torch.Tensor]:
        return {stream: self.field.crop(sample, stream, channels, top, left, height, width) for stream, channels in self.streams}


class OfficialNoise:
    """Fresh noise per chop from one generator seeded once per run, drawn in the official
    scripts' order (they seed torch once and draw ``randn`` for each chop in turn, across the
    images of a run). Drawn in float32 on ``device``: the scripts run on CUDA, and CUDA's
    generator gives other numbers than the CPU's."""

    def __init__(self, seed: int, draws: list[tuple[int | None, int]], device: torch.device):
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.draws = draws
        self.device = device

    def tile(self, sample: int, top: int, left: int, height: int, width: int) -> dict[int, torch.Tensor]:
        noise = {}
        for stream, channels in self.draws:
            drawn = torch.randn(1, channels, height, width, generator=self.generator, device=self.device)[0]
            if stream is not None:
                noise[stream] = drawn
        return noise


# --- the scheduler ------------------------------------------------------------------------------


@dataclass
class ImageJob:
    """One image of a run: how to read it (on the reader thread) and where its strips go (on the
    writer thread)."""

    read: Callable[[], torch.Tensor]  # -> (3, h, w) in [0, 1]
    open: Callable[[], ContextManager[Callable[[torch.Tensor], None]]]  # yields write(strip (3, rows, s*w) in [0, 1])
    key: object = None  # the caller's handle, given back in the result
    sample: int = 0  # the NoiseField sample of its noise (seamless tiling)


@dataclass
class ImageResult:
    job: ImageJob
    error: BaseException | None = None  # None: every strip written and the sink closed
    size: tuple[int, int] | None = None  # LR (height, width) when it was read


@dataclass
class ScheduleStats:
    """What a run did and where its time went. ``compute_s`` is time inside the tile function
    (summed over calls in flight); ``read_s`` and ``write_s`` are the reader's and the writer's
    busy time. Host work overlaps compute when ``wall_s`` < the sum."""

    images: int = 0
    tiles: int = 0
    filler_tiles: int = 0  # copies that filled a last, short batch up to the batch shape
    calls: int = 0
    compute_s: float = 0.0
    read_s: float = 0.0
    write_s: float = 0.0
    wall_s: float = 0.0

    def tiles_per_s(self) -> float:
        return self.tiles / self.wall_s if self.wall_s else 0.0


@dataclass(eq=False)
class _Image:
    job: ImageJob
    plan: TilePlan | None = None
    error: BaseException | None = None
    done: int = 0  # tiles blended
    sink: contextlib.ExitStack | None = None
    write: Callable[[torch.Tensor], None] | None = None
    blender: StripBlender | None = None
    closed: bool = False


@dataclass(eq=False)
class _Tile:
    image: _Image
    index: int
    lq: torch.Tensor  # (3, h, w) in [-1, 1], at the run shape
    noise: dict[int, torch.Tensor]
    hr: torch.Tensor | None = None
    error: BaseException | None = None


_END = object()


class _Stopped(Exception):
    pass


class TileScheduler:
    """Runs the tiles of a stream of images through ``model``, ``options.batch`` at a time
    across image boundaries, with ``in_flight`` calls at once (more than one for a server);
    reading and writing happen on their own threads. :meth:`run` yields one
    :class:`ImageResult` per job, in job order; :attr:`stats` describes the last run."""

    def __init__(self, model: TileModel, options: TileOptions, seed: int = 0, in_flight: int = 1,
                 progress: Callable[[ImageJob, int, int], None] | None = None):
        if in_flight < 1:
            raise ValueError(f"in_flight must be at least 1, got {in_flight}")
        self.model = model
        self.options = options
        self.seed = seed
        self.in_flight = in_flight
        self.progress = progress  # (job, tiles done, tiles) after each blended tile, on the writer thread
        self.stats = ScheduleStats()
        self._lock = threading.Lock()

    # -- the run ---------------------------------------------------------------------------------

    def run(self, jobs: Iterable[ImageJob]) -> Iterator[ImageResult]:
        self.stats = ScheduleStats()
        started = time.perf_counter()
        stop = threading.Event()
        depth = self.options.batch * (self.in_flight + 1)  # tiles read ahead: bounds memory
        tiles: queue.Queue = queue.Queue(maxsize=depth)
        blends: queue.Queue = queue.Queue(maxsize=self.in_flight + 1)
        results: queue.Queue = queue.Queue()
        failures: list[BaseException] = []

        def guarded(work: Callable[[], None], downstream: queue.Queue) -> Callable[[], None]:
            def body() -> None:
                try:
                    work()
                except _Stopped:
                    pass
                except BaseException as error:  # a bug, or the jobs iterable failing: the run stops
                    failures.append(error)
                    stop.set()
                finally:
                    try:
                        _put(downstream, _END, stop)
                    except _Stopped:
                        pass

            return body

        noise = self._noise()
        threads = [
            threading.Thread(target=guarded(lambda: self._read(jobs, noise, tiles, stop), tiles), name="tiles-read", daemon=True),
            threading.Thread(target=guarded(lambda: self._compute(tiles, blends, stop), blends), name="tiles-compute", daemon=True),
            threading.Thread(target=guarded(lambda: self._write(blends, results, stop), results), name="tiles-write", daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            while True:
                result = results.get()
                if result is _END:
                    break
                yield result
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            self.stats.wall_s = time.perf_counter() - started
        if failures:
            raise failures[0]

    def _noise(self):
        if self.options.tiling == OFFICIAL:
            return OfficialNoise(self.seed, self.model.noise_draws(), self.model.device)
        return SeamlessNoise(self.seed, [(s, c) for s, c in self.model.noise_draws() if s is not None])

    # -- reader: decode, pad, cut, noise --------------------------------------------------------

    def _read(self, jobs: Iterable[ImageJob], noise, tiles: queue.Queue, stop: threading.Event) -> None:
        for job in jobs:
            began = time.perf_counter()
            image = _Image(job)
            try:
                lr = job.read()
                if lr.ndim != 3 or lr.shape[0] != 3:
                    raise ValueError(f"expected an RGB image (3, h, w), got {tuple(lr.shape)}")
                image.plan = plan_tiles(lr.shape[1], lr.shape[2], self.options, self.model.scale)
                canvas = lr[None].float()
                if canvas.shape[-2:] != image.plan.canvas:  # padding first: one full-size copy fewer at once
                    canvas = chain.pad_to(canvas, *image.plan.canvas)
                canvas = chain.to_model_range(canvas)[0]
                del lr
            except Exception as error:  # this image fails, the run goes on
                image.error = error
            self._add_time("read_s", began)
            _put(tiles, image, stop)
            if image.error is not None:
                continue
            plan = image.plan
            for index, (top, left) in enumerate(plan.boxes):
                began = time.perf_counter()
                lq = canvas[:, top : top + plan.chop[0], left : left + plan.chop[1]]
                if plan.chop != plan.shape:  # official: each chop padded on its own
                    lq = chain.pad_to(lq[None], *plan.shape)[0]
                tile = _Tile(image, index, lq.contiguous(), noise.tile(job.sample, top, left, *plan.shape))
                self._add_time("read_s", began)
                _put(tiles, tile, stop)

    # -- compute: batches of one shape, `in_flight` at once --------------------------------------

    def _compute(self, tiles: queue.Queue, blends: queue.Queue, stop: threading.Event) -> None:
        pending: list = []  # images and tiles since the last call, in order
        batch: list[_Tile] = []
        calls: deque = deque()  # (future, events)

        with ThreadPoolExecutor(max_workers=self.in_flight, thread_name_prefix="tiles-call") as pool:

            def send() -> None:
                nonlocal pending, batch
                future = pool.submit(self._call, batch) if batch else None
                calls.append((future, pending))
                pending, batch = [], []
                while len(calls) > self.in_flight:
                    hand_over()

            def hand_over() -> None:
                future, events = calls.popleft()
                if future is not None:
                    future.result()
                _put(blends, events, stop)

            while True:
                item = _get(tiles, stop)
                if item is _END:
                    break
                if isinstance(item, _Tile):
                    if item.image.error is not None:  # its image failed meanwhile: not worth computing
                        continue
                    if batch and item.lq.shape != batch[0].lq.shape:
                        send()
                    batch.append(item)
                pending.append(item)
                if len(batch) == self.options.batch:
                    send()
            if pending:
                send()
            while calls:
                hand_over()

    def _call(self, batch: list[_Tile]) -> None:
        """One network call; results (or the error) are stored on the tiles."""
        filler = self.options.batch - len(batch)
        full = batch + [batch[-1]] * filler  # one batch shape for every call: per-sample results can depend on it
        began = time.perf_counter()
        try:
            lq = torch.stack([t.lq for t in full])
            stacked = {stream: torch.stack([t.noise[stream] for t in full]) for stream in full[0].noise}

            def noise(stream: int, channels: int | None = None) -> torch.Tensor:
                x = stacked[stream]
                if channels is not None and x.shape[1] != channels:
                    raise ValueError(f"noise stream {stream} has {x.shape[1]} channels, {channels} asked for")
                return x

            with torch.no_grad():  # grad mode is per thread
                outputs = self.model.run(lq, noise)
            checked = [(outputs[name], what) for name, what in (("x0", "generated latent"), ("hr", "decoded image")) if name in outputs]
            finite = [torch.isfinite(x).flatten(1).all(1).cpu() for x, _ in checked]
            hr = outputs["hr"].float().cpu()
            for i, tile in enumerate(batch):
                bad = next((what for (x, what), ok in zip(checked, finite) if not ok[i]), None)
                if bad is None:
                    tile.hr = hr[i]
                else:
                    top, left = tile.image.plan.boxes[tile.index]
                    tile.error = NonFiniteOutputError(f"the {bad} has NaN/Inf values (tile at LR row {top}, column {left}): "
                                                      f"broken weights or an overflow in {checked[0][0].dtype}")
        except Exception as error:  # this call's images fail, the run goes on
            for tile in batch:
                tile.error = error
        finally:
            with self._lock:
                self.stats.compute_s += time.perf_counter() - began
                self.stats.calls += 1
                self.stats.tiles += len(batch)
                self.stats.filler_tiles += filler

    # -- writer: blend, strips to the sinks ------------------------------------------------------

    def _write(self, blends: queue.Queue, results: queue.Queue, stop: threading.Event) -> None:
        open_images: list[_Image] = []
        try:
            while True:
                events = _get(blends, stop)
                if events is _END:
                    break
                for event in events:
                    began = time.perf_counter()
                    if isinstance(event, _Image):
                        self._start(event, results, open_images)
                    elif event.image.error is None:
                        self._blend(event, results)
                    self._add_time("write_s", began)
        finally:
            for image in open_images:  # a stopped run: nothing half-written stays
                _abort(image, _Stopped("the run was stopped"))

    def _start(self, image: _Image, results: queue.Queue, open_images: list[_Image]) -> None:
        if image.error is not None:
            results.put(ImageResult(image.job, image.error))
            return
        try:
            image.sink = contextlib.ExitStack()
            image.write = image.sink.enter_context(image.job.open())
            open_images.append(image)
            image.blender = StripBlender(3, image.plan.canvas[1] * image.plan.scale)
        except Exception as error:
            self._fail(image, error, results)

    def _blend(self, tile: _Tile, results: queue.Queue) -> None:
        image, plan = tile.image, tile.image.plan
        if tile.error is not None:
            self._fail(image, tile.error, results)
            return
        try:
            top, left = plan.boxes[tile.index]
            s = plan.scale
            hr = tile.hr[:, : plan.chop[0] * s, : plan.chop[1] * s]  # official: the chop's own padding cut off
            image.blender.add(hr, plan.weight(top, left), top * s, left * s)
            finished = plan.finished_rows(tile.index)
            if finished > image.blender.top:
                first = image.blender.top
                rows = image.blender.take(finished)[:, : max(0, plan.height * s - first), : plan.width * s]  # canvas padding cut off
                for start in range(0, rows.shape[1], STRIP_ROWS):
                    image.write(chain.to_image_range(rows[:, start : start + STRIP_ROWS]))
            image.done += 1
            if self.progress is not None:
                self.progress(image.job, image.done, len(plan.boxes))
            if image.done == len(plan.boxes):
                image.closed = True
                image.sink.close()
                with self._lock:
                    self.stats.images += 1
                results.put(ImageResult(image.job, None, (plan.height, plan.width)))
        except Exception as error:
            self._fail(image, error, results)

    def _fail(self, image: _Image, error: BaseException, results: queue.Queue) -> None:
        _abort(image, error)
        size = (image.plan.height, image.plan.width) if image.plan else None
        results.put(ImageResult(image.job, error, size))

    def _add_time(self, name: str, began: float) -> None:
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + time.perf_counter() - began)


def _abort(image: _Image, error: BaseException) -> None:
    """Mark ``image`` failed and close its sink with the error (so it discards what it wrote)."""
    image.error = image.error or error
    if image.sink is not None and not image.closed:
        image.closed = True
        with contextlib.suppress(Exception):
            image.sink.__exit__(type(error), error, error.__traceback__)


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
    while True:
        if stop.is_set() and item is not _END:
            raise _Stopped()
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            if stop.is_set():
                raise _Stopped() from None


def _get(q: queue.Queue, stop: threading.Event):
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                raise _Stopped() from None


# --- in memory ----------------------------------------------------------------------------------


def upscale_images(model: TileModel, images: Sequence[torch.Tensor], options: TileOptions | None = None, seed: int = 0,
                   samples: Sequence[int] | None = None, in_flight: int = 1,
                   progress: Callable[[ImageJob, int, int], None] | None = None) -> tuple[list[torch.Tensor], ScheduleStats]:
    """LR images (3, h, w) in [0, 1] -> x ``scale`` images in [0, 1] (CPU, float32), through one
    :class:`TileScheduler` run (tiles of all images batched together), and the run's
    :class:`ScheduleStats`. Image i uses NoiseField sample ``samples[i]`` (default i)."""
    options = options or TileOptions()
    strips: list[list[torch.Tensor]] = [[] for _ in images]

    def collect(index: int):
        @contextlib.contextmanager
        def sink():
            yield strips[index].append

        return sink

    jobs = [ImageJob(read=lambda image=image: image, open=collect(i), key=i, sample=i if samples is None else samples[i])
            for i, image in enumerate(images)]
    scheduler = TileScheduler(model, options, seed, in_flight, progress)
    for result in scheduler.run(jobs):
        if result.error is not None:
            raise result.error
    return [torch.cat(parts, 1) for parts in strips], scheduler.stats
