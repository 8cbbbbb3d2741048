"""Export of every stage (micro pipeline), ONNX Runtime parity, dim names, atomic writes."""

import onnx
import pytest
import torch

from rsd_deploy.export import onnx_export
from rsd_deploy.export.onnx_export import export_stage, graph_signature, read_metadata
from rsd_deploy.export.parity import relative_l2, run_onnx, stage_parity
from rsd_deploy.chain import padded_size
from rsd_deploy.export.stages import STAGE_NAMES, ShapeRange, describe_stages, stage_inputs_from_images

SHAPES = ShapeRange(batch=(1, 1, 2), height=(64, 64, 128), width=(64, 64, 128))


@pytest.fixture(scope="module")
def exported(micro, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    stages = describe_stages(micro)
    return {name: export_stage(stages[name], micro, out / f"{name}.fp32.onnx", SHAPES) for name in STAGE_NAMES}


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_graph_is_valid_with_named_dynamic_axes(exported, micro, name):
    path = exported[name]
    onnx.checker.check_model(str(path))
    stage = describe_stages(micro)[name]
    signature = graph_signature(path)
    assert [v["name"] for v in signature["inputs"]] == list(stage.input_names)
    assert [v["name"] for v in signature["outputs"]] == list(stage.output_names)
    for value, spec in zip(signature["inputs"] + signature["outputs"], stage.inputs + stage.outputs):
        assert value["shape"] == spec.symbolic_shape() and value["dtype"] == "float32"
    meta = read_metadata(path)
    assert meta["stage"] == name and meta["precision"] == "fp32" and meta["shape_range"] == SHAPES.to_json()


@pytest.mark.parametrize("name", STAGE_NAMES)
@pytest.mark.parametrize("batch, height, width", [(1, 64, 64), (2, 64, 128)])
def test_onnxruntime_matches_pytorch_on_random_inputs(exported, micro, name, batch, height, width):
    stage = describe_stages(micro)[name]
    inputs = stage.sample_inputs(batch, height, width, seed=batch)
    if name == "pipeline":  # an LR size that needs padding inside the graph
        inputs["lr"] = inputs["lr"][..., : height - 7, : width - 30]
    result = stage_parity(stage, micro, exported[name], inputs)
    assert result["relative_l2"] < 1e-4, result


def test_onnxruntime_matches_pytorch_on_a_photo(exported, micro):
    from rsd_deploy.export.calibration import bundled_photos

    photo = bundled_photos(1, 256, seed=5)
    real = stage_inputs_from_images(micro, photo.lr, seed=0)
    stages = describe_stages(micro)
    for name in STAGE_NAMES:
        assert stage_parity(stages[name], micro, exported[name], real[name])["relative_l2"] < 1e-4, name


def test_fused_graph_pads_small_images(exported, micro):
    """An LR image too small to reflect-pad (replicate branch) through the fused graph."""
    generator = torch.Generator().manual_seed(0)
    lr = torch.rand(1, 3, 20, 40, generator=generator)
    eps = torch.randn(1, 3, padded_size(20), padded_size(40), generator=generator)
    noise_map = torch.randn(1, 1, 64, 64, generator=generator)
    hr = run_onnx(exported["pipeline"], {"lr": lr, "eps": eps, "noise_map": noise_map})[0]
    with torch.no_grad():
        expected = describe_stages(micro)["pipeline"].module(micro)(lr, eps, noise_map).numpy()
    assert hr.shape == (1, 3, 80, 160)
    # 1e-3, not 1e-4: with an untrained codebook a few near-tie codes may flip between ONNX
    # Runtime and PyTorch; wrong padding would be off by ~1e-1.
    assert relative_l2(hr, expected) < 1e-3


def test_dynamo_exporter(micro_pixel_unshuffle, tmp_path):
    """The dynamo exporter path (kept for when the TorchScript exporter is removed), on the
    parameter-free pixel-unshuffle codec stages that it exports in seconds."""
    pipe = micro_pixel_unshuffle
    stages = describe_stages(pipe)
    for name in ("encoder", "decoder"):
        path = export_stage(stages[name], pipe, tmp_path / f"{name}.onnx", SHAPES, exporter="dynamo")
        assert graph_signature(path)["inputs"][0]["shape"] == stages[name].inputs[0].symbolic_shape()
        inputs = stages[name].sample_inputs(2, 128, 64)
        assert stage_parity(stages[name], pipe, path, inputs)["relative_l2"] < 1e-6


def test_interrupted_export_leaves_no_partial_artifact(micro, tmp_path, monkeypatch):
    stage = describe_stages(micro)["decoder"]
    target = tmp_path / "decoder.fp32.onnx"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C after the graph was written, before it was checked

    monkeypatch.setattr(onnx_export.onnx.checker, "check_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_stage(stage, micro, target, SHAPES)
    assert list(tmp_path.iterdir()) == []


def test_export_failure_is_one_line(micro, tmp_path):
    stage = describe_stages(micro)["decoder"]
    with pytest.raises(ValueError, match="exporter must be one of"):
        export_stage(stage, micro, tmp_path / "x.onnx", exporter="tflite")
