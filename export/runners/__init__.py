"""One runner interface over every backend that runs the exported stages: PyTorch, ONNX Runtime,
OpenVINO, TensorRT (10/11 and for RTX), a Triton Inference Server serving them. ``rsd-bench``, parity
checks and ``rsd-upscale --backend`` drive them the same way: :meth:`Runner.run` (stage name,
feeds -> outputs) or, through :meth:`Runner.stage_fn`, :mod:`rsd_deploy.chain`.
"""

from .base import Runner, RunnerUnavailable
from .onnxruntime_runner import OnnxRuntimeRunner, onnxruntime_session
from .openvino_runner import OpenVINORunner
from .tensorrt_runner import TensorRTRunner
from .torch_runner import TorchRunner
from .triton_runner import TritonRunner

__all__ = ["Runner", "RunnerUnavailable", "TorchRunner", "OnnxRuntimeRunner", "OpenVINORunner", "TensorRTRunner", "TritonRunner", "onnxruntime_session"]
