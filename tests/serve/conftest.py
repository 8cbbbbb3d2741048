"""The bundled demo student (small, trained, pixel-unshuffle codec: cheap to run on a CPU), its
exported graphs, shared by the serving, repository and benchmark tests; a repository writer
killed mid-write."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
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


# A real repository writer in its own process, killed (SIGKILL) right after the count-th call of
# one of its steps: shutil.copyfile (one file copied while the new models are built) or the
# writer's _exchange (one model swapped into the repository). It writes the python-backend
# repository of the demo with a batching delay of 1234 us, which tells its models from others.
KILLED_WRITER = """
import json, os, shutil, signal, sys
from pathlib import Path
import rsd_deploy.export.triton_repo as triton_repo
from rsd_deploy.checkpoints import BUNDLED_DIR, DEMO_NAME, load_pipeline
from rsd_deploy.export.stages import ShapeRange
step, count, repository, onnx_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
shape_range = {k: tuple(v) for k, v in json.loads(sys.argv[5]).items()}
owner = shutil if step == "copyfile" else triton_repo
original, calls = getattr(owner, step), []
def killed_after(*args, **kwargs):
    original(*args, **kwargs)
    calls.append(1)
    if len(calls) == count:
        os.kill(os.getpid(), signal.SIGKILL)
setattr(owner, step, killed_after)
plan = triton_repo.RepositoryPlan.from_pipeline(load_pipeline(BUNDLED_DIR / DEMO_NAME), ShapeRange(**shape_range))
files = {s: onnx_dir / f"{s}.fp32.onnx" for s in ("encoder", "generator", "decoder")}
triton_repo.write_triton_repository(repository, plan, files, backend="python", queue_delay_us=1234, overwrite=True)
"""


@pytest.fixture(scope="session")
def kill_writer(onnx_dir):
    shape_range = json.dumps({"batch": SERVE_RANGE.batch, "height": SERVE_RANGE.height, "width": SERVE_RANGE.width})

    def run(step: str, count: int, repository: Path) -> None:
        done = subprocess.run([sys.executable, "-c", KILLED_WRITER, step, str(count), str(repository), str(onnx_dir), shape_range],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == -signal.SIGKILL, done.stderr

    run.delay_us = 1234
    return run
