"""Fixtures of the artifact and serving tests: the bundled demo student (small, trained,
pixel-unshuffle codec: cheap on a CPU), a real rsd-export folder of its graphs, the Triton
repository rsd-export writes by default served by the bundled tritonserver on loopback, and a
repository writer killed mid-write."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rsd_deploy.checkpoints import BUNDLED_DIR, DEMO_NAME, load_pipeline
from rsd_deploy.export.stages import CHAINED_STAGES, ShapeRange, onnx_file_name
from rsd_deploy.pipeline import SRPipeline

# Small on purpose: LR up to 128 px, batches up to 4 (the requests the tests send).
SERVE_RANGE = ShapeRange(batch=(1, 1, 4), height=(64, 64, 128), width=(64, 64, 128))
BATCH_WINDOW_US = 20_000  # served models wait this long to batch: requests sent together run together


@pytest.fixture(scope="session")
def serve_range() -> ShapeRange:
    return SERVE_RANGE


@pytest.fixture(scope="session")
def demo() -> SRPipeline:
    return load_pipeline(BUNDLED_DIR / DEMO_NAME)


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory, demo) -> Path:
    """A complete rsd-export folder: the demo's fp32 stage graphs, their parity checks, report.json."""
    from rsd_deploy.export.workflow import ExportOptions, export_all

    directory = tmp_path_factory.mktemp("export") / "rsd-export"
    report = export_all(demo, ExportOptions(precision="fp32", shapes=SERVE_RANGE, out=directory, engine="none"), log=lambda line: None)
    assert report.failures == []
    return directory


@pytest.fixture(scope="session")
def stage_files(onnx_dir) -> dict[str, Path]:
    return {s: onnx_dir / onnx_file_name(s, "fp32") for s in CHAINED_STAGES}


_SERVER = contextlib.ExitStack()  # the served repository's tritonserver, while it runs


@pytest.fixture(scope="session")
def served(tmp_path_factory, demo, stage_files):
    """The python-form repository (the default of rsd-export --triton-repo), each model batching
    for BATCH_WINDOW_US, served by the bundled tritonserver: started once, stopped after the last
    test that uses it (its six python-model processes hold ~2 GB)."""
    from rsd_deploy.export.triton_config import RepositoryPlan
    from rsd_deploy.export.triton_repo import write_triton_repository
    from rsd_deploy.export.triton_server import triton_server

    repository = tmp_path_factory.mktemp("served") / "models"
    write_triton_repository(repository, RepositoryPlan.from_pipeline(demo, SERVE_RANGE), stage_files, queue_delay_us=BATCH_WINDOW_US)
    with _SERVER:
        yield _SERVER.enter_context(triton_server(repository))


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(items):
    users = [item for item in items if "served" in getattr(item, "fixturenames", ())]
    if users:
        users[-1].stops_the_server = True


@pytest.hookimpl(trylast=True)  # after the test's own fixtures (its clients) are torn down
def pytest_runtest_teardown(item):
    if getattr(item, "stops_the_server", False):
        _SERVER.close()


# A real repository writer in its own process, killed (SIGKILL) right after the count-th call of
# one of its steps: shutil.copyfile (one file copied while the new models are built) or
# triton_swap._exchange (one model swapped into the repository). It writes the python-form
# repository of the demo with a batching delay of 1234 us, which tells its models from others.
KILLED_WRITER = """
import json, os, shutil, signal, sys
from pathlib import Path
import rsd_deploy.export.triton_swap as triton_swap
from rsd_deploy.export.triton_config import RepositoryPlan
from rsd_deploy.export.triton_repo import write_triton_repository
from rsd_deploy.checkpoints import BUNDLED_DIR, DEMO_NAME, load_pipeline
from rsd_deploy.export.stages import ShapeRange
step, count, repository, onnx_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
shape_range = {k: tuple(v) for k, v in json.loads(sys.argv[5]).items()}
owner = shutil if step == "copyfile" else triton_swap
original, calls = getattr(owner, step), []
def killed_after(*args, **kwargs):
    original(*args, **kwargs)
    calls.append(1)
    if len(calls) == count:
        os.kill(os.getpid(), signal.SIGKILL)
setattr(owner, step, killed_after)
plan = RepositoryPlan.from_pipeline(load_pipeline(BUNDLED_DIR / DEMO_NAME), ShapeRange(**shape_range))
files = {s: onnx_dir / f"{s}.fp32.onnx" for s in ("encoder", "generator", "decoder")}
write_triton_repository(repository, plan, files, backend="python", queue_delay_us=1234, overwrite=True)
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
