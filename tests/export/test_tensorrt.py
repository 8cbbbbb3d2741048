"""Engine cache keys and the commands printed without TensorRT; engine tests need TensorRT + GPU."""

import pytest

from rsd_deploy.export import tensorrt as trt_tools
from rsd_deploy.export.stages import ShapeRange, describe_stages

BASE = dict(onnx_sha256="a" * 64, precision="fp16", trt_version="10.13.0", gpu_name="NVIDIA H100", opt_level=3)


def _key(profile, **changes):
    return trt_tools.engine_cache_key(**{**BASE, **changes, "profile": profile})


def test_cache_key_changes_with_everything_the_engine_depends_on(tiny_rsd):
    stage = describe_stages(tiny_rsd)["generator"]
    profile = ShapeRange().profile(stage)
    key = _key(profile)
    assert key == _key(dict(reversed(list(profile.items()))))  # order of inputs does not matter
    changed = [
        _key(profile, onnx_sha256="b" * 64),
        _key(profile, precision="int8"),
        _key(profile, trt_version="11.0.0"),
        _key(profile, gpu_name="NVIDIA L4"),
        _key(profile, opt_level=5),
        _key(ShapeRange(height=(64, 128, 256)).profile(stage)),
        _key(ShapeRange(batch=(1, 1, 8)).profile(stage)),
    ]
    assert len({key, *changed}) == len(changed) + 1
    assert trt_tools.engine_file_name("generator", "fp16", key) == f"generator.fp16.{key}.plan"


def test_file_checksum(tmp_path):
    import hashlib

    path = tmp_path / "g.onnx"
    path.write_bytes(b"graph" * 300_000)  # more than one read block
    assert trt_tools.file_sha256(path) == hashlib.sha256(b"graph" * 300_000).hexdigest()


def test_commands_are_strongly_typed_without_removed_flags(tiny_rsd, tmp_path):
    stage = describe_stages(tiny_rsd)["pipeline"]
    profile = ShapeRange().profile(stage)
    command = trt_tools.trtexec_command(tmp_path / "p.onnx", tmp_path / "p.plan", profile, 4, tmp_path / "t.cache")
    assert "--stronglyTyped" in command and "--builderOptimizationLevel=4" in command
    assert "--minShapes=lr:1x3x1x1,eps:1x3x64x64,noise_map:1x1x64x64" in command
    assert "--maxShapes=lr:4x3x256x256,eps:4x3x256x256,noise_map:4x1x256x256" in command
    for removed in ("--fp16", "--int8", "--best", "--calib"):
        assert removed not in command
    poly = trt_tools.polygraphy_command(tmp_path / "p.onnx", profile, 4)
    assert poly.startswith("polygraphy run") and "--trt --onnxrt --strongly-typed" in poly and "--fp16" not in poly


def test_status_explains_why_engines_cannot_be_built():
    usable, reason = trt_tools.tensorrt_status()
    assert isinstance(usable, bool) and reason
    if not usable:
        with pytest.raises(trt_tools.TensorRTUnavailable, match=reason.split(" (")[0][:20]):
            trt_tools.build_engine(None, None, {})


def _trt_ready() -> tuple[bool, str]:
    return trt_tools.tensorrt_status()


@pytest.mark.skipif(not _trt_ready()[0], reason=f"needs TensorRT and a GPU: {_trt_ready()[1]}")
def test_engine_build_cache_run_and_compare(micro, tmp_path):
    from rsd_deploy.export.onnx_export import export_stage
    from rsd_deploy.export.parity import run_onnx

    stage = describe_stages(micro)["generator"]
    shapes = ShapeRange(batch=(1, 1, 2), height=(64, 64, 128), width=(64, 64, 128))
    onnx_path = export_stage(stage, micro, tmp_path / "generator.fp32.onnx", shapes)
    engine, built = trt_tools.cached_engine(onnx_path, stage, "fp32", shapes, tmp_path / "engines")
    assert built and engine.is_file()
    assert trt_tools.cached_engine(onnx_path, stage, "fp32", shapes, tmp_path / "engines") == (engine, False)
    feeds = stage.sample_inputs(1, 64, 64)
    expected = run_onnx(onnx_path, feeds)[0]
    for cuda_graph in (False, True):
        out = trt_tools.EngineRunner(engine, cuda_graph=cuda_graph)(feeds)["x0"].float().cpu().numpy()
        assert abs(out - expected).max() < 1e-2
    assert trt_tools.compare_with_onnxruntime(onnx_path, engine, [feeds], atol=1e-2, rtol=1e-2)["passed"]
