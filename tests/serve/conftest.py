"""The bundled demo student (small, trained, pixel-unshuffle codec: cheap to run on a CPU), its
exported graphs, shared by the serving, repository and benchmark tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsd_deploy.checkpoints import BUNDLED_DIR, DEMO_NAME, load_pipeline
from rsd_deploy.export.onnx_export import export_stage
from rsd_deploy.export.stages import ShapeRange, describe_stages, onnx_file_name
from rsd_deploy.pipeline import SRPipeline

# Small on purpose: LR up to 128 px, batches up to 4 (the requests the tests send).
SERVE_RANGE = ShapeRange(batch=(1, 1, 4), height=(64, 64, 128), width=(64, 64, 128))


@pytest.fixture(scope="session")
def serve_range() -> ShapeRange:
    return SERVE_RANGE


@pytest.fixture(scope="session")
def demo() -> SRPipeline:
    return load_pipeline(BUNDLED_DIR / DEMO_NAME)


@pytest.fixture(scope="session")
def demo_teacher() -> SRPipeline:
    return load_pipeline(BUNDLED_DIR / "demo-teacher")


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory, demo) -> Path:
    """fp32 graphs of the demo's three stages, as rsd-export writes them."""
    directory = tmp_path_factory.mktemp("onnx")
    _export(demo, directory, ("encoder", "generator", "decoder"))
    return directory


@pytest.fixture(scope="session")
def onnx_dir_with_pipeline(onnx_dir, demo) -> Path:
    """The same directory plus the fused one-step graph (only the benchmark needs it)."""
    _export(demo, onnx_dir, ("pipeline",))
    return onnx_dir


def _export(pipe, directory: Path, names) -> None:
    stages = describe_stages(pipe)
    for name in names:
        export_stage(stages[name], pipe, directory / onnx_file_name(name, "fp32"), SERVE_RANGE)


@pytest.fixture(scope="session")
def stage_files(onnx_dir) -> dict[str, Path]:
    return {s: onnx_dir / onnx_file_name(s, "fp32") for s in ("encoder", "generator", "decoder")}
