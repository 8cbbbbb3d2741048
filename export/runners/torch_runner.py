"""PyTorch: the stage modules the graphs are exported from, eager or ``torch.compile``d."""

from __future__ import annotations

import copy

import torch

from rsd_deploy.pipeline import SRPipeline

from ..stages import describe_stages
from .base import Runner, RunnerUnavailable

_PRECISIONS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


class TorchRunner(Runner):
    """Every stage (and the fused one) of a copy of ``pipe`` on ``device`` in ``dtype``, with the
    named window-attention backend."""

    def __init__(self, pipe: SRPipeline, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 attention: str = "reference", compile: bool = False):
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RunnerUnavailable("needs a CUDA GPU (none visible to torch)")
        if attention == "triton" and self.device.type != "cuda":
            raise RunnerUnavailable("the fused Triton window-attention kernel needs a CUDA GPU (CPU runs it only in the interpreter)")
        self.name = "torch"
        self.precision = _PRECISIONS[dtype]
        self.dtype = dtype
        self.pipe = copy.deepcopy(pipe).to(device=self.device, dtype=dtype)
        self.pipe.unet.set_attention_backend(attention)
        specs = describe_stages(self.pipe)
        self.stages = tuple(specs)
        self.outputs = {name: spec.output_names for name, spec in specs.items()}
        self.inputs = {name: spec.input_names for name, spec in specs.items()}
        self.modules = {name: spec.module(self.pipe) for name, spec in specs.items()}
        if compile:
            self.modules = {name: torch.compile(module) for name, module in self.modules.items()}
        self.notes = f"{'torch.compile' if compile else 'eager'} {self.precision}, {attention} attention, {self.device}"

    @torch.no_grad()
    def run(self, stage: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        args = [feeds[name].to(device=self.device, dtype=self.dtype, non_blocking=True) for name in self.inputs[stage] if name in feeds]
        (output,) = self.outputs[stage]
        return {output: self.modules[stage](*args)}

    def memory(self) -> dict[str, float]:
        if self.device.type != "cuda":
            return {}
        return {"peak_gpu_allocated_mib": torch.cuda.max_memory_allocated(self.device) / 2**20}

    def reset_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
