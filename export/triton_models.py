"""The python-backend models of a Triton repository written by :mod:`.triton_repo`.

Each python model's ``model.py`` is one import line naming a class here, so the serving code is
ordinary, tested package code. The host steps are :mod:`rsd_deploy.chain`'s own functions, so a
served image is the in-process pipeline's:

- :class:`Preprocess`: ``IMAGE`` uint8 (B, h, w, 3) + ``SEED`` -> to [-1, 1], pad, bicubic,
  seeded noise (the pipeline's :class:`~rsd_deploy.sampling.NoiseField`).
- :class:`PriorSample`: ``x_T = z_y + kappa sqrt(eta_T) eps`` (:func:`rsd_deploy.chain.prior_sample`).
- :class:`Postprocess`: crop, to [0, 1], to uint8 (:func:`rsd_deploy.imageio.to_pixels`, as
  ``rsd-upscale`` writes PNGs).
- :class:`OnnxRuntimeStage`: one exported stage in an ONNX Runtime session
  (:func:`~rsd_deploy.export.runners.onnxruntime_session`), for servers with only the python
  backend, such as the ``tritonserver`` bundled with ``nvidia-pytriton``.

Every model checks each request on its own from the tensor shapes, before converting anything: a
bad request gets INVALID_ARG (HTTP 400) with one line, any other failure INTERNAL with one line
(the traceback goes to the server log), and never fails the other requests of a dynamic batch.
Each class declares the tensors it reads and writes (``reads`` / ``writes``); the configs
(:mod:`.triton_config`) and the ensemble's step order are made from those declarations and
:mod:`rsd_deploy.chain`'s stages.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import numpy as np
import torch

from rsd_deploy import chain
from rsd_deploy.errors import one_line

# Chain tensors the python models make or take, by the chain's stage declarations.
(LQ_UP,) = chain.ENCODER.inputs
(Z_Y,) = chain.ENCODER.outputs
X_T, LQ, NOISE_MAP = chain.GENERATOR.inputs
(HR,) = chain.DECODER.outputs
# The repository's own tensors: the ensemble's interface and what flows between its host steps.
IMAGE, SEED, HR_IMAGE = "IMAGE", "SEED", "HR_IMAGE"
EPS = "eps"  # the prior noise, made by Preprocess, used by PriorSample
LR_SIZE = "lr_size"  # (height, width) of the request's images before padding


class RequestError(ValueError):
    """A request this model refuses: it gets INVALID_ARG (HTTP 400) and this one-line message."""


class _PythonModel:
    """Shared plumbing: config parameters, per-request input checks, and per-request errors that
    never fail the other requests of a dynamic batch."""

    part: str  # the model is <prefix>_<part>
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()  # what it can write (NOISE_MAP only for models that take one)

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils  # provided by the backend's stub

        self.pb = pb_utils
        self.config = json.loads(args["model_config"])
        self.name = args["model_name"]
        self.model_dir = Path(args["model_repository"]) / args["model_version"]
        self.params = {k: v["string_value"] for k, v in self.config.get("parameters", {}).items()}
        self.output_dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in self.config["output"]}
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
        multiple = chain.SIZE_MULTIPLE * scale
        if height % multiple or width % multiple:
            raise RequestError(f"{self.name}: {name} is {height}x{width}; expected multiples of {multiple}")
        height, width = height // scale, width // scale
        if not (self.min_height <= height <= self.max_height and self.min_width <= width <= self.max_width):
            raise RequestError(f"{self.name}: {name} is {height}x{width} LR pixels, outside the exported "
                               f"{self.min_height}x{self.min_width} .. {self.max_height}x{self.max_width}")
        return batch, height, width

    def respond(self, outputs: dict[str, np.ndarray | torch.Tensor]):
        tensors = [self.pb.Tensor(name, np.ascontiguousarray(value, self.output_dtypes[name])) for name, value in outputs.items()]
        return self.pb.InferenceResponse(output_tensors=tensors)

    def refuse(self, error: BaseException):
        """An error response for one request: INVALID_ARG for a refused request, INTERNAL (logged
        with its traceback on the server) for anything else; one line either way."""
        if isinstance(error, RequestError):
            return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(str(error), self.pb.TritonError.INVALID_ARG))
        self.pb.Logger.log_error(f"{self.name}: a request failed:\n{traceback.format_exc()}")
        message = f"{self.name}: internal error ({type(error).__name__}: {one_line(error)})"
        return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(message))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self.respond(self.run(request)))
            except Exception as error:  # this request alone fails: never the rest of the batch
                responses.append(self.refuse(error))
        return responses

    def run(self, request) -> dict[str, np.ndarray | torch.Tensor]:
        raise NotImplementedError

    def finalize(self) -> None:
        pass


class Preprocess(_PythonModel):
    """``IMAGE`` (B, h, w, 3) uint8 + ``SEED`` (B, 1) -> the inputs of the chain.

    Image b gets the noise of ``SRPipeline(lr_b, seed=SEED[b])``: sample 0 of a
    :class:`NoiseField` seeded with its own seed, so results do not depend on how Triton
    batches requests. Shapes and seeds are checked before any pixel is touched: an image larger
    than the exported range, an empty one or a negative seed is refused with the limit named.
    """

    part = "preprocess"
    reads = (IMAGE, SEED)
    writes = (LQ_UP, LQ, EPS, LR_SIZE, NOISE_MAP)

    def setup(self) -> None:
        self.scale = int(self.params["scale"])
        self.latent_channels = int(self.params["latent_channels"])
        self.noise_channels = int(self.params["noise_channels"])

    def run(self, request) -> dict[str, np.ndarray | torch.Tensor]:
        from rsd_deploy.sampling import NOISE_MAP_STREAM, PRIOR_STREAM, NoiseField

        image, seed = self.inputs(request, IMAGE, SEED)  # types, ranks and batch axes as configured: Triton checked them
        batch, height, width, _ = image.shape
        if batch < 1 or height < 1 or width < 1:
            raise RequestError(f"{self.name}: empty image {height}x{width}")
        padded_h, padded_w = max(chain.padded_size(height), self.min_height), max(chain.padded_size(width), self.min_width)
        if padded_h > self.max_height or padded_w > self.max_width:
            raise RequestError(
                f"{self.name}: image {height}x{width} (padded to {padded_h}x{padded_w}) exceeds the "
                f"{self.max_height}x{self.max_width} LR pixels this repository was exported for; tile it "
                "on the client or export a larger shape range"
            )
        seeds = [int(s) for s in seed[:, 0]]
        if min(seeds) < 0:
            raise RequestError(f"{self.name}: SEED must be 0 .. 2^63-1, got {min(seeds)}")

        lr = torch.from_numpy(image).permute(0, 3, 1, 2).float() / 255
        lq = chain.pad_to(chain.to_model_range(lr), padded_h, padded_w)

        def noise(stream: int, channels: int) -> torch.Tensor:
            return torch.stack([NoiseField(s).crop(0, stream, channels, 0, 0, padded_h, padded_w) for s in seeds])

        outputs = {
            LQ_UP: chain.upsample(lq, self.scale),
            LQ: lq,
            EPS: noise(PRIOR_STREAM, self.latent_channels),
            LR_SIZE: np.tile(np.array([[height, width]], np.int32), (batch, 1)),
        }
        if self.noise_channels:
            outputs[NOISE_MAP] = noise(NOISE_MAP_STREAM, self.noise_channels)
        return outputs


class PriorSample(_PythonModel):
    """``x_T = z_y + kappa sqrt(eta_T) eps``: the start of the one step, between encoder and
    generator."""

    part = "prior"
    reads = (Z_Y, EPS)
    writes = (X_T,)

    def setup(self) -> None:
        self.prior_scale = float(self.params["prior_scale"])

    def run(self, request) -> dict[str, np.ndarray | torch.Tensor]:
        z_y, eps = self.inputs(request, Z_Y, EPS)
        self.lr_size(Z_Y, z_y)
        if z_y.shape != eps.shape:
            raise RequestError(f"{self.name}: {Z_Y} {list(z_y.shape)} and {EPS} {list(eps.shape)} differ")
        return {X_T: chain.prior_sample(torch.from_numpy(z_y), torch.from_numpy(eps), self.prior_scale)}


class Postprocess(_PythonModel):
    """``hr`` (B, 3, 4H', 4W') in [-1, 1] + ``lr_size`` -> ``HR_IMAGE`` (B, 4h, 4w, 3) uint8,
    cropped to the request's size (as ``SRPipeline.forward``, then rounded to 8 bits)."""

    part = "postprocess"
    reads = (HR, LR_SIZE)
    writes = (HR_IMAGE,)

    def setup(self) -> None:
        self.scale = int(self.params["scale"])

    def run(self, request) -> dict[str, np.ndarray | torch.Tensor]:
        from rsd_deploy.imageio import to_pixels

        hr, lr_size = self.inputs(request, HR, LR_SIZE)
        batch, padded_h, padded_w = self.lr_size(HR, hr, self.scale)
        if (lr_size != lr_size[:1]).any():
            raise RequestError(f"{self.name}: {LR_SIZE} must be one size per request, got {lr_size.tolist()}")
        height, width = (int(v) for v in lr_size[0])
        if not (0 < height <= padded_h and 0 < width <= padded_w):
            raise RequestError(f"{self.name}: {LR_SIZE} {height}x{width} does not fit the {padded_h}x{padded_w} LR image")
        images = chain.to_image_range(chain.crop(torch.from_numpy(hr).float(), height, width, self.scale))
        return {HR_IMAGE: np.stack([to_pixels(image, None, grayscale=False, bit_depth=8) for image in images])}


class OnnxRuntimeStage(_PythonModel):
    """One exported stage (``model.onnx`` beside ``model.py``) in an ONNX Runtime session.

    Requests whose inputs have the same shapes run as one batch, so the dynamic batcher in
    front of this model pays off as it does for the ``onnxruntime_onnx`` backend. Each request's
    inputs are checked on their own first; if a batch still fails, its requests are run one by
    one, so only the one that cannot run gets an error."""

    def setup(self) -> None:
        from .runners import onnxruntime_session

        providers = tuple(self.params.get("providers", "CPUExecutionProvider").split(","))
        self.session = onnxruntime_session(self.model_dir / "model.onnx", providers, int(self.params.get("intra_op_threads", "0")))
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


HOST_MODELS = (Preprocess, PriorSample, Postprocess)  # the chain's host steps, one python model each
