"""How close an exported graph is to PyTorch: relative L2 per stage, and whole HR images.

- :func:`stage_parity`: ONNX Runtime vs the stage's torch module on the same inputs.
- :func:`upscale_onnx`: the one-step SR through exported graphs (the fused ``pipeline`` graph, or
  encoder -> generator -> decoder chained on the host), to compare whole HR images (with
  :mod:`rsd_deploy.metrics`: PSNR, LPIPS).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from rsd_deploy import chain
# re-exported only until export/quality_budget.py, bench_measure.py and their tests import rsd_deploy.metrics
from rsd_deploy.pipeline import SRPipeline

from .runners.onnxruntime_runner import onnxruntime_session
from .stages import StageSpec


def run_onnx(path: str | Path, feeds: dict[str, torch.Tensor | np.ndarray]) -> list[np.ndarray]:
    arrays = {k: (v.numpy() if isinstance(v, torch.Tensor) else v).astype(np.float32) for k, v in feeds.items()}
    return onnxruntime_session(path).run(None, arrays)


def relative_l2(actual: np.ndarray, expected: np.ndarray) -> float:
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.linalg.norm(np.asarray(actual, dtype=np.float64) - expected) / max(np.linalg.norm(expected), 1e-12))


@torch.no_grad()
def stage_parity(stage: StageSpec, pipe: SRPipeline, onnx_path: str | Path, inputs: dict[str, torch.Tensor]) -> dict:
    """Relative L2 error of each output (ONNX Runtime vs PyTorch) and both run times."""
    module = stage.module(pipe)
    start = time.perf_counter()
    expected = module(*inputs.values())
    torch_s = time.perf_counter() - start
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    start = time.perf_counter()
    actual = run_onnx(onnx_path, inputs)
    ort_s = time.perf_counter() - start
    errors = {name: relative_l2(a, e.numpy()) for name, a, e in zip(stage.output_names, actual, expected)}
    return {"relative_l2": max(errors.values()), "per_output": errors, "torch_s": torch_s, "onnxruntime_s": ort_s}


@torch.no_grad()
def upscale_onnx(
    graphs: dict[str, Path], pipe: SRPipeline, lr: torch.Tensor, eps: torch.Tensor, noise_map: torch.Tensor | None
) -> torch.Tensor:
    """HR images in [0, 1] from exported graphs: ``graphs["pipeline"]`` when given, else the
    chain (:func:`rsd_deploy.chain.upscale`) over the encoder, generator and decoder graphs.
    ``eps`` / ``noise_map`` at the padded LR size."""
    if "pipeline" in graphs:
        extra = {"noise_map": noise_map} if noise_map is not None else {}
        return torch.from_numpy(run_onnx(graphs["pipeline"], {"lr": lr, "eps": eps, **extra})[0])

    def stage(name: str, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.from_numpy(run_onnx(graphs[name], feeds)[0])

    return chain.upscale(stage, lr.float(), eps, noise_map, pipe.schedule.prior_scale, pipe.codec.scale)
