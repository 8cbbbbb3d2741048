"""Serving the one-step pipeline with Triton Inference Server.

Two halves:

- The python-backend models of a repository written by :mod:`.triton_repo`. Each python model's
  ``model.py`` is one import line naming a class here, so the serving code is ordinary, tested
  package code: :class:`Preprocess` (uint8 HWC image + seed -> pad, bicubic x4, noise),
  :class:`PriorSample` (``x_T = z_y + kappa sqrt(eta_T) eps``), :class:`Postprocess` (crop,
  [-1, 1] -> uint8 HWC) and :class:`OnnxRuntimeStage` (one exported stage in an ONNX Runtime
  session, for Triton builds with only the python backend).
- :func:`triton_server`: a real ``tritonserver`` process on loopback serving a repository: the
  2.51 binary that the ``nvidia-pytriton`` wheel bundles (python backend only), started directly
  with the python-backend stub for this interpreter. On a Triton container use
  ``tritonserver --model-repository DIR`` instead (see the repository's README).

Run ``python -m rsd_deploy.export.serve REPO`` to serve a repository until Ctrl-C.

Python models import torch lazily: only :class:`Preprocess` needs it (the pipeline's own
bicubic and :class:`~rsd_deploy.sampling.NoiseField`, so served results equal ``SRPipeline``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

LOGGER = logging.getLogger(__name__)


# --- python-backend models ----------------------------------------------------------------------


class RequestError(ValueError):
    """A request this model refuses: it gets INVALID_ARG (HTTP 400) and this one-line message."""


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


class _PythonModel:
    """Shared plumbing: config parameters, per-request input checks, and per-request errors that
    never fail the other requests of a dynamic batch."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils  # provided by the backend's stub

        self.pb = pb_utils
        self.config = json.loads(args["model_config"])
        self.name = args["model_name"]
        self.model_dir = Path(args["model_repository"]) / args["model_version"]
        self.params = {k: v["string_value"] for k, v in self.config.get("parameters", {}).items()}
        self.output_dtypes = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in self.config["output"]
        }
        self.min_height, self.min_width = int(self.params["min_lr_height"]), int(self.params["min_lr_width"])
        self.max_height, self.max_width = int(self.params["max_lr_height"]), int(self.params["max_lr_width"])
        self.setup()

    def setup(self) -> None:
        pass

    def inputs(self, request, *names: str) -> list[np.ndarray]:
        out = []
        for name in names:
            tensor = self.pb.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise RequestError(f"{self.name}: missing input {name!r}")
            out.append(tensor.as_numpy())
        return out

    def lr_size(self, name: str, array: np.ndarray, scale: int = 1) -> tuple[int, int, int]:
        """(batch, LR height, LR width) of a (B, C, scale*h, scale*w) stage tensor, refused unless
        h and w are multiples of 64 inside the exported range. Looks at the shape only."""
        batch, _, height, width = array.shape  # rank, channels and batch axis as configured: Triton checked them
        if height % (64 * scale) or width % (64 * scale):
            raise RequestError(f"{self.name}: {name} is {height}x{width}; expected multiples of {64 * scale}")
        height, width = height // scale, width // scale
        if not (self.min_height <= height <= self.max_height and self.min_width <= width <= self.max_width):
            raise RequestError(f"{self.name}: {name} is {height}x{width} LR pixels, outside the exported "
                               f"{self.min_height}x{self.min_width} .. {self.max_height}x{self.max_width}")
        return batch, height, width

    def respond(self, outputs: dict[str, np.ndarray]):
        tensors = [self.pb.Tensor(name, np.ascontiguousarray(value, self.output_dtypes[name])) for name, value in outputs.items()]
        return self.pb.InferenceResponse(output_tensors=tensors)

    def refuse(self, error: BaseException):
        """An error response for one request: INVALID_ARG for a refused request, INTERNAL (logged
        with its traceback on the server) for anything else; one line either way."""
        if isinstance(error, RequestError):
            return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(str(error), self.pb.TritonError.INVALID_ARG))
        self.pb.Logger.log_error(f"{self.name}: a request failed:\n{traceback.format_exc()}")
        return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(f"{self.name}: internal error ({_one_line(error)})"))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self.respond(self.run(request)))
            except Exception as error:  # this request alone fails: never the rest of the batch
                responses.append(self.refuse(error))
        return responses

    def run(self, request) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def finalize(self) -> None:
        pass


