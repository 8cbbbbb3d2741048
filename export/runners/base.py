"""The runner interface: a backend, prepared once, that runs stages of the chain on tensors."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod

import torch

from rsd_deploy import chain


class RunnerUnavailable(RuntimeError):
    """A backend that cannot run on this machine (missing package, no GPU, no graphs); the
    message says why."""


def import_extra(module: str, extra: str):
    """The optional ``module`` (imported when a graph runs, not with the runner's module), or
    RunnerUnavailable naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise RunnerUnavailable(f"{module} is not installed ({error}); pip install 'rsd-deploy[{extra}]'") from None


class Runner(ABC):
    """Runs stages of one model on one backend. Properties are fields, so callers never test
    a backend by its name."""

    name: str  # the backend, as reports and command lines name it
    device: torch.device  # where its outputs live
    precision: str  # fp32 / fp16 / bf16 / int8 ...
    stages: tuple[str, ...]  # what :meth:`run` accepts: chain stages, and "pipeline" when it has the fused graph
    notes: str = ""  # what exactly runs (graphs, engines, providers), for reports

    @abstractmethod
    def run(self, stage: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The stage's outputs by name for ``feeds`` (its inputs by name)."""

    def stage_fn(self) -> chain.StageFn:
        """:meth:`run` as a :data:`rsd_deploy.chain.StageFn` (the single output)."""

        def run_stage(stage: str, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
            (output,) = self.run(stage, feeds).values()
            return output

        return run_stage

    def memory(self) -> dict[str, float]:
        """Peak device memory (MiB) the backend itself can see since :meth:`reset_memory`."""
        return {}

    def reset_memory(self) -> None:
        pass

    def close(self) -> None:
        """Release sessions, engines and device memory."""
