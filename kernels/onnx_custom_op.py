"""ONNX export mode in which every window attention is one custom node for a TensorRT plugin.

The default export keeps standard ONNX ops (the ``reference`` backend traces to Reshape /
Transpose / MatMul / Softmax ...). In this mode each Swin block's window attention becomes a
single node that TensorRT's ONNX parser maps onto the plugin of :mod:`rsd_deploy.kernels.
trt_plugin` (which runs the fused Triton kernel, compiled ahead of time into the engine):

- ``op_type`` = ``window_attention`` (the plugin name), domain ``rsd_deploy`` (TensorRT ignores
  the domain; it looks plugins up by ``op_type`` and the ``plugin_namespace`` attribute);
- inputs ``qkv`` (B, 3C, H, W) and ``bias`` (heads, N, N), output (B, C, H, W), one dtype;
- attributes ``plugin_namespace="rsd_deploy"``, ``plugin_version="1"``, ``aot=1`` (use the AOT
  implementation, so the engine runs from C++ / trtexec without Python), and the op's own
  ``num_heads``, ``window``, ``shift`` (ints) and ``scale`` (float).

How the export code uses it::

    from rsd_deploy.kernels import onnx_custom_op

    with onnx_custom_op.plugin_attention(unet):          # every WindowAttention -> "trt_plugin"
        program = torch.onnx.export(                     # dynamo exporter (torch >= 2.9)
            unet, args, dynamo=True, **onnx_custom_op.export_kwargs(), ...)
        # or the TorchScript exporter:
        torch.onnx.export(unet, args, path, dynamo=False,
                          **onnx_custom_op.export_kwargs(exporter="torchscript"), ...)

``export_kwargs(aot=True, exporter="dynamo")`` returns the extra keyword arguments
(``custom_translation_table``, or ``custom_opsets`` for TorchScript);
``plugin_attention`` restores each block's previous backend on exit. The nodes survive
onnxslim. The
resulting graph only runs where the plugin is registered (TensorRT with
``rsd_deploy.kernels.trt_plugin.register()`` called at build time); ONNX Runtime cannot run it.
:func:`plugin_nodes` lists the custom nodes of a model for checks.

Behind the scenes the ``trt_plugin`` backend calls ``torch.ops.rsd_deploy.window_attention``, a
``torch.library`` custom op (so ``torch.export`` keeps it as one opaque node). Eagerly it runs the
Triton kernel on CUDA and the reference elsewhere; it has no autograd (export / inference only).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import onnx
import torch
from onnx.defs import OpSchema

from rsd_deploy.models.attention import reference_window_attention, register_attention_backend

PLUGIN_NAMESPACE = "rsd_deploy"
PLUGIN_NAME = "window_attention"
PLUGIN_VERSION = "1"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
ONNX_DOMAIN = "rsd_deploy"
BACKEND_NAME = "trt_plugin"

__all__ = [
    "PLUGIN_NAMESPACE",
    "PLUGIN_NAME",
    "PLUGIN_VERSION",
    "PLUGIN_ID",
    "ONNX_DOMAIN",
    "BACKEND_NAME",
    "export_kwargs",
    "plugin_attention",
    "plugin_nodes",
    "plugin_window_attention",
]


@torch.library.custom_op(f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}", mutates_args=())
def _window_attention_op(
    qkv: torch.Tensor, bias: torch.Tensor, num_heads: int, window: int, shift: int, scale: float
) -> torch.Tensor:
    if qkv.is_cuda:
        from .window_attention import window_attention

        return window_attention(qkv, bias, num_heads=num_heads, window=window, shift=shift, scale=scale)
    return reference_window_attention(qkv, bias, num_heads=num_heads, window=window, shift=shift, scale=scale)


@_window_attention_op.register_fake
def _(qkv, bias, num_heads, window, shift, scale):
    b, c3, h, w = qkv.shape
    return qkv.new_empty((b, c3 // 3, h, w))


def plugin_window_attention(
    qkv: torch.Tensor, bias: torch.Tensor, *, num_heads: int, window: int, shift: int, scale: float
) -> torch.Tensor:
    """The ``"trt_plugin"`` attention backend: the custom op, one node per call in an export."""
    # the plugin takes one dtype for all I/O, as the official block casts the bias to the logits'
    return torch.ops.rsd_deploy.window_attention(qkv, bias.to(qkv.dtype), num_heads, window, shift, float(scale))


register_attention_backend(BACKEND_NAME, plugin_window_attention)


def _schema() -> OpSchema:
    attr = OpSchema.AttrType
    return OpSchema(
        PLUGIN_NAME,
        ONNX_DOMAIN,
        1,
        doc="Fused shifted-window attention (TensorRT plugin rsd_deploy::window_attention).",
        inputs=[OpSchema.FormalParameter("qkv", "T"), OpSchema.FormalParameter("bias", "T")],
        outputs=[OpSchema.FormalParameter("out", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "I/O dtype")],
        attributes=[
            OpSchema.Attribute("plugin_namespace", attr.STRING, "TensorRT plugin namespace"),
            OpSchema.Attribute("plugin_version", attr.STRING, "TensorRT plugin version"),
            OpSchema.Attribute("aot", attr.INT, "1: use the plugin's ahead-of-time implementation"),
            OpSchema.Attribute("num_heads", attr.INT, "attention heads"),
            OpSchema.Attribute("window", attr.INT, "window side (tokens per window = window^2)"),
            OpSchema.Attribute("shift", attr.INT, "cyclic shift, 0 for plain windows"),
            OpSchema.Attribute("scale", attr.FLOAT, "logit scale, head_dim^-0.5"),
        ],
    )


def _translation(aot: bool):
    # Imported here so that importing this module (to register the backend) costs no onnxscript.
    from onnxscript import values

    op = values.Op(values.Opset(ONNX_DOMAIN, 1), PLUGIN_NAME, op_schema=_schema())

    def window_attention_onnx(qkv, bias, num_heads: int, window: int, shift: int, scale: float):
        return op(
            qkv,
            bias,
            plugin_namespace=PLUGIN_NAMESPACE,
            plugin_version=PLUGIN_VERSION,
            aot=int(aot),
            num_heads=num_heads,
            window=window,
            shift=shift,
            scale=scale,
        )

    return window_attention_onnx


def _torchscript_symbolic(aot: bool):
    from torch.onnx import symbolic_helper

    def window_attention_symbolic(g, qkv, bias, num_heads, window, shift, scale):
        const = symbolic_helper._get_const
        out = g.op(
            f"{ONNX_DOMAIN}::{PLUGIN_NAME}",
            qkv,
            bias,
            plugin_namespace_s=PLUGIN_NAMESPACE,
            plugin_version_s=PLUGIN_VERSION,
            aot_i=int(aot),
            num_heads_i=const(num_heads, "i", "num_heads"),
            window_i=const(window, "i", "window"),
            shift_i=const(shift, "i", "shift"),
            scale_f=const(scale, "f", "scale"),
        )
        return out.setType(qkv.type().with_sizes(None))  # dtype of qkv; C differs, left symbolic

    return window_attention_symbolic


def export_kwargs(aot: bool = True, exporter: str = "dynamo") -> dict:
    """Extra keyword arguments for ``torch.onnx.export`` in the plugin mode.

    exporter: ``"dynamo"`` (``dynamo=True``) returns ``{"custom_translation_table": ...}``;
    ``"torchscript"`` (``dynamo=False``) registers the op's symbolic function with the TorchScript
    exporter (process-wide, the last call's ``aot`` wins) and returns ``{"custom_opsets": ...}``.
    ``aot=False`` marks the nodes for the plugin's Python (JIT) implementation instead, which
    needs the Python plugin definitions when the engine runs.
    """
    if exporter == "dynamo":
        return {"custom_translation_table": {torch.ops.rsd_deploy.window_attention.default: _translation(aot)}}
    if exporter == "torchscript":
        torch.onnx.register_custom_op_symbolic(f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}", _torchscript_symbolic(aot), 1)
        return {"custom_opsets": {ONNX_DOMAIN: 1}}
    raise ValueError(f"exporter must be 'dynamo' or 'torchscript', got {exporter!r}")


@contextlib.contextmanager
def plugin_attention(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Route every window attention of ``model`` through the custom op for the export, then
    restore each block's previous backend."""
    from rsd_deploy.models.swin import WindowAttention

    blocks = [m for m in model.modules() if isinstance(m, WindowAttention)]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no WindowAttention blocks to export as plugins")
    previous = [m.backend for m in blocks]
    for m in blocks:
        m.backend = BACKEND_NAME
    try:
        yield model
    finally:
        for m, name in zip(blocks, previous):
            m.backend = name


def plugin_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The window-attention plugin nodes of an ONNX model (main graph)."""
    return [n for n in model.graph.node if n.op_type == PLUGIN_NAME and n.domain == ONNX_DOMAIN]
