"""PyTorch -> ONNX for one stage: dynamic batch and LR size, optimised, checked, written atomically.

Exporter choice. ``torch.onnx.export(dynamo=True)`` produces correct graphs for every stage
(checked against PyTorch at several sizes), but its symbolic-shape reasoning (sympy guards on the
Swin window partition / reverse views) takes minutes per graph even for the tiny test model on
a 2-core CPU, and longer for the real one (numbers in docs/export.md). The TorchScript exporter
(``dynamo=False``, deprecated) exports the same graphs in seconds with the same parity, because
the model computes every size-dependent tensor (shift masks, window counts) from runtime shapes.
So ``"torchscript"`` is the default and ``"dynamo"`` stays selectable (and tested) for when the
TorchScript exporter is removed.

After export the graph is simplified with onnxslim (constant folding, dead-code elimination,
shape inference, op fusions) and named dims are restored to the stage description's names.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import warnings
from pathlib import Path

import onnx
import torch

from rsd_deploy.atomic import atomic_path
from rsd_deploy.errors import one_line
from rsd_deploy.chain import SIZE_MULTIPLE
from rsd_deploy.pipeline import SRPipeline

from .stages import ShapeRange, StageSpec

OPSET = 19  # TensorRT's diffusion demo exports UNets at opset 19; ModelOpt needs >= 19 for fp16 Q/DQ
EXPORTERS = ("torchscript", "dynamo")
ATTENTION_MODES = ("reference", "plugin")  # plugin: one custom node per window attention (TensorRT only)
METADATA_PREFIX = "rsd_deploy."


class ExportError(RuntimeError):
    """An export that failed; the message is one line naming the stage."""


def _example_size(exporter: str, shapes: ShapeRange) -> tuple[int, int, int]:
    # dynamo specialises a dynamic dim whose example value is 1 (batch 1, or one 64-px block),
    # so its example sits inside the range away from 1; the TorchScript tracer keeps every dim
    # symbolic and traces the cheapest example. Height != width where the range allows, so a
    # mix-up of the two axes cannot pass the parity checks.
    if exporter != "dynamo":
        return 1, SIZE_MULTIPLE, 2 * SIZE_MULTIPLE

    def inside(value, bounds):
        return min(max(value, bounds[0]), bounds[2])

    return inside(2, shapes.batch), inside(2 * SIZE_MULTIPLE, shapes.height), inside(3 * SIZE_MULTIPLE, shapes.width)


def _dynamo_shapes(stage: StageSpec, shapes: ShapeRange, module: torch.nn.Module) -> tuple:
    from torch.export import Dim

    batch = Dim("batch", min=shapes.batch[0], max=shapes.batch[2])
    blocks_h = Dim("height_blocks", min=shapes.height[0] // SIZE_MULTIPLE, max=shapes.height[2] // SIZE_MULTIPLE)
    blocks_w = Dim("width_blocks", min=shapes.width[0] // SIZE_MULTIPLE, max=shapes.width[2] // SIZE_MULTIPLE)
    dims = {}
    for spec in stage.inputs:
        if spec.aligned:
            unit = SIZE_MULTIPLE * spec.scale
            dims[spec.name] = {0: batch, 2: unit * blocks_h, 3: unit * blocks_w}
        else:
            dims[spec.name] = {0: batch, 2: Dim("height_lr", min=1, max=shapes.height[2]), 3: Dim("width_lr", min=1, max=shapes.width[2])}
    per_input = tuple(dims[spec.name] for spec in stage.inputs)
    takes_varargs = any(p.kind == p.VAR_POSITIONAL for p in inspect.signature(module.forward).parameters.values())
    return (per_input,) if takes_varargs else per_input  # positional, in input order


def _name_dims(model: onnx.ModelProto, stage: StageSpec) -> None:
    """Graph inputs/outputs get the description's dim names (batch, height, 4*height, ...)."""
    specs = {spec.name: spec for spec in (*stage.inputs, *stage.outputs)}
    for value in (*model.graph.input, *model.graph.output):
        spec = specs[value.name]
        for dim, symbol in zip(value.type.tensor_type.shape.dim, spec.symbolic_shape()):
            if isinstance(symbol, str):
                dim.dim_param = symbol
            else:
                dim.dim_value = symbol


