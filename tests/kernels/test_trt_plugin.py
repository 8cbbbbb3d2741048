"""The TensorRT plugin: its ahead-of-time kernel everywhere (Triton compiles for sm_90 without a
GPU), the engine itself only where TensorRT and a GPU exist."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from rsd_deploy.kernels import trt_plugin

# The AOT compile runs in a child without TRITON_INTERPRET: under the interpreter Triton's own
# library functions are interpreted too, so nothing can be compiled in this process.
# (dtype, shift, arch): Hopper for TensorRT 10/11, Ada (sm89) as a TensorRT-RTX target
_CASES = [("float16", 4, 90), ("bfloat16", 0, 90), ("float32", 4, 90), ("float16", 4, 89)]
_COMPILE = r"""
import json, sys
from triton.backends.compiler import GPUTarget
from rsd_deploy.kernels.trt_plugin import compile_kernel
try:
    from triton.backends.nvidia.compiler import get_ptxas
    ptxas = get_ptxas(90).path
except Exception:
    ptxas = None
out = {}
for case in json.loads(sys.argv[1]):
    dtype, shift, arch = case
    k = compile_kernel(dtype, num_heads=6, head_dim=32, window=8, shift=shift, scale=32**-0.5,
                       target=GPUTarget("cuda", arch, 32), ptx_version=84)
    out[f"{dtype}-{shift}-{arch}"] = dict(name=k.name, ptx=k.ptx, num_warps=k.num_warps, shared=k.shared, ptxas=ptxas)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def aot_kernels() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE, json.dumps(_CASES)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("dtype,shift,arch", _CASES)
def test_aot_kernel_has_exactly_the_parameters_tensorrt_passes(dtype, shift, arch, aot_kernels, tmp_path):
    kernel = aot_kernels[f"{dtype}-{shift}-{arch}"]
    assert f".target sm_{arch}" in kernel["ptx"]
def test_scratch_parameters_in_use_are_refused():
    ptx = ".visible .entry k(\n\t.param .u64 k_param_0,\n\t.param .u64 k_param_1\n)\n{\n\tld.param.b64 %rd1, [k_param_1];\n}"
    with pytest.raises(RuntimeError, match="uses its scratch parameter"):
        trt_plugin._strip_trailing_params(ptx, "k", 1)
    stripped = trt_plugin._strip_trailing_params(ptx.replace("[k_param_1]", "[k_param_0]"), "k", 1)
    assert "k_param_1" not in stripped and "k_param_0" in stripped


def test_ptx_version_capped_by_the_driver(monkeypatch):
    from triton.backends.nvidia.compiler import CUDAOptions, get_ptx_version_from_options

    triton_default = get_ptx_version_from_options(CUDAOptions(), 90)
    monkeypatch.setattr(trt_plugin, "_driver_ptx_version", lambda: 84)  # e.g. a CUDA 12.4 driver
    assert trt_plugin._default_ptx_version(90) == min(84, triton_default)
    monkeypatch.setattr(trt_plugin, "_driver_ptx_version", lambda: 200)
    assert trt_plugin._default_ptx_version(90) == triton_default
    monkeypatch.setattr(trt_plugin, "_driver_ptx_version", lambda: None)
    assert trt_plugin._default_ptx_version(90) is None


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed")
def test_register_without_tensorrt_says_what_is_missing():
    with pytest.raises(ImportError, match="TensorRT >= 10.9"):
        trt_plugin.register()


def _rtx_plugin_api() -> bool:
    try:
        importlib.import_module("tensorrt_rtx.plugin")
        return True
    except ImportError:
        return False


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None, reason="needs TensorRT for RTX (the `rtx` extra)")
def test_tensorrt_rtx_refusal_is_reported(tmp_path, capsys):
    """TensorRT-RTX 1.7.1's wheels ship no quick-plugin package (``tensorrt_rtx.plugin`` imports a
    ``tensorrt_rtx_bindings.plugin`` that does not exist, and the bindings lack the AOT build
    interface): an ``--attention plugin`` export says so in its engine record and exits 1."""
    if _rtx_plugin_api():
        pytest.skip("this TensorRT-RTX ships tensorrt_rtx.plugin: the refusal no longer applies")
    with pytest.raises(ImportError, match="tensorrt_rtx_bindings.plugin"):
        trt_plugin.register("tensorrt_rtx")
    from rsd_deploy.export.cli import main

    code = main(["--preset", "tiny-rsd", "--precision", "fp32", "--attention", "plugin", "--stages", "generator",
                 "--engine", "tensorrt-rtx", "--compute-capability", "sm89", "--lr-size", "64", "--batch", "1", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "report.json").read_text())
    (engine,) = report["tensorrt"]["engines"]
    assert code == 1 and "no quickly deployable plugin API" in engine["error"]


def _build_engine(onnx_bytes: bytes):
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        raise RuntimeError("; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    serialized = builder.build_serialized_network(network, config)
    assert serialized is not None, "engine build failed"
    return trt.Runtime(logger).deserialize_cuda_engine(serialized)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_engine_with_aot_plugin_matches_reference(dtype, tmp_path, rel):
    if importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available():
        pytest.skip("needs TensorRT >= 10.9 and a CUDA GPU (engine build with the AOT plugin)")
    from rsd_deploy.kernels import onnx_custom_op as plugin_op
    from rsd_deploy.models.swin import SwinTransformerStage

    trt_plugin.register()
    torch.manual_seed(0)
    stage = SwinTransformerStage(64, 192, 6, 8, 2, 32, 2.0, False).eval().to(dtype)
    x = torch.randn(2, 64, 32, 32, dtype=dtype)
    with plugin_op.plugin_attention(stage):
        program = torch.onnx.export(stage, (x,), dynamo=True, verbose=False, **plugin_op.export_kwargs(aot=True))
    engine = _build_engine(program.model_proto.SerializeToString())
    context = engine.create_execution_context()
    stage, x = stage.cuda(), x.cuda()
    with torch.no_grad():
        want = stage(x)
    out = torch.empty_like(want)
    import tensorrt as trt

    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        context.set_tensor_address(name, (x if is_input else out).data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    assert rel(out, want) < (2e-3 if dtype == torch.float16 else 1e-4)
