"""TensorRT (10/11 or for RTX): an engine per exported graph, from rsd-export's engine cache."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import tensorrt as trt_tools
from ..stages import ShapeRange, StageSpec
from .base import Runner, RunnerUnavailable


class TensorRTRunner(Runner):
    """Engines of ``graphs`` (stage -> ``.onnx``) built for ``target`` over ``shapes`` (cached in
    ``cache_dir``, built now when missing). Running them needs a CUDA GPU."""

    def __init__(self, graphs: dict[str, Path], specs: dict[str, StageSpec], precision: str, shapes: ShapeRange,
                 cache_dir: Path, target: trt_tools.EngineTarget | None = None, cuda_graph: bool = False):
        if trt_tools.local_gpu() is None:
            raise RunnerUnavailable("running TensorRT engines needs a CUDA GPU")
        if target is None:
            target, reason = trt_tools.resolve_target("auto")
            if target is None:
                raise RunnerUnavailable(reason)
        self.name = target.flavour.name
        self.precision = precision
        self.device = torch.device("cuda")
        self.stages = tuple(graphs)
        self.engines = {}
        for stage, graph in graphs.items():
            record = trt_tools.cached_engine(Path(graph), specs[stage], precision, shapes, cache_dir, target)
            if not record.ok:
                raise RunnerUnavailable(f"the {stage} engine did not build: {record.error}")
            self.engines[stage] = trt_tools.EngineRunner(record.engine, target.flavour, cuda_graph=cuda_graph)
        self.notes = f"{target.label} engines in {cache_dir}" + (", CUDA graphs" if cuda_graph else "")

    def run(self, stage: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.engines[stage](feeds)

    def memory(self) -> dict[str, float]:
        free, total = torch.cuda.mem_get_info()
        return {"gpu_in_use_mib": (total - free) / 2**20}

    def close(self) -> None:
        for engine in self.engines.values():
            engine.save_runtime_cache()
        self.engines.clear()
