"""Exported tiny graphs and a Triton repository built from them, shared by the serving tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsd_deploy.export.onnx_export import export_stage
from rsd_deploy.export.stages import ShapeRange, describe_stages, onnx_file_name

# Small on purpose: LR up to 128 px, batches up to 4 (the requests the tests send).
SERVE_RANGE = ShapeRange(batch=(1, 1, 4), height=(64, 64, 128), width=(64, 64, 128))


@pytest.fixture(scope="session")
def serve_range() -> ShapeRange:
    return SERVE_RANGE


@pytest.fixture(scope="session")
def tiny_onnx_dir(tmp_path_factory, tiny_rsd) -> Path:
    """fp32 graphs of the three stages of the tiny RSD student, as rsd-export writes them."""
    directory = tmp_path_factory.mktemp("onnx")
    _export(tiny_rsd, directory, ("encoder", "generator", "decoder"))
    return directory


@pytest.fixture(scope="session")
def tiny_onnx_dir_with_pipeline(tiny_onnx_dir, tiny_rsd) -> Path:
    """The same directory plus the fused one-step graph (only the benchmark needs it)."""
    _export(tiny_rsd, tiny_onnx_dir, ("pipeline",))
    return tiny_onnx_dir


def _export(pipe, directory: Path, names) -> None:
    stages = describe_stages(pipe)
    for name in names:
        export_stage(stages[name], pipe, directory / onnx_file_name(name, "fp32"), SERVE_RANGE)


@pytest.fixture(scope="session")
def stage_files(tiny_onnx_dir) -> dict[str, Path]:
    return {s: tiny_onnx_dir / onnx_file_name(s, "fp32") for s in ("encoder", "generator", "decoder")}