def _simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(model)


def export_stage(
    stage: StageSpec,
    pipe: SRPipeline,
    path: str | Path,
    shapes: ShapeRange | None = None,
    exporter: str = "torchscript",
    attention: str = "reference",
) -> Path:
    """Export ``stage`` of ``pipe`` to ``path`` (fp32), checked with ``onnx.checker``.

    ``attention="plugin"`` turns each window attention into one ``rsd_deploy::window_attention``
    node for the TensorRT plugin of :mod:`rsd_deploy.kernels.trt_plugin` (see
    :mod:`rsd_deploy.kernels.onnx_custom_op`); such a graph runs in TensorRT only."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    shapes = shapes or ShapeRange()
    path = Path(path)
    module = stage.module(pipe)
    batch, height, width = _example_size(exporter, shapes)
    args = tuple(stage.sample_inputs(batch, height, width).values())
    extra, attention_mode = {}, contextlib.nullcontext()
    if attention == "plugin":
        from rsd_deploy.kernels import onnx_custom_op

        extra = onnx_custom_op.export_kwargs(exporter=exporter)
        attention_mode = onnx_custom_op.plugin_attention(pipe.unet)
    with atomic_path(path) as tmp, warnings.catch_warnings(), attention_mode:
        warnings.simplefilter("ignore")  # exporter deprecation / tracer warnings: checked below by parity
        try:
            if exporter == "dynamo":
                program = torch.onnx.export(
                    module, args, input_names=list(stage.input_names), output_names=list(stage.output_names),
                    opset_version=OPSET, dynamo=True, dynamic_shapes=_dynamo_shapes(stage, shapes, module), optimize=True, **extra,
                )
                model = program.model_proto
            else:
                axes = {spec.name: {0: "batch", 2: spec.symbolic_shape()[2], 3: spec.symbolic_shape()[3]} for spec in (*stage.inputs, *stage.outputs)}
                torch.onnx.export(
                    module, args, str(tmp), input_names=list(stage.input_names), output_names=list(stage.output_names),
                    opset_version=OPSET, dynamo=False, dynamic_axes=axes, do_constant_folding=True, **extra,
                )
                model = onnx.load(str(tmp))
        except Exception as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ExportError(f"{stage.name}: ONNX export ({exporter}) failed: {one_line(first)}") from error
        model = _simplify(model)
        _name_dims(model, stage)
        # scale and prior scale (kappa sqrt(eta_T)): what a server needs besides the graphs' own dims
        set_metadata(model, stage=stage.name, precision="fp32", shape_range=shapes.to_json(), source=pipe.description, exporter=exporter,
                     attention=attention, scale=pipe.codec.scale, prior_scale=pipe.schedule.prior_scale)
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))
    return path


def set_metadata(model: onnx.ModelProto, **values) -> None:
    """Store values (JSON) as ``rsd_deploy.<key>`` metadata_props, replacing earlier ones."""
    keys = {METADATA_PREFIX + key for key in values}
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in keys]
    del model.metadata_props[:]
    for key, value in kept:
        model.metadata_props.add(key=key, value=value)
    for key, value in values.items():
        model.metadata_props.add(key=METADATA_PREFIX + key, value=json.dumps(value))


def read_metadata(path_or_model: str | Path | onnx.ModelProto) -> dict:
    """The ``rsd_deploy.*`` metadata of an exported graph (values decoded from JSON)."""
    model = path_or_model if isinstance(path_or_model, onnx.ModelProto) else onnx.load(str(path_or_model), load_external_data=False)
    return {p.key[len(METADATA_PREFIX):]: json.loads(p.value) for p in model.metadata_props if p.key.startswith(METADATA_PREFIX)}


def graph_signature(path: str | Path) -> dict:
    """Input / output names, element types and dims (names for dynamic axes) of an ONNX file."""
    model = onnx.load(str(path), load_external_data=False)

    def describe(values):
        return [
            {
                "name": v.name,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            }
            for v in values
        ]

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}
