"""ONNX export: the plugin mode gives one custom node per window attention; the default export
keeps standard ops and ONNX Runtime runs it."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch

from rsd_deploy.kernels import onnx_custom_op as plugin_op
from rsd_deploy.models.swin import SwinTransformerStage, WindowAttention


@pytest.fixture(scope="module")
def stage():
    """One Swin stage: an unshifted and a shifted block, 2 heads of 16 (plain ops on CPU)."""
    torch.manual_seed(0)
    module = SwinTransformerStage(16, 32, 2, 8, 2, 16, 2.0, False).eval()
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, WindowAttention):
                m.relative_position_bias_table.normal_(0, 0.5)
    return module


def test_plugin_mode_one_node_per_window_attention(stage):
    x = torch.randn(2, 16, 16, 24)
    with plugin_op.plugin_attention(stage):
        eager_plugin = stage(x)  # the custom op's eager path (reference on CPU)
        program = torch.onnx.export(stage, (x,), dynamo=True, verbose=False, **plugin_op.export_kwargs())
    assert {m.backend for m in stage.modules() if isinstance(m, WindowAttention)} == {"reference"}
    assert torch.allclose(eager_plugin, stage(x), atol=1e-6)

    model = program.model_proto
    nodes = plugin_op.plugin_nodes(model)
    assert len(nodes) == 2
    ops = collections.Counter(n.op_type for n in model.graph.node)
    # nothing of the attention is left outside the plugin nodes
    assert not {"Softmax", "MatMul", "Transpose", "Slice"} & set(ops), ops
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    for a, shift in zip(attrs, (0, 4)):
        assert a["plugin_namespace"] == b"rsd_deploy" and a["plugin_version"] == b"1" and a["aot"] == 1
        assert (a["num_heads"], a["window"], a["shift"]) == (2, 8, shift)
        assert a["scale"] == pytest.approx(16**-0.5)
    assert {(o.domain, o.version) for o in model.opset_import} >= {("rsd_deploy", 1)}
    initializers = {i.name: i for i in model.graph.initializer}
    for node in nodes:
        assert node.op_type == plugin_op.PLUGIN_NAME and len(node.input) == 2 and len(node.output) == 1
        bias = initializers[node.input[1]]  # the relative-position bias is folded to a constant
        assert list(bias.dims) == [2, 64, 64]
    onnx.checker.check_model(model, full_check=True)


def test_plugin_mode_torchscript_exporter(stage, tmp_path):
    x = torch.randn(1, 16, 16, 24)
    path = tmp_path / "stage.onnx"
    with plugin_op.plugin_attention(stage):
        torch.onnx.export(
            stage, (x,), str(path), dynamo=False, opset_version=19, input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "batch", 2: "h", 3: "w"}}, **plugin_op.export_kwargs(exporter="torchscript"),
        )
    model = onnx.load(str(path))
    nodes = plugin_op.plugin_nodes(model)
    assert [onnx.helper.get_attribute_value(a) for n in nodes for a in n.attribute if a.name == "shift"] == [0, 4]
    assert not {"Softmax", "MatMul", "Transpose"} & {n.op_type for n in model.graph.node}
    onnx.checker.check_model(model)


def test_plugin_mode_needs_swin_blocks():
    with pytest.raises(ValueError, match="no WindowAttention"):
        with plugin_op.plugin_attention(torch.nn.Conv2d(3, 3, 1)):
            pass


def test_jit_flag():
    table = plugin_op.export_kwargs(aot=False)["custom_translation_table"]
    assert list(table) == [torch.ops.rsd_deploy.window_attention.default]


def test_default_export_is_standard_onnx_and_runs_in_onnxruntime(stage):
    ort = pytest.importorskip("onnxruntime")
    x = torch.randn(1, 16, 16, 24)
    program = torch.onnx.export(stage, (x,), dynamo=True, verbose=False)
    model = program.model_proto
    assert not plugin_op.plugin_nodes(model)
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x2 = torch.randn(1, 16, 16, 24)
    (got,) = session.run(None, {session.get_inputs()[0].name: x2.numpy()})
    with torch.no_grad():
        want = stage(x2).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
