"""Reduced-precision graphs: fp16 with explicit fp32 islands, and INT8 with explicit Q/DQ.

TensorRT 10.12+ / 11 builds strongly typed networks, so precision is decided here, in the ONNX
file, not by builder flags:

- fp16: ModelOpt AutoCast (``modelopt.onnx.autocast.convert_to_mixed_precision``) converts the
  graph to fp16 and inserts Casts around the nodes that must stay fp32: normalisations (GroupNorm
  exports as InstanceNormalization), softmax, mean reductions, the sinusoidal time embedding,
  and the VQ codebook search (distance + ArgMin: fp16 rounding changes which code wins). AutoCast
  also keeps in fp32 any node whose values exceed fp16's safe range on the calibration inputs.
- INT8 (and FP8 E4M3, the same recipe): ModelOpt ONNX PTQ (``modelopt.onnx.quantization.quantize``) inserts symmetric Q/DQ pairs
  (zero point 0, as TensorRT wants) with scales calibrated on real images through ONNX Runtime's
  CPU EP. Left unquantized, as NVIDIA's diffusion demo does: time embedding and FiLM layers,
  first / last convolutions, attention matmuls (q k^T, attn v), norms, softmax, the codebook
  search. Non-quantized ops stay fp32 by default so the graph runs and is measured in ONNX
  Runtime on CPU; ``high_precision="fp16"`` gives the faster TensorRT variant.

Graph inputs and outputs stay float32 in every precision, so all variants share one signature.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import logging
import re
import tempfile
from typing import Iterator
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from rsd_deploy.atomic import atomic_path

from .onnx_export import read_metadata, set_metadata

# fp16: op types that overflow or lose the result in fp16
FP32_OP_TYPES = (
    "GroupNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "Softmax",
    "ReduceMean",
    "ArgMin",
    "Sin",
    "Cos",
)
FP32_NODE_PATTERNS = (r".*time_embed.*",)

# INT8: node-name patterns left unquantized (names follow the torch module paths)
INT8_EXCLUDED_PATTERNS = (
    r".*time_embed.*",  # time embedding MLP
    r".*emb_layers.*",  # FiLM scale/shift from the time embedding
    r".*/input_blocks\.0/.*",  # UNet first conv (sees the noise map and the LR image)
    r".*/out/out\.2/.*",  # UNet last conv (writes x0)
    r".*/attn/MatMul.*",  # window attention q k^T and attn @ v
    r".*/attentions\.\d+/MatMul.*",  # VQ mid-block attention BMMs
    r".*/(encoder|decoder)/conv_(in|out)/.*",  # VQ first / last convs
    r".*/(post_)?quant_conv/.*",  # latent projections
)
INT8_EXCLUDED_OP_TYPES = ("Softmax", "InstanceNormalization", "GroupNormalization", "LayerNormalization")
CALIBRATION_METHODS = ("entropy", "max")


def codebook_search_nodes(model: onnx.ModelProto, depth: int = 4) -> list[str]:
    """Names of the VQ nearest-code search nodes: ArgMin and what feeds it within ``depth``
    producers (|z|^2 + |e|^2 - 2 z.e). Found by structure, so it works in every graph."""
    producer = {out: node for node in model.graph.node for out in node.output}
    found: set[str] = set()
    frontier = [node for node in model.graph.node if node.op_type == "ArgMin"]
    for _ in range(depth + 1):
        next_frontier = []
        for node in frontier:
            if node.name in found:
                continue
            found.add(node.name)
            next_frontier += [producer[i] for i in node.input if i in producer and producer[i].op_type not in ("Shape", "Constant")]
        frontier = next_frontier
    return sorted(found)


class _Collected(logging.Handler):
    """Keeps the distinct messages of the records it sees, in order."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = " ".join(record.getMessage().split())
        if message not in self.messages:
            self.messages.append(message)