class Preprocess(_PythonModel):
    """``IMAGE`` (B, H, W, 3) uint8 + ``SEED`` (B, 1) -> the stage inputs of the pipeline.

    Image b gets the noise of ``SRPipeline(lr_b, seed=SEED[b])``: sample 0 of a
    :class:`NoiseField` seeded with its own seed, so results do not depend on how Triton
    batches requests. Shapes and seeds are checked before any pixel is touched: an image larger
    than the exported range, an empty one or a negative seed is refused with the limit named.
    """

    def setup(self) -> None:
        self.scale = int(self.params["scale"])
        self.latent_channels = int(self.params["latent_channels"])
        self.noise_channels = int(self.params["noise_channels"])
        import rsd_deploy.pipeline  # noqa: F401  (torch loads with the model, not on the first request)

    def run(self, request) -> dict[str, np.ndarray]:
        import torch
        import torch.nn.functional as F

        from rsd_deploy.chain import pad_to_multiple, padded_size
        from rsd_deploy.sampling import NOISE_MAP_STREAM, PRIOR_STREAM, NoiseField

        image, seed = self.inputs(request, "IMAGE", "SEED")  # types, ranks and batch axes as configured: Triton checked them
        batch, height, width, _ = image.shape
        if batch < 1 or height < 1 or width < 1:
            raise RequestError(f"{self.name}: empty image {height}x{width}")
        padded_h, padded_w = max(padded_size(height), self.min_height), max(padded_size(width), self.min_width)
        if padded_h > self.max_height or padded_w > self.max_width:
            raise RequestError(
                f"{self.name}: image {height}x{width} (padded to {padded_h}x{padded_w}) exceeds the "
                f"{self.max_height}x{self.max_width} LR pixels this repository was exported for; tile it "
                "on the client or export a larger shape range"
            )
        seeds = [int(s) for s in seed[:, 0]]
        if min(seeds) < 0:
            raise RequestError(f"{self.name}: SEED must be 0 .. 2^63-1, got {min(seeds)}")

        lq = pad_to_multiple(torch.from_numpy(image).permute(0, 3, 1, 2).float() / 127.5 - 1)
        if lq.shape[-2:] != (padded_h, padded_w):  # below the exported minimum: replicate up to it
            lq = F.pad(lq, (0, padded_w - lq.shape[-1], 0, padded_h - lq.shape[-2]), mode="replicate")

        def noise(stream: int, channels: int) -> np.ndarray:
            return torch.stack([NoiseField(s).crop(0, stream, channels, 0, 0, padded_h, padded_w) for s in seeds]).numpy()

        outputs = {
            "lq_up": F.interpolate(lq, scale_factor=self.scale, mode="bicubic").numpy(),
            "lq": lq.numpy(),
            "eps": noise(PRIOR_STREAM, self.latent_channels),
            "lr_size": np.tile(np.array([[height, width]], np.int32), (batch, 1)),
        }
        if self.noise_channels:
            outputs["noise_map"] = noise(NOISE_MAP_STREAM, self.noise_channels)
        return outputs


class PriorSample(_PythonModel):
    """``x_T = z_y + kappa sqrt(eta_T) eps``: the start of the one step, between encoder and
    generator (:meth:`ResShiftSchedule.prior_sample`)."""

    def setup(self) -> None:
        self.prior_scale = np.float32(self.params["prior_scale"])

    def run(self, request) -> dict[str, np.ndarray]:
        z_y, eps = self.inputs(request, "z_y", "eps")
        self.lr_size("z_y", z_y)
        if z_y.shape != eps.shape:
            raise RequestError(f"{self.name}: z_y {list(z_y.shape)} and eps {list(eps.shape)} differ")
        return {"x_t": z_y + self.prior_scale * eps}


class Postprocess(_PythonModel):
    """``hr`` (B, 3, 4H', 4W') in [-1, 1] + ``lr_size`` -> ``HR_IMAGE`` (B, 4h, 4w, 3) uint8,
    cropped to the request's size (as ``SRPipeline.forward``, then rounded to 8 bits)."""

    def setup(self) -> None:
        self.scale = int(self.params["scale"])

    def run(self, request) -> dict[str, np.ndarray]:
        hr, lr_size = self.inputs(request, "hr", "lr_size")
        batch, padded_h, padded_w = self.lr_size("hr", hr, self.scale)
        if (lr_size != lr_size[:1]).any():
            raise RequestError(f"{self.name}: lr_size must be one size per request, got {lr_size.tolist()}")
        height, width = (int(v) for v in lr_size[0])
        if not (0 < height <= padded_h and 0 < width <= padded_w):
            raise RequestError(f"{self.name}: lr_size {height}x{width} does not fit the {padded_h}x{padded_w} LR image")
        image = np.clip((hr[:, :, : height * self.scale, : width * self.scale] + 1) / 2, 0, 1)
        return {"HR_IMAGE": np.rint(image.transpose(0, 2, 3, 1) * 255).astype(np.uint8)}


