"""Triton Inference Server: the stage models of a repository that ``rsd-export --triton-repo``
wrote, called over HTTP or gRPC, as a :class:`~.base.Runner`.

:meth:`TritonRunner.run` sends one stage's feeds to the model ``<prefix>_<stage>`` and returns
its outputs, so the host steps stay on the client and a served chain is the in-process one::

    runner = TritonRunner("grpc://gpu-box:8001")            # or "http://gpu-box:8000"
    hr = chain.upscale(runner.stage_fn(), lr, eps, noise_map, runner.prior_scale, runner.scale)

Everything the client needs besides the images is read from the server when the runner is
made, from the repository's own configs: :attr:`~TritonRunner.scale` and the noise channels
(:attr:`~TritonRunner.latent_channels`, :attr:`~TritonRunner.noise_channels`, for
:class:`~rsd_deploy.sampling.NoiseField`), :attr:`~TritonRunner.prior_scale`,
:attr:`~TritonRunner.shape_range` (the batch and padded LR sizes the server accepts) and
:attr:`~TritonRunner.precision`. No local model or graph is needed.

Several requests in flight, for the tiled upscaler (``rsd-upscale --server URL``):

- :meth:`~TritonRunner.submit` ``(stage, feeds) -> Future`` of the outputs, run on the runner's
  ``max_in_flight`` connections; it blocks while that many requests are outstanding, so a
  producer that submits tiles as fast as it can holds at most ``max_in_flight`` requests.
- :meth:`~TritonRunner.run` is thread-safe (one connection per thread), so whole chains can run
  side by side: ``pool.submit(chain.run, runner.stage_fn(), lq, eps, noise_map,
  runner.prior_scale, runner.scale)`` for each tile batch, with ``pool`` a
  ``ThreadPoolExecutor(runner.max_in_flight)``; each tile's noise comes from its own crop of the
  image's :class:`~rsd_deploy.sampling.NoiseField`, so the result does not depend on the order in
  which tiles come back.

Tiles must fit :attr:`~TritonRunner.shape_range` (check before sending; the server refuses
others with HTTP 400 / gRPC INVALID_ARGUMENT, which :meth:`run` raises as a
:class:`ServerRequestError` of one line). A URL that is not ``http://HOST:PORT`` or
``grpc://HOST:PORT`` is a ``ValueError`` (:func:`parse_server_url`, cheap: call it while
checking options); a server that does not answer, or lacks the models, is
:class:`~.base.RunnerUnavailable`.
"""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from rsd_deploy import chain
from rsd_deploy.errors import one_line

from ..stages import ShapeRange
from ..triton_models import Preprocess, PriorSample
from .base import Runner, RunnerUnavailable

PROTOCOLS = ("http", "grpc")
_URL = re.compile(r"^(http|grpc)://([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})/?$")


class ServerRequestError(RuntimeError):
    """A request the server refused or failed; the message is one line naming the model."""


def parse_server_url(url: str) -> tuple[str, str]:
    """``http://HOST:PORT`` / ``grpc://HOST:PORT`` -> (protocol, ``HOST:PORT`` as tritonclient takes it)."""
    match = _URL.match(url.strip())
    if not match or not 0 < int(match.group(3)) < 65536:
        raise ValueError(f"server URL {url!r}: expected http://HOST:PORT or grpc://HOST:PORT")
    return match.group(1), f"{match.group(2)}:{match.group(3)}"


def _client_module(protocol: str):
    try:
        if protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
    except ImportError as error:
        raise RunnerUnavailable(f"a Triton client needs tritonclient (pip install 'tritonclient[{protocol}]'): {error}") from None
    return module


