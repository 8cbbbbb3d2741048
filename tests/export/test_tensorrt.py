"""TensorRT engines: cache keys, targets, and real TensorRT-RTX builds of every exported graph
(ahead of time, no GPU needed). Running an engine needs a GPU: those tests skip with the reason."""

import hashlib
import importlib.util
import json
import os

import pytest

from rsd_deploy.export import tensorrt as trt_tools
from rsd_deploy.export.cli import main
from rsd_deploy.export.stages import ShapeRange, describe_stages

RTX = importlib.util.find_spec("tensorrt_rtx") is not None
needs_rtx = pytest.mark.skipif(not RTX, reason="needs TensorRT for RTX (pip install tensorrt-rtx, the `rtx` extra)")
ZERO_PLACEHOLDER = "zeroIsPlaceHolder"

TARGET = {"flavour": "tensorrt", "version": "10.13.0", "gpu": "NVIDIA H100", "compute_capabilities": []}
BASE = dict(onnx_sha256="a" * 64, precision="fp16", target=TARGET, opt_level=3)


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
        _key(profile, target={**TARGET, "version": "11.0.0"}),
        _key(profile, target={**TARGET, "gpu": "NVIDIA L4"}),
        _key(profile, target={**TARGET, "flavour": "tensorrt-rtx"}),
        _key(profile, target={**TARGET, "gpu": "", "compute_capabilities": ["sm89"]}),
        _key(profile, target={**TARGET, "gpu": "", "compute_capabilities": ["sm86", "sm89"]}),
        _key(profile, opt_level=5),
        _key(ShapeRange(height=(64, 128, 256)).profile(stage)),
        _key(ShapeRange(batch=(1, 1, 8)).profile(stage)),
    ]
    assert len({key, *changed}) == len(changed) + 1
    assert trt_tools.engine_file_name("generator", "fp16", key) == f"generator.fp16.{key}.plan"


def test_file_checksum(tmp_path):
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


def test_compute_capabilities_are_parsed_and_checked():
    assert trt_tools.parse_compute_capabilities("sm86, 89,8.9,sm120") == ("sm86", "sm89", "sm120")
    with pytest.raises(ValueError, match="unknown 'sm90'"):
        trt_tools.parse_compute_capabilities("sm90")  # Hopper is TensorRT 10/11's, not TensorRT-RTX's
    with pytest.raises(ValueError, match="at least one"):
        trt_tools.parse_compute_capabilities(",")


def test_targets_say_why_and_where():
    assert trt_tools.resolve_target("none") == (None, "engines not requested (--engine none)")
    with pytest.raises(ValueError, match="--engine"):
        trt_tools.resolve_target("tensorrt-11")
    if trt_tools.local_gpu() is None:
        with pytest.raises(trt_tools.TensorRTUnavailable, match="TensorRT 10/11|not installed"):
            trt_tools.resolve_target("tensorrt")
    target, reason = trt_tools.resolve_target("auto")
    if RTX and trt_tools.local_gpu() is None:
        assert target.flavour.name == "tensorrt-rtx" and target.compute_capabilities == trt_tools.DEFAULT_COMPUTE_CAPABILITIES
        assert "ahead of time" in reason and "GeForce RTX 40" in target.runs_on()
        chosen, _ = trt_tools.resolve_target("tensorrt-rtx", ("sm120",))
        assert chosen.compute_capabilities == ("sm120",) and "RTX 50" in chosen.runs_on()
    elif target is None:
        assert "no TensorRT flavour can build here" in reason


# --- real TensorRT-RTX builds (no GPU needed) ---------------------------------------------------


def _export(out, precision, *extra):
    code = main(["--preset", "tiny-rsd", "--precision", precision, "--stages", "all", "--engine", "tensorrt-rtx",
                 "--compute-capability", "sm89", "--calib-count", "2", "--eval-count", "1", "--out", str(out), *extra])
    return code, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def fp16_export(tmp_path_factory):
    """rsd-export --precision fp16 --stages all of the tiny preset, engines built by TensorRT-RTX."""
    out = tmp_path_factory.mktemp("rtx-fp16")
    return out, *_export(out, "fp16")


@needs_rtx
def test_fp16_export_builds_every_engine_without_zero_placeholder_reshapes(fp16_export):
    out, code, report = fp16_export
    assert code == 0, report["failures"]
    engines = {e["stage"]: e for e in report["tensorrt"]["engines"]}
    assert set(engines) == {"encoder", "generator", "decoder", "pipeline"}
    for stage, engine in engines.items():
        assert engine["error"] is None and os.path.getsize(engine["engine"]) == engine["bytes"] > 0, stage
        assert engine["network_layers"] > 0 and engine["build_seconds"] > 0 and engine["warnings"] == 0, engine["warning_samples"]
        assert "sm89" in engine["target"] and "TensorRT for RTX" in engine["target"]
    assert "GeForce RTX 40" in report["tensorrt"]["runs_on"]
    assert not (out / "INCOMPLETE").exists()