class OnnxRuntimeStage(_PythonModel):
    """One exported stage (``model.onnx`` beside ``model.py``) in an ONNX Runtime session.

    Requests whose inputs have the same shapes run as one batch, so the dynamic batcher in
    front of this model pays off as it does for the ``onnxruntime_onnx`` backend. Each request's
    inputs are checked on their own first; if a batch still fails, its requests are run one by
    one, so only the one that cannot run gets an error."""

    def setup(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(self.params.get("intra_op_threads", "0"))
        providers = self.params.get("providers", "CPUExecutionProvider").split(",")
        self.session = ort.InferenceSession(str(self.model_dir / "model.onnx"), options, providers=providers)
        self.input_names = [i["name"] for i in self.config["input"]]
        self.output_names = [o["name"] for o in self.config["output"]]
        self.input_scales = json.loads(self.params["input_scales"])

    def feed(self, request) -> dict[str, np.ndarray]:
        feed = dict(zip(self.input_names, self.inputs(request, *self.input_names)))
        sizes = {name: self.lr_size(name, value, self.input_scales[name]) for name, value in feed.items()}
        if len(set(sizes.values())) > 1:
            raise RequestError(f"{self.name}: inputs disagree on (batch, LR height, LR width): {sizes}")
        return feed

    def execute(self, requests):
        responses: list = [None] * len(requests)
        feeds, groups = {}, {}
        for index, request in enumerate(requests):
            try:
                feeds[index] = self.feed(request)
            except Exception as error:
                responses[index] = self.refuse(error)
                continue
            groups.setdefault(tuple(v.shape for v in feeds[index].values()), []).append(index)
        for members in groups.values():
            self._run(members, feeds, responses)
        return responses

    def _run(self, members: list[int], feeds: dict, responses: list) -> None:
        try:
            batched = {name: np.concatenate([feeds[i][name] for i in members]) for name in self.input_names}
            outputs = self.session.run(self.output_names, batched)
        except Exception as error:
            if len(members) == 1:
                responses[members[0]] = self.refuse(error)
            else:  # find the request that fails: the others are answered
                for index in members:
                    self._run([index], feeds, responses)
            return
        start = 0
        for i in members:
            size = next(iter(feeds[i].values())).shape[0]
            responses[i] = self.respond({n: o[start : start + size] for n, o in zip(self.output_names, outputs)})
            start += size


# --- a tritonserver process on loopback ---------------------------------------------------------


@dataclass(frozen=True)
class ServerEndpoints:
    http: str  # host:port, as tritonclient.http.InferenceServerClient takes it
    grpc: str  # host:port, as tritonclient.grpc.InferenceServerClient takes it


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def interpreter_library_dir() -> str | None:
    """The directory of this interpreter's ``libpython``, when it is a shared library.

    The bundled python-backend stub links ``libpython3.X.so.1.0`` by soname and runs this
    interpreter's standard library. If the loader finds another build of that soname first
    (a distribution's 3.11.2 beside a pyenv 3.11.7, say), C modules and the stdlib disagree:
    multiprocessing dies with ``'_thread.RLock' object has no attribute '_recursion_count'``.
    Putting this directory first on ``LD_LIBRARY_PATH`` makes the stub load the matching one.
    """
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    return libdir if libdir and soname and (Path(libdir) / soname).exists() else None


def bundled_tritonserver() -> tuple[Path, Path, Path]:
    """(tritonserver binary, python backend folder, folder of its shared libraries) from the
    ``nvidia-pytriton`` wheel."""
    try:
        import pytriton
    except ImportError as error:
        raise RuntimeError(f"serving here needs the tritonserver bundled in nvidia-pytriton (pip install nvidia-pytriton): {error}") from None
    root = Path(pytriton.__file__).parent
    dist = root / "tritonserver"
    binary = dist / "bin" / "tritonserver"
    libs = root.parent / "nvidia_pytriton.libs"
    if not binary.is_file() or not (dist / "backends" / "python").is_dir():
        raise RuntimeError(f"{dist}: no tritonserver binary / python backend in this nvidia-pytriton install")
    return binary, dist / "backends" / "python", libs


def _python_backend_for_this_interpreter(python_backend: Path, target: Path) -> Path:
    """A backend directory whose python backend carries the stub built for this Python version
    (the wheel ships one stub per version beside the backend)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = python_backend.parents[1] / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise RuntimeError(f"nvidia-pytriton has no python-backend stub for Python {version} ({stub})")
    backend = target / "backends" / "python"
    backend.mkdir(parents=True)
    for item in python_backend.iterdir():
        if item.is_file():
            shutil.copy2(item, backend / item.name)
    shutil.copy2(stub, backend / stub.name)
    return target / "backends"


def _server_ready(http: str) -> bool:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http, connection_timeout=5, network_timeout=5)
    try:
        return client.is_server_ready()
    except Exception:  # not listening yet
        return False
    finally:
        client.close()


@contextlib.contextmanager
def triton_server(
    repository: str | Path,
    host: str = "127.0.0.1",
    http_port: int | None = None,
    grpc_port: int | None = None,
    startup_timeout_s: float = 180,
    exit_timeout_s: int = 5,
    log_verbose: int = 0,
) -> Iterator[ServerEndpoints]:
    """Serve ``repository`` with the ``tritonserver`` bundled in ``nvidia-pytriton``.

    Yields once the server reports ready (every model loaded); raises ``RuntimeError`` with the
    server's log if it exits or is not ready in time. The server is stopped (SIGINT, then
    SIGKILL after ``exit_timeout_s`` more seconds) when the block exits.
    """
    repository = Path(repository).resolve()
    if not any(repository.glob("*/config.pbtxt")):
        raise RuntimeError(f"{repository}: not a Triton model repository (no */config.pbtxt)")
    binary, python_backend, libs = bundled_tritonserver()
    http_port, grpc_port = http_port or free_port(host), grpc_port or free_port(host)
    endpoints = ServerEndpoints(f"{host}:{http_port}", f"{host}:{grpc_port}")
    with tempfile.TemporaryDirectory(prefix="rsd-triton-") as work:
        work = Path(work)
        backends = _python_backend_for_this_interpreter(python_backend, work)
        library_path = [p for p in (interpreter_library_dir(), str(libs), os.environ.get("LD_LIBRARY_PATH")) if p]
        env = {
            **os.environ,
            "LD_LIBRARY_PATH": os.pathsep.join(library_path),
            # the stub finds this environment's packages (numpy, onnxruntime, rsd_deploy) through it
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        }
        command = [
            str(binary),
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            f"--backend-config=python,shm-region-prefix-name=rsd{os.getpid()}x{http_port}_",
            "--backend-config=python,shm-default-byte-size=4194304",
            "--backend-config=python,shm-growth-byte-size=16777216",
            f"--http-address={host}", f"--http-port={http_port}",
            f"--grpc-address={host}", f"--grpc-port={grpc_port}",
            "--allow-metrics=false",
            f"--exit-timeout-secs={exit_timeout_s}",
            f"--log-verbose={log_verbose}",
        ]
        log_path = work / "tritonserver.log"
        start = time.perf_counter()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while not _server_ready(endpoints.http):
                if process.poll() is not None or time.perf_counter() - start > startup_timeout_s:
                    state = f"exited with code {process.returncode}" if process.returncode is not None else f"not ready after {startup_timeout_s:.0f} s"
                    raise RuntimeError(f"{repository}: tritonserver {state}; its log ends:\n{_tail(log_path)}")
                time.sleep(0.25)
            LOGGER.info("tritonserver ready in %.1f s: http %s, grpc %s", time.perf_counter() - start, endpoints.http, endpoints.grpc)
            yield endpoints
        finally:
            _stop(process, exit_timeout_s)


def _tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def _stop(process: subprocess.Popen, exit_timeout_s: int) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=exit_timeout_s + 10)
    except subprocess.TimeoutExpired:
        process.kill()  # only our own server process (its python stubs exit with it)
        process.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rsd_deploy.export.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", type=Path, help="a model repository written by rsd_deploy.export.triton_repo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    args = parser.parse_args(argv)
    if not args.repository.is_dir() or not any(args.repository.glob("*/config.pbtxt")):
        print(f"error: {args.repository}: not a Triton model repository (no */config.pbtxt)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with triton_server(args.repository, args.host, args.http_port, args.grpc_port) as endpoints:
            print(f"serving {args.repository}: http {endpoints.http}, grpc {endpoints.grpc} (Ctrl-C stops)", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
