"""TensorRT plugin ``rsd_deploy::window_attention``: the fused Triton kernel inside an engine.

Built on TensorRT's Python "quickly deployable plugins" (``tensorrt.plugin``, TensorRT >= 10.9
for AOT through the ONNX parser):

- ``@trtp.register``: output = qkv's shape with C = 3C / 3, same dtype;
- ``@trtp.autotune``: fp32, fp16 or bf16, one dtype for all I/O, linear (NCHW) format;
- ``@trtp.aot_impl``: :func:`compile_kernel` compiles :func:`~rsd_deploy.kernels.window_attention.
  window_attention_kernel` ahead of time and hands TensorRT its PTX, the launch grid as symbolic
  shape expressions and the two int32 scalars (window counts along H and W). The kernel is baked
  into the engine, which then runs from C++ / trtexec with no Python;
- ``@trtp.impl``: the same kernel launched from Python (nodes exported with ``aot=0``).

Call :func:`register` once in the process that builds the engine (and, for ``aot=0`` engines,
in the one that runs it), before parsing the ONNX file of
:mod:`rsd_deploy.kernels.onnx_custom_op`. TensorRT is imported only there; without it,
:func:`register` raises an ImportError that says what is missing. :func:`compile_kernel` needs
Triton only, so the AOT artifact (PTX with exactly the parameters TensorRT passes) is checked on
machines without TensorRT or a GPU too.
"""

from __future__ import annotations

import ctypes
import importlib
import re
from dataclasses import dataclass

from .onnx_custom_op import PLUGIN_ID

__all__ = ["register", "compile_kernel", "AotKernel", "PLUGIN_ID"]

# Kernel parameters TensorRT passes, in order: inputs (qkv, bias), int32 extras (n_wy, n_wx), outputs.
_TRT_PARAMS = 5
_TRITON_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class AotKernel:
    name: str
    ptx: str
    num_warps: int
    shared: int  # dynamic shared memory, bytes


def _driver_ptx_version() -> int | None:
    """Highest PTX ISA the installed CUDA driver can JIT, or None without a driver.

    TensorRT JIT-compiles the PTX through the driver, so PTX newer than the driver (Triton's
    bundled ptxas is often newer) would make the engine build fail."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        version = ctypes.c_int()
        if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
            return None
    except OSError:
        return None
    from triton.backends.nvidia.compiler import ptx_get_version

    return ptx_get_version(f"{version.value // 1000}.{(version.value % 1000) // 10}")


def _default_ptx_version(arch: int) -> int | None:
    """The lower of what Triton's ptxas emits for ``arch`` and what the driver can JIT; None
    (Triton's choice) without a driver."""
    driver = _driver_ptx_version()
    if driver is None:
        return None
    from triton.backends.nvidia.compiler import CUDAOptions, get_ptx_version_from_options

    return min(driver, get_ptx_version_from_options(CUDAOptions(), arch))


def _strip_trailing_params(ptx: str, name: str, keep: int) -> str:
    """Drop the entry parameters after the first ``keep`` (Triton >= 3.3 appends global / profile
    scratch pointers that TensorRT does not pass); refuses if the body reads any of them."""
    head = re.search(rf"\.entry\s+{re.escape(name)}\s*\(([^)]*)\)", ptx)
    if head is None:
        raise RuntimeError(f"entry {name} not found in the PTX")
    params = [p.strip() for p in head.group(1).split(",") if p.strip()]
    if len(params) < keep:
        raise RuntimeError(f"kernel {name} has {len(params)} parameters, expected at least {keep}")
    body = ptx[head.end() :]
    for param in params[keep:]:
        param_name = param.split()[-1]
        if re.search(rf"\b{re.escape(param_name)}\b", body):
            raise RuntimeError(f"kernel {name} uses its scratch parameter {param_name}; cannot drop it")
    new_head = f".entry {name}(\n\t" + ",\n\t".join(params[:keep]) + "\n)"
    return ptx[: head.start()] + new_head + ptx[head.end() :]


def compile_kernel(
    dtype: str,
    *,
    num_heads: int,
    head_dim: int,
    window: int,
    shift: int,
    scale: float,
    target=None,
    ptx_version: int | None = None,
) -> AotKernel:
    """Compile the window-attention kernel for one Swin block configuration, for TensorRT.

    dtype: "float32" | "float16" | "bfloat16" (all I/O). target: a ``triton.backends.compiler.
    GPUTarget``; default the current GPU. ptx_version: PTX ISA as Triton numbers it (e.g. 90 for
    9.0); default the lower of what Triton's ptxas and the installed driver support.
    """
    import torch
    import triton

    from .window_attention import INTERPRET, default_num_warps, kernel_meta, window_attention_kernel

    if INTERPRET:
        # Triton's own library functions (tl.max, ...) are interpreted too then
        raise RuntimeError("ahead-of-time compilation needs TRITON_INTERPRET unset when rsd_deploy.kernels is imported")
    if dtype not in _TRITON_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_TRITON_DTYPES)}, got {dtype!r}")
    ty = _TRITON_DTYPES[dtype]
    meta = kernel_meta(num_heads, head_dim, window, shift, scale)
    signature = {"qkv_ptr": f"*{ty}", "bias_ptr": f"*{ty}", "n_wy": "i32", "n_wx": "i32", "out_ptr": f"*{ty}"}
    signature.update({key: "constexpr" for key in meta})
    # TensorRT hands plugins 256-byte aligned buffers, so 16-byte pointer alignment is safe to
    # assume (it lets the bias and the window rows load as 16-byte vectors).
    aligned = [["tt.divisibility", 16]]
    src = triton.compiler.ASTSource(
        fn=window_attention_kernel,
        signature=signature,
        constexprs=meta,
        attrs={(0,): aligned, (1,): aligned, (4,): aligned},
    )
    if target is None:
        target = triton.runtime.driver.active.get_current_target()
    options = {}
    if ptx_version is None:
        ptx_version = _default_ptx_version(target.arch)
    if ptx_version is not None:
        options["ptx_version"] = ptx_version
    options["num_warps"] = default_num_warps(getattr(torch, dtype))
    compiled = triton.compile(src, target=target, options=options)
    md = compiled.metadata
    if md.global_scratch_size or getattr(md, "profile_scratch_size", 0):
        raise RuntimeError("the kernel needs Triton scratch memory, which a TensorRT AOT plugin cannot provide")
    ptx = _strip_trailing_params(compiled.asm["ptx"], md.name, _TRT_PARAMS)
    return AotKernel(name=md.name, ptx=ptx, num_warps=md.num_warps, shared=md.shared)


