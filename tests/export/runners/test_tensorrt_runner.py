"""The TensorRT runner needs a GPU to run engines: without one it says so; with one it matches
ONNX Runtime on the same graphs."""

import pytest
import torch

from rsd_deploy.export import tensorrt as trt_tools
from rsd_deploy.export.onnx_export import export_stage
from rsd_deploy.export.parity import run_onnx
from rsd_deploy.export.runners import RunnerUnavailable, TensorRTRunner
from rsd_deploy.export.stages import ShapeRange, describe_stages

SHAPES = ShapeRange(batch=(1, 1, 2), height=(64, 64, 128), width=(64, 64, 128))


@pytest.mark.skipif(trt_tools.local_gpu() is not None, reason="a GPU is present")
def test_without_a_gpu_it_says_so(tmp_path):
    with pytest.raises(RunnerUnavailable, match="needs a CUDA GPU"):
        TensorRTRunner({}, {}, "fp32", SHAPES, tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(trt_tools.local_gpu() is None, reason="running an engine needs a CUDA GPU")
def test_engine_matches_onnxruntime(micro, tmp_path):
    specs = describe_stages(micro)
    graph = export_stage(specs["generator"], micro, tmp_path / "generator.fp32.onnx", SHAPES)
    try:
        runner = TensorRTRunner({"generator": graph}, specs, "fp32", SHAPES, tmp_path / "engines")
    except RunnerUnavailable as error:
        pytest.skip(str(error))
    feeds = specs["generator"].sample_inputs(1, 64, 64)
    out = runner.run("generator", feeds)["x0"].float().cpu()
    assert (out - torch.from_numpy(run_onnx(graph, feeds)[0])).abs().max() < 1e-2