@needs_rtx
def test_fp32_graphs_build_over_the_large_tile_range(fp16_export, tmp_path):
    """The graphs hold no size-dependent constants: the same files build for LR up to 512."""
    out, _, _ = fp16_export
    target, _ = trt_tools.resolve_target("tensorrt-rtx", ("sm89",))
    from rsd_deploy.checkpoints import build_pipeline

    stages = describe_stages(build_pipeline("tiny-rsd"))
    large = ShapeRange(batch=(1, 1, 4), height=(64, 64, 512), width=(64, 64, 512))
    for name in ("encoder", "generator", "decoder", "pipeline"):
        record = trt_tools.cached_engine(out / f"{name}.fp32.onnx", stages[name], "fp32", large, tmp_path, target)
        assert record.ok and record.built_now, (name, record.error)
        assert not any(ZERO_PLACEHOLDER in w for w in record.warning_samples) and record.warnings == 0, record.warning_samples


@needs_rtx
def test_engine_cache_reuses_a_build_and_reports_the_same(fp16_export, capsys):
    """A second run over the same folder exports the same fp16 generator graph (the conversion is
    deterministic) and takes its engine from the cache, with the first build's record."""
    out, _, first = fp16_export
    code, again = _export(out, "fp16", "--stages", "generator")
    assert code == 0
    before = next(e for e in first["tensorrt"]["engines"] if e["stage"] == "generator")
    (after,) = again["tensorrt"]["engines"]
    assert after["built_now"] is False and after["engine"] == before["engine"]
    assert (after["bytes"], after["network_layers"], after["warnings"]) == (before["bytes"], before["network_layers"], before["warnings"])
    assert "| generator | fp16 | cached |" in capsys.readouterr().out


@needs_rtx
def test_int8_export_builds_every_engine(tmp_path):
    code, report = _export(tmp_path, "int8", "--lr-size", "64,64,128", "--batch", "1,1,2")
    assert code == 0, report["failures"]
    assert all(e["error"] is None and e["warnings"] == 0 for e in report["tensorrt"]["engines"])
    assert report["precision_details"]["generator"]["quantize_linear"] > 10


@needs_rtx
def test_a_failed_build_is_reported_with_tensorrts_error_and_exit_1(fp16_export, tmp_path, capsys):
    """Turing cannot compile the fp32 time-embedding GEMM in TensorRT-RTX 1.7: the report carries
    TensorRT's own message and rsd-export exits 1."""
    code = main(["--preset", "tiny-rsd", "--precision", "fp32", "--stages", "generator", "--engine", "tensorrt-rtx",
                 "--compute-capability", "sm75", "--lr-size", "64", "--batch", "1", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    report = json.loads((tmp_path / "report.json").read_text())
    (engine,) = report["tensorrt"]["engines"]
    if engine["error"] is None:
        pytest.skip("this TensorRT-RTX version compiles fp32 GEMMs for Turing")
    assert code == 1 and "FP32 GEMM" in engine["error"] and "Turing" in engine["error"]
    assert "generator fp32 engine" in captured.err and "| generator | fp32 | FAILED |" in captured.out
    assert "## Failed checks" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
@needs_rtx
@pytest.mark.skipif(not os.environ.get("RSD_RUN_SLOW"), reason="slow on a 2-core CPU (about 5 min); set RSD_RUN_SLOW=1 to run")
def test_full_size_fp16_generator_builds(tmp_path):
    code = main(["--preset", "rsd-x4", "--precision", "fp16", "--stages", "generator", "--engine", "tensorrt-rtx",
                 "--calib-count", "1", "--eval-count", "1", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "report.json").read_text())
    (engine,) = report["tensorrt"]["engines"]
    assert code == 0 and engine["error"] is None and engine["warnings"] == 0, engine
    assert report["precision_details"]["generator"]["fp16_nodes"] > 1000


# --- running engines needs a GPU ------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(trt_tools.local_gpu() is None, reason="running an engine needs a CUDA GPU")
def test_engine_runs_and_matches_onnxruntime(micro, tmp_path):
    from rsd_deploy.export.onnx_export import export_stage
    from rsd_deploy.export.parity import run_onnx

    target, reason = trt_tools.resolve_target("auto")
    if target is None:
        pytest.skip(reason)
    stage = describe_stages(micro)["generator"]
    shapes = ShapeRange(batch=(1, 1, 2), height=(64, 64, 128), width=(64, 64, 128))
    onnx_path = export_stage(stage, micro, tmp_path / "generator.fp32.onnx", shapes)
    record = trt_tools.cached_engine(onnx_path, stage, "fp32", shapes, tmp_path / "engines", target)
    assert record.ok and record.built_now
    feeds = stage.sample_inputs(1, 64, 64)
    expected = run_onnx(onnx_path, feeds)[0]
    for cuda_graph in (False, True):
        out = trt_tools.EngineRunner(record.engine, target.flavour, cuda_graph=cuda_graph)(feeds)["x0"].float().cpu().numpy()
        assert abs(out - expected).max() < 1e-2
    assert trt_tools.compare_with_onnxruntime(onnx_path, record.engine, target.flavour, [feeds], atol=1e-2, rtol=1e-2)["passed"]