_REGISTERED: set[str] = set()


def register(module: str = "tensorrt") -> None:
    """Register the plugin with TensorRT (``module``: ``tensorrt``, or ``tensorrt_rtx`` for
    TensorRT for RTX); idempotent per module."""
    if module in _REGISTERED:
        return
    try:
        trt = importlib.import_module(module)
        trtp = importlib.import_module(f"{module}.plugin")
    except ImportError as exc:
        if module == "tensorrt":
            raise ImportError(
                "the window-attention TensorRT plugin needs TensorRT >= 10.9 with its Python package "
                "(`tensorrt`, providing `tensorrt.plugin`); install it from NVIDIA's index "
                "(pip install tensorrt --extra-index-url https://pypi.nvidia.com) on a machine with a GPU"
            ) from exc
        raise ImportError(
            f"{module} has no quickly deployable plugin API here ({type(exc).__name__}: {exc}); "
            "the window-attention plugin needs `tensorrt.plugin` (TensorRT >= 10.9), see docs/kernels.md"
        ) from exc
    _define(trt, trtp)
    _REGISTERED.add(module)


def _define(trt, trtp) -> None:
    from typing import List, Tuple, Union

    dtypes = {trt.float32: "float32", trt.float16: "float16", trt.bfloat16: "bfloat16"}

    @trtp.register(PLUGIN_ID)
    def _desc(
        qkv: trtp.TensorDesc, bias: trtp.TensorDesc, num_heads: int, window: int, shift: int, scale: float
    ) -> trtp.TensorDesc:
        out = qkv.like()
        out.shape_expr[1] = qkv.shape_expr[1] // 3
        return out

    @trtp.autotune(PLUGIN_ID)
    def _autotune(qkv: trtp.TensorDesc, bias: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
        # the i-th choice of every position goes together: one dtype for qkv, bias and out
        return [trtp.AutoTuneCombination("FP32|FP16|BF16, FP32|FP16|BF16, FP32|FP16|BF16", "LINEAR")]

    @trtp.aot_impl(PLUGIN_ID)
    def _aot(
        qkv: trtp.TensorDesc,
        bias: trtp.TensorDesc,
        num_heads: int,
        window: int,
        shift: int,
        scale: float,
        outputs: Tuple[trtp.TensorDesc],
        tactic: int,
    ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
        channels = qkv.shape_expr[1]
        if not channels.is_constant:
            raise ValueError("window_attention plugin: the qkv channel count must be static")
        if qkv.dtype not in dtypes or bias.dtype != qkv.dtype:
            raise TypeError(f"window_attention plugin: unsupported dtypes qkv={qkv.dtype}, bias={bias.dtype}")
        kernel = compile_kernel(
            dtypes[qkv.dtype],
            num_heads=num_heads,
            head_dim=channels.constant_value // 3 // num_heads,
            window=window,
            shift=shift,
            scale=scale,
        )
        shape = qkv.shape_expr
        n_wy, n_wx = shape[2] // window, shape[3] // window
        launch = trtp.KernelLaunchParams()
        launch.grid_x = shape[0] * num_heads * n_wy * n_wx  # windows fastest, as the kernel decodes it
        launch.block_x = kernel.num_warps * 32
        launch.shared_mem = kernel.shared
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(n_wy), trtp.SymInt32(n_wx)])
        return kernel.name, kernel.ptx, launch, extra

    @trtp.impl(PLUGIN_ID)
    def _impl(
        qkv: trtp.Tensor,
        bias: trtp.Tensor,
        num_heads: int,
        window: int,
        shift: int,
        scale: float,
        outputs: Tuple[trtp.Tensor],
        stream: int,
    ) -> None:
        import torch

        from .window_attention import window_attention

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            window_attention(
                torch.as_tensor(qkv, device="cuda"),
                torch.as_tensor(bias, device="cuda"),
                num_heads=num_heads,
                window=window,
                shift=shift,
                scale=scale,
                out=torch.as_tensor(outputs[0], device="cuda"),
            )
