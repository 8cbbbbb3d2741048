"""ONNX Runtime: the exported graphs in sessions made in one place (:func:`onnxruntime_session`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .base import Runner, RunnerUnavailable, import_extra

_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


def _ort():
    return import_extra("onnxruntime", "cpu")  # or the gpu extra's onnxruntime-gpu


def default_providers() -> tuple[str, ...]:
    """The CUDA EP where the installed ONNX Runtime has it, always the CPU EP."""
    available = _ort().get_available_providers()
    return tuple(p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available)


@lru_cache(maxsize=16)
def _session(path: str, mtime: float, providers: tuple[str, ...], threads: int):
    ort = _ort()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    return ort.InferenceSession(path, options, providers=list(providers))


def onnxruntime_session(path: str | Path, providers: tuple[str, ...] | None = None, threads: int = 0):
    """An ``InferenceSession`` for ``path`` (cached per file version, providers and threads;
    ``threads`` 0 is ONNX Runtime's own choice)."""
    path = Path(path)
    return _session(str(path), path.stat().st_mtime, tuple(providers or default_providers()), threads)


def onnxruntime_session_for_model(model, providers: tuple[str, ...] | None = None, threads: int = 0):
    """A session for an in-memory ``onnx.ModelProto`` (not cached): graphs that live only during a
    search, such as the quality-budget variants."""
    ort = _ort()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=list(providers or default_providers()))


class OnnxRuntimeRunner(Runner):
    """The graphs of some stages (stage -> ``.onnx``) on one execution provider."""

    def __init__(self, graphs: dict[str, Path], precision: str, provider: str = "CPUExecutionProvider", threads: int | None = None):
        available = _ort().get_available_providers()
        if provider not in available:
            raise RunnerUnavailable(f"{provider} is not in this onnxruntime build ({', '.join(available)}); install onnxruntime-gpu alone")
        missing = [str(path) for path in graphs.values() if not Path(path).is_file()]
        if missing:
            raise RunnerUnavailable(f"no exported graph: {', '.join(missing)}")
        self.name = "onnxruntime"
        self.precision = precision
        self.device = torch.device("cpu")
        self.stages = tuple(graphs)
        # the same CPU threads as the PyTorch backends, unless told otherwise
        threads = torch.get_num_threads() if threads is None else threads
        self.sessions = {stage: onnxruntime_session(path, (provider,), threads) for stage, path in graphs.items()}
        self.notes = f"{provider}, {threads} threads, graphs from {Path(next(iter(graphs.values()))).parent}"

    def run(self, stage: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        session = self.sessions[stage]
        arrays = {i.name: feeds[i.name].detach().cpu().numpy().astype(_NUMPY[i.type], copy=False) for i in session.get_inputs()}
        names = [o.name for o in session.get_outputs()]
        return {name: torch.from_numpy(value) for name, value in zip(names, session.run(names, arrays))}