class TritonRunner(Runner):
    """The chain stages of a Triton model repository written by :mod:`rsd_deploy.export.triton_repo`,
    served at ``url``. ``prefix``: the repository's model prefix; ``timeout_s``: per request."""

    def __init__(self, url: str, prefix: str = "rsd", max_in_flight: int = 4, timeout_s: float = 120.0):
        self.protocol, self.address = parse_server_url(url)
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.url, self.prefix, self.max_in_flight, self.timeout_s = url, prefix, max_in_flight, timeout_s
        self._module = _client_module(self.protocol)
        self._local = threading.local()
        self._clients, self._lock = [], threading.Lock()
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="triton-runner")
        try:
            self._read_repository()
        except BaseException:
            self.close()
            raise

    # --- what the server serves -----------------------------------------------------------------

    def _config(self, part: str) -> dict:
        name = f"{self.prefix}_{part}"
        client = self._client()
        try:
            ready = client.is_model_ready(name)
        except Exception as error:  # refused connection, DNS, timeout: tritonclient raises its own and socket errors
            raise RunnerUnavailable(f"{self.url}: no Triton server answers ({type(error).__name__}: {one_line(error)})") from None
        if not ready:
            raise RunnerUnavailable(f"{self.url}: model {name} is not ready there (serve the repository rsd-export --triton-repo "
                                    f"wrote; prefix {self.prefix!r})")
        config = client.get_model_config(name, **({"as_json": True} if self.protocol == "grpc" else {}))
        return config.get("config", config)  # gRPC wraps it in a response

    def _read_repository(self) -> None:
        from tritonclient.utils import triton_to_np_dtype

        self._models = {}
        for stage in chain.STAGES:
            config = self._config(stage.name)
            inputs = [(i["name"], i["data_type"].removeprefix("TYPE_")) for i in config["input"]]
            self._models[stage.name] = (config["name"], [(n, t, triton_to_np_dtype(t)) for n, t in inputs],
                                        [o["name"] for o in config["output"]])
            params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
            if "shape_range" not in params or "precision" not in params:
                raise RunnerUnavailable(f"{self.url}: model {config['name']} does not say its precision and shape range "
                                        "(a repository from an older rsd-export?); write the repository again")
            recorded = json.loads(params["shape_range"])
            self.shape_range = ShapeRange(tuple(recorded["batch"]), tuple(recorded["lr_height"]), tuple(recorded["lr_width"]))
            self.precision = params["precision"]
        host = {}
        for model in (Preprocess, PriorSample):  # the repository's host steps carry the chain's constants
            host.update({k: v["string_value"] for k, v in self._config(model.part).get("parameters", {}).items()})
        self.scale, self.prior_scale = int(host["scale"]), float(host["prior_scale"])
        self.latent_channels, self.noise_channels = int(host["latent_channels"]), int(host["noise_channels"])
        self.name = "triton"
        self.device = torch.device("cpu")  # outputs come back to the host
        self.stages = tuple(self._models)
        self.notes = (f"Triton at {self.url}: {', '.join(m[0] for m in self._models.values())} ({self.precision}), "
                      f"up to {self.max_in_flight} requests in flight")

    # --- requests -------------------------------------------------------------------------------

    def _client(self):
        """This thread's connection (tritonclient's HTTP client must stay on one thread)."""
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "http":
                client = self._module.InferenceServerClient(self.address, connection_timeout=self.timeout_s, network_timeout=self.timeout_s)
            else:
                client = self._module.InferenceServerClient(self.address)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def run(self, stage: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from tritonclient.utils import InferenceServerException

        if stage not in self._models:
            raise KeyError(f"{stage!r}: {self.url} serves the stages {', '.join(self._models)}")
        model, inputs, outputs = self._models[stage]
        request = []
        for name, datatype, dtype in inputs:
            if name not in feeds:
                raise KeyError(f"{model}: no feed for its input {name!r}")
            array = np.ascontiguousarray(feeds[name].detach().cpu().numpy(), dtype)
            request.append(self._module.InferInput(name, list(array.shape), datatype))
            request[-1].set_data_from_numpy(array)
        wanted = [self._module.InferRequestedOutput(name) for name in outputs]
        timeout = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        try:
            result = self._client().infer(model, request, outputs=wanted, **timeout)
        except InferenceServerException as error:
            status = error.status() or "error"
            raise ServerRequestError(f"{model} at {self.url}: {status}: {one_line(error.message() or error)}") from None
        return {name: torch.from_numpy(np.array(result.as_numpy(name))) for name in outputs}

    def submit(self, stage: str, feeds: dict[str, torch.Tensor]) -> Future:
        """:meth:`run` on one of the runner's connections; a ``Future`` of its outputs. Blocks
        while ``max_in_flight`` requests are outstanding."""
        self._slots.acquire()
        try:
            future = self._pool.submit(self.run, stage, feeds)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def close(self) -> None:
        """Wait for the requests in flight, then close every connection."""
        self._pool.shutdown(wait=True)
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def __enter__(self) -> "TritonRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
