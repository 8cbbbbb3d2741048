"""OpenVINO: the exported ONNX graphs compiled for the CPU, at an inference precision.

The CPU plugin reads the ``.onnx`` files rsd-export wrote (with their external weights) and
compiles each for this CPU. ``inference_precision`` is OpenVINO's ``INFERENCE_PRECISION_HINT``:
``f32`` computes in float32; ``bf16`` computes the float ops in bfloat16 and needs a CPU with
native bf16 (AVX-512 BF16 or AMX; checked when the runner is made). INT8 comes from the graphs
themselves: the Q/DQ graphs of ``rsd-export --precision int8`` run with int8 convolutions and
matmuls (VNNI / AMX where the CPU has them), the ops left unquantized at ``inference_precision``.
The hint is always set: OpenVINO's own default on a bf16-capable CPU is bf16, which would make a
run labelled fp32 silently lower precision.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import Runner, RunnerUnavailable, import_extra

INFERENCE_PRECISIONS = ("f32", "bf16")
_NUMPY = {"f32": np.float32, "f16": np.float16, "i64": np.int64}


def _ov():
    return import_extra("openvino", "openvino")


def cpu_capabilities() -> tuple[str, ...]:
    """What OpenVINO's CPU plugin says this CPU computes natively (``FP32``, ``BF16``, ``INT8`` ...)."""
    return tuple(_ov().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


class OpenVINORunner(Runner):
    """The graphs of some stages (stage -> ``.onnx``, of ``precision``: fp32, fp16 or int8 Q/DQ)
    compiled for the CPU at ``inference_precision`` with ``threads`` threads (default: torch's,
    as the other CPU backends), one latency-mode stream."""

    def __init__(self, graphs: dict[str, Path], precision: str, inference_precision: str = "f32", threads: int | None = None):
        ov = _ov()
        if inference_precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"inference_precision: expected one of {', '.join(INFERENCE_PRECISIONS)}, got {inference_precision!r}")
        capabilities = cpu_capabilities()
        if inference_precision == "bf16" and "BF16" not in capabilities:
            raise RunnerUnavailable(f"this CPU has no native bf16 (AVX-512 BF16 or AMX); OpenVINO reports {', '.join(capabilities)}")
        missing = [str(path) for path in graphs.values() if not Path(path).is_file()]
        if missing:
            raise RunnerUnavailable(f"no exported graph: {', '.join(missing)}")
        self.name = "openvino"
        self.precision = precision if inference_precision == "f32" else f"{precision} graphs, {inference_precision} compute"
        self.device = torch.device("cpu")
        self.stages = tuple(graphs)
        threads = torch.get_num_threads() if threads is None else threads
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": inference_precision, "INFERENCE_NUM_THREADS": threads,
                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        self.requests, self.inputs, self.outputs = {}, {}, {}
        for stage, path in graphs.items():
            model = core.read_model(str(path))
            # tensor names as the graph has them: compiling may merge an output with the tensor that
            # feeds it (the compiled port then also answers to, e.g., /DepthToSpace_output_0)
            self.inputs[stage] = [(port.get_any_name(), _NUMPY[port.get_element_type().get_type_name()]) for port in model.inputs]
            self.outputs[stage] = [port.get_any_name() for port in model.outputs]
            self.requests[stage] = core.compile_model(model, "CPU", config).create_infer_request()
        self.notes = (f"OpenVINO {ov.get_version().split('-')[0]} CPU, INFERENCE_PRECISION_HINT {inference_precision}, {threads} threads, "
                      f"graphs from {Path(next(iter(graphs.values()))).parent}")

    def run(self, stage: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        request = self.requests[stage]
        arrays = {name: feeds[name].detach().cpu().numpy().astype(dtype, copy=False) for name, dtype in self.inputs[stage]}
        request.infer(arrays)
        # the request reuses its output buffers on the next call: copy
        return {name: torch.from_numpy(request.get_output_tensor(index).data.copy()) for index, name in enumerate(self.outputs[stage])}

    def close(self) -> None:
        self.requests.clear()
