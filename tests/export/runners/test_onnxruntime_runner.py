"""The ONNX Runtime runner: exported graphs in one place's sessions, chained like PyTorch."""

import pytest
import torch

from rsd_deploy import chain
from rsd_deploy.export.onnx_export import export_stage
from rsd_deploy.export.runners import OnnxRuntimeRunner, RunnerUnavailable, TorchRunner, onnxruntime_session
from rsd_deploy.export.stages import CHAINED_STAGES, ShapeRange, describe_stages

SHAPES = ShapeRange(batch=(1, 1, 2), height=(64, 64, 128), width=(64, 64, 128))


@pytest.fixture(scope="module")
def graphs(micro, tmp_path_factory):
    out = tmp_path_factory.mktemp("ort")
    stages = describe_stages(micro)
    return {name: export_stage(stages[name], micro, out / f"{name}.fp32.onnx", SHAPES) for name in CHAINED_STAGES}


def test_chain_over_the_graphs_matches_pytorch(micro, graphs):
    runner = OnnxRuntimeRunner(graphs, "fp32", threads=1)
    assert runner.stages == CHAINED_STAGES and "1 threads" in runner.notes
    generator = torch.Generator().manual_seed(1)
    lr = torch.rand(1, 3, 50, 64, generator=generator)
    eps, noise_map = torch.randn(1, 3, 64, 64, generator=generator), torch.randn(1, 1, 64, 64, generator=generator)
    args = (lr, eps, noise_map, micro.schedule.prior_scale, micro.codec.scale)
    ours, reference = chain.upscale(runner.stage_fn(), *args), chain.upscale(TorchRunner(micro).stage_fn(), *args)
    assert ((ours - reference).norm() / reference.norm()).item() < 1e-5


def test_sessions_are_made_once_per_graph(graphs):
    assert onnxruntime_session(graphs["encoder"], ("CPUExecutionProvider",), 1) is onnxruntime_session(graphs["encoder"], ("CPUExecutionProvider",), 1)


def test_unavailable_provider_and_missing_graph(graphs, tmp_path):
    with pytest.raises(RunnerUnavailable, match="NoSuchExecutionProvider is not in this onnxruntime build"):
        OnnxRuntimeRunner(graphs, "fp32", provider="NoSuchExecutionProvider")
    with pytest.raises(RunnerUnavailable, match="no exported graph"):
        OnnxRuntimeRunner({"encoder": tmp_path / "missing.onnx"}, "fp32")