@contextlib.contextmanager
def _converter_output() -> Iterator[list[str]]:
    """ModelOpt logs every node at INFO, prints each warning twice (its own handler and the root
    logger's), and its calibration draws a progress bar per graph pass; the converters it calls
    warn through the root logger. Inside the block all of that is collected instead: the list
    yielded gets each distinct warning once, for the summary."""
    collected = _Collected()
    # every modelopt logger: some carry their own console handler (modelopt.onnx's writes to the
    # stdout it saw when it was made, which redirect_stdout does not reach)
    names = [name for name in list(logging.root.manager.loggerDict) if name.startswith("modelopt.")]
    loggers = [logging.getLogger(), logging.getLogger("modelopt"), *map(logging.getLogger, names)]
    saved = [(logger, logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers[:] = [collected]
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    try:  # progress bars go to stderr, prints to stdout: neither reaches the console
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield collected.messages
    finally:
        for logger, handlers, level, propagate in saved:
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate


def convert_fp16(fp32_path: str | Path, out_path: str | Path, calibration: dict[str, np.ndarray]) -> dict:
    """fp16 graph with fp32 islands (see the module docstring). ``calibration``: one batch of
    real stage inputs (name -> array); AutoCast runs the fp32 graph on it in ONNX Runtime to find
    nodes whose values would overflow fp16. Returns a summary of what stayed fp32."""
    from modelopt.onnx.autocast import convert_to_mixed_precision

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    source = onnx.load(str(fp32_path))
    keep_nodes = [*FP32_NODE_PATTERNS, *(re.escape(n) for n in codebook_search_nodes(source))]
    with tempfile.TemporaryDirectory() as scratch, _converter_output() as warnings:
        data = Path(scratch) / "calibration.npz"
        np.savez(data, **calibration)
        model = convert_to_mixed_precision(
            str(fp32_path),
            low_precision_type="fp16",
            op_types_to_exclude=list(FP32_OP_TYPES),
            nodes_to_exclude=keep_nodes,
            keep_io_types=True,
            calibration_data=str(data),
        )
    summary = {**fp16_summary(model), "converter_warnings": warnings}
    _keep_interface(model, source)
    _drop_intermediate_shapes(model)
    canonical_order(model)
    set_metadata(model, **{**read_metadata(source), "precision": "fp16"})
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))
    return summary


def canonical_order(model: onnx.ModelProto) -> None:
    """Put nodes in a topological order that depends on their names only, and value infos in
    name order. The converters insert nodes in set / dict order, which changes with
    PYTHONHASHSEED; the same graph must give the same bytes, or every re-export misses the
    engine cache."""
    graph = model.graph
    produced = {out: node.name for node in graph.node for out in node.output}
    waiting = {node.name: {produced[i] for i in node.input if i in produced} for node in graph.node}
    consumers: dict[str, list[str]] = {}
    for name, needs in waiting.items():
        for need in needs:
            consumers.setdefault(need, []).append(name)
    by_name = {node.name: node for node in graph.node}
    if len(by_name) != len(graph.node):
        raise ValueError("canonical_order needs unique node names")
    ready = [name for name, needs in waiting.items() if not needs]
    heapq.heapify(ready)
    ordered = []
    while ready:
        name = heapq.heappop(ready)
        ordered.append(by_name[name])
        for consumer in consumers.get(name, ()):
            waiting[consumer].discard(name)
            if not waiting[consumer]:
                heapq.heappush(ready, consumer)
    if len(ordered) != len(graph.node):
        raise ValueError("graph has a cycle")
    del graph.node[:]
    graph.node.extend(ordered)
    infos = sorted(graph.value_info, key=lambda value: value.name)
    del graph.value_info[:]
    graph.value_info.extend(infos)


def _keep_interface(model: onnx.ModelProto, source: onnx.ModelProto) -> None:
    """Give the converted graph's inputs and outputs the source graph's types and dim names: the
    converters' shape inference renames dims (an encoder output came back as
    ``((4*height//2)//2)`` instead of ``height``), and every reader of an rsd-export graph checks
    them against the stage description."""
    types = {value.name: value.type for value in (*source.graph.input, *source.graph.output)}
    for value in (*model.graph.input, *model.graph.output):
        if value.name in types:
            value.type.CopyFrom(types[value.name])


