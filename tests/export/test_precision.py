"""fp16 graphs keep the fragile ops in fp32 behind Casts; INT8 graphs carry Q/DQ where promised."""

import numpy as np
import onnx
import pytest
import torch

from rsd_deploy.export.onnx_export import export_stage, read_metadata
from rsd_deploy.export.parity import relative_l2, run_onnx
from rsd_deploy.export.precision import codebook_search_nodes, convert_fp16, quantize_qdq
from rsd_deploy.export.stages import ShapeRange, describe_stages, stage_inputs_from_images

SHAPES = ShapeRange(batch=(1, 1, 2), height=(64, 64, 128), width=(64, 64, 128))


@pytest.fixture(scope="module")
def graphs(micro, tmp_path_factory):
    out = tmp_path_factory.mktemp("precision")
    stages = describe_stages(micro)
    real = stage_inputs_from_images(micro, torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)), seed=0)
    paths = {name: export_stage(stages[name], micro, out / f"{name}.fp32.onnx", SHAPES) for name in ("encoder", "generator", "decoder")}
    return out, paths, real


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def test_fp16_decoder_keeps_norms_and_codebook_search_in_fp32(graphs):
    out, paths, real = graphs
    calibration = {k: v[:1].numpy() for k, v in real["decoder"].items()}
    summary = convert_fp16(paths["decoder"], out / "decoder.fp16.onnx", calibration)
    model = onnx.load(str(out / "decoder.fp16.onnx"))
    assert read_metadata(model)["precision"] == "fp16"
    # the convolutions run in fp16: their weights are fp16 initializers
    conv_weights = [i for i in model.graph.initializer if i.dims and len(i.dims) == 4]
    assert conv_weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in conv_weights)
    # every normalisation and the codebook ArgMin read fp32 tensors produced by a Cast to fp32
    producers = _producers(model)
    guarded = [n for n in model.graph.node if n.op_type in ("InstanceNormalization", "ArgMin")]
    assert len(guarded) > 5
    assert summary["fp32_nodes_by_type"]["InstanceNormalization"] == sum(n.op_type == "InstanceNormalization" for n in guarded)
    for node in [n for n in guarded if n.op_type == "InstanceNormalization"]:
        source = producers[node.input[0]]
        while source.op_type in ("Reshape", "Transpose", "Unsqueeze", "Squeeze"):  # layout-only ops
            source = producers[source.input[0]]
        assert source.op_type == "Cast" and source.attribute[0].i == onnx.TensorProto.FLOAT, node.name
    assert set(codebook_search_nodes(model)) and "MatMul" in summary["fp32_nodes_by_type"]
    # I/O stay float32, the graph runs in ONNX Runtime (batch 2 too) and stays close to fp32
    feeds = {"z": real["decoder"]["z"][:2]}
    low, ref = run_onnx(out / "decoder.fp16.onnx", feeds)[0], run_onnx(paths["decoder"], feeds)[0]
    assert low.dtype == np.float32 and relative_l2(low, ref) < 2e-2


def test_int8_generator_has_qdq_except_where_excluded(graphs):
    out, paths, real = graphs
    calibration = {k: v.numpy() for k, v in real["generator"].items()}
    summary = quantize_qdq(paths["generator"], out / "generator.int8.onnx", calibration, "int8", method="max")
    model = onnx.load(str(out / "generator.int8.onnx"))
    assert summary["quantize_linear"] > 10 and summary["nonzero_zero_points"] == 0
    producers = _producers(model)

    def quantized(node):
        return any(i in producers and producers[i].op_type == "DequantizeLinear" for i in node.input)

    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    inner = [n for n in convs if "input_blocks.0/" not in n.name and "/out/" not in n.name]
    assert inner and sum(quantized(n) for n in inner) >= 0.8 * len(inner)
    for node in model.graph.node:
        if "input_blocks.0/" in node.name or "/out/out.2/" in node.name or "time_embed" in node.name or "emb_layers" in node.name:
            assert not quantized(node), node.name
        if node.op_type == "MatMul" and "/attn/" in node.name:
            assert not quantized(node), node.name
        if node.op_type in ("Softmax", "InstanceNormalization"):
            assert not quantized(node), node.name
    feeds = {k: v[:1] for k, v in real["generator"].items()}
    low, ref = run_onnx(out / "generator.int8.onnx", feeds)[0], run_onnx(paths["generator"], feeds)[0]
    assert np.isfinite(low).all() and relative_l2(low, ref) < 0.5


def _interface(model):
    return [(v.name, v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in (*model.graph.input, *model.graph.output)]


def test_converted_graphs_keep_the_stage_interface(graphs):
    """The converters' shape inference renames the VQ encoder's output dims (to
    ``((4*height//2)//2)``); the converted graph keeps the fp32 graph's names, which every reader
    of an rsd-export folder checks."""
    out, paths, real = graphs
    calibration = {k: v.numpy() for k, v in real["encoder"].items()}
    quantize_qdq(paths["encoder"], out / "encoder.int8.onnx", calibration, "int8", method="max")
    convert_fp16(paths["encoder"], out / "encoder.fp16.onnx", {k: v[:1] for k, v in calibration.items()})
    source = _interface(onnx.load(str(paths["encoder"])))
    assert source[-1][2] == ["batch", 3, "height", "width"]
    for precision in ("int8", "fp16"):
        assert _interface(onnx.load(str(out / f"encoder.{precision}.onnx"))) == source, precision


def test_int8_rejects_unknown_method(graphs):
    out, paths, real = graphs
    with pytest.raises(ValueError, match="calibration method"):
        quantize_qdq(paths["decoder"], out / "x.onnx", {}, "int8", method="percentile-ish")


def test_fp16_conversion_is_deterministic_across_hash_seeds(graphs, tmp_path):
    """The same fp32 graph gives the same fp16 bytes whatever PYTHONHASHSEED is, so a re-export
    hits the engine cache (AutoCast inserts its casts in set order)."""
    import hashlib
    import os
    import subprocess
    import sys

    out, paths, real = graphs
    np.savez(tmp_path / "calibration.npz", **{k: v[:1].numpy() for k, v in real["generator"].items()})
    script = ("import sys, numpy as np; from rsd_deploy.export.precision import convert_fp16; "
              "data = np.load(sys.argv[2]); convert_fp16(sys.argv[1], sys.argv[3], {k: data[k] for k in data.files})")
    digests = set()
    for seed in ("1", "2"):
        target = tmp_path / f"generator.{seed}.onnx"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", script, str(paths["generator"]), str(tmp_path / "calibration.npz"), str(target)],
                       check=True, env=env, capture_output=True, timeout=600)
        digests.add(hashlib.sha256(target.read_bytes()).hexdigest())
    assert len(digests) == 1