def _drop_intermediate_shapes(model: onnx.ModelProto) -> None:
    """Forget the intermediate shapes AutoCast's shape inference recorded (element types stay):
    some are wrong for batch > 1, and ONNX Runtime's memory planner trusts them."""
    for value in model.graph.value_info:
        value.type.tensor_type.ClearField("shape")


def fp16_summary(model: onnx.ModelProto) -> dict:
    """Which compute nodes of an fp16 graph run in fp32 (their outputs are float32)."""
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.output)}
    fp32_ops: Counter = Counter()
    fp16_ops = 0
    for node in model.graph.node:
        if node.op_type in ("Cast", "Constant", "Shape") or not node.output:
            continue
        elem = types.get(node.output[0])
        if elem == onnx.TensorProto.FLOAT:
            fp32_ops[node.op_type] += 1
        elif elem == onnx.TensorProto.FLOAT16:
            fp16_ops += 1
    casts = sum(1 for node in model.graph.node if node.op_type == "Cast")
    return {"fp16_nodes": fp16_ops, "fp32_nodes_by_type": dict(fp32_ops.most_common()), "casts": casts}


QDQ_MODES = ("int8", "fp8")


def quantize_qdq(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: dict[str, np.ndarray],
    mode: str = "int8",
    method: str = "entropy",
    high_precision: str = "fp32",
) -> dict:
    """An explicit Q/DQ graph (``mode`` int8, or fp8 E4M3) calibrated on ``calibration`` (name ->
    array, batch along axis 0), with the same ops left unquantized in both modes. Returns a
    summary: Q/DQ counts and the quantized compute ops."""
    from modelopt.onnx.quantization import quantize

    if mode not in QDQ_MODES:
        raise ValueError(f"Q/DQ mode must be one of {QDQ_MODES}, got {mode!r}")
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
    if high_precision not in ("fp32", "fp16"):
        raise ValueError(f"high_precision must be fp32 or fp16, got {high_precision!r}")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    source = onnx.load(str(fp32_path))
    codebook = codebook_search_nodes(source)
    exclude = [*INT8_EXCLUDED_PATTERNS, *(re.escape(n) for n in codebook)]
    with tempfile.TemporaryDirectory() as scratch, _converter_output() as warnings:
        quantized = Path(scratch) / f"model.{mode}.onnx"
        quantize(
            str(fp32_path),
            quantize_mode=mode,
            calibration_data=calibration,
            calibration_method=method,
            calibration_eps=["cpu"],
            op_types_to_exclude=list(INT8_EXCLUDED_OP_TYPES),
            nodes_to_exclude=exclude,
            high_precision_dtype=high_precision,
            output_path=str(quantized),
            log_level="WARNING",
        )
        model = onnx.load(str(quantized))
    _keep_interface(model, source)
    set_metadata(model, **{**read_metadata(source), "precision": mode, mode: {"calibration_method": method, "high_precision": high_precision}})
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))
    return {**qdq_summary(model), "converter_warnings": warnings}


def qdq_summary(model: onnx.ModelProto) -> dict:
    """Q/DQ counts, quantized compute ops by type, and zero points (must all be 0)."""
    produced_by = {out: node for node in model.graph.node for out in node.output}
    quantized_ops: Counter = Counter()
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm") and any(
            i in produced_by and produced_by[i].op_type == "DequantizeLinear" for i in node.input
        ):
            quantized_ops[node.op_type] += 1
    compute = Counter(n.op_type for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm"))
    initializers = {init.name: init for init in model.graph.initializer}
    nonzero_zero_points = 0
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in initializers:
            nonzero_zero_points += int(np.any(onnx.numpy_helper.to_array(initializers[node.input[2]]) != 0))
    ops = Counter(n.op_type for n in model.graph.node)
    return {
        "quantize_linear": ops["QuantizeLinear"],
        "dequantize_linear": ops["DequantizeLinear"],
        "quantized_ops": dict(quantized_ops),
        "compute_ops": dict(compute),
        "nonzero_zero_points": nonzero_zero_points,
    }
