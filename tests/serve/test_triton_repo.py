"""Triton model repositories: every config.pbtxt parses with Triton's own protobuf, the
ensemble's tensors line up end to end, and broken repositories are caught with a clear message."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from rsd_deploy.checkpoints import BUNDLED_DIR, DEMO_NAME
from rsd_deploy.export.onnx_export import graph_signature
from rsd_deploy.export.stages import describe_stages
from rsd_deploy.export.triton_repo import (
    MANIFEST,
    RepositoryError,
    RepositoryPlan,
    check_repository,
    main,
    write_triton_repository,
)

MODELS = ["rsd_decoder", "rsd_encoder", "rsd_generator", "rsd_postprocess", "rsd_preprocess", "rsd_prior", "rsd_sr"]
NP_TO_TRITON = {"float32": mc.TYPE_FP32, "float16": mc.TYPE_FP16}


def parse_all(directory: Path) -> dict[str, mc.ModelConfig]:
    """Independent of the module under test: protobuf text_format on every config.pbtxt."""
    return {p.parent.name: text_format.Parse(p.read_text(), mc.ModelConfig()) for p in sorted(directory.glob("*/config.pbtxt"))}


@pytest.fixture(scope="module")
def plan(demo, serve_range) -> RepositoryPlan:
    return RepositoryPlan.from_pipeline(demo, serve_range)


@pytest.fixture(scope="module", params=["onnxruntime", "python"])
def repository(request, tmp_path_factory, plan, stage_files) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(f"repo_{request.param}") / "models"
    write_triton_repository(out, plan, stage_files, backend=request.param)
    return request.param, out


def test_every_config_parses_with_tritons_protobuf(repository, serve_range):
    backend, out = repository
    configs = parse_all(out)
    assert sorted(configs) == MODELS
    for name, config in configs.items():
        assert config.name == name
    platforms = {name: config.platform or config.backend for name, config in configs.items()}
    stage_kind = "onnxruntime_onnx" if backend == "onnxruntime" else "python"
    assert platforms == {
        "rsd_encoder": stage_kind, "rsd_generator": stage_kind, "rsd_decoder": stage_kind,
        "rsd_preprocess": "python", "rsd_prior": "python", "rsd_postprocess": "python", "rsd_sr": "ensemble",
    }
    for stage in ("encoder", "generator", "decoder"):
        folder = out / f"rsd_{stage}" / "1"
        assert (folder / "model.onnx").is_file()
        assert (folder / "model.py").is_file() == (backend == "python")
        config = configs[f"rsd_{stage}"]
        assert config.max_batch_size == serve_range.batch[2]
        assert config.dynamic_batching.max_queue_delay_microseconds > 0
        assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
        warmup = config.model_warmup[0]
        assert set(warmup.inputs) == {t.name for t in config.input}
    assert (out / "README.md").read_text().count("perf_analyzer") == 1
    assert "tritonserver --model-repository" in (out / "README.md").read_text()


def test_stage_models_match_the_stage_descriptions_and_graphs(repository, demo, stage_files):
    _, out = repository
    configs = parse_all(out)
    stages = describe_stages(demo)
    for stage in ("encoder", "generator", "decoder"):
        config = configs[f"rsd_{stage}"]
        signature = graph_signature(stage_files[stage])
        graph = {t["name"]: t for t in signature["inputs"] + signature["outputs"]}
        declared = list(config.input) + list(config.output)
        assert [t.name for t in config.input] == list(stages[stage].input_names)
        assert [t.name for t in config.output] == list(stages[stage].output_names)
        for tensor in declared:
            assert tensor.data_type == NP_TO_TRITON[graph[tensor.name]["dtype"]]
            # dims exclude the batch axis; channels fixed, spatial axes variable
            assert list(tensor.dims) == [graph[tensor.name]["shape"][1], -1, -1]


def test_ensemble_tensors_flow_end_to_end(repository):
    """Follow the ensemble step by step, as Triton does when it loads it: every input a step
    reads exists with the type and dims that model declares, and the final output is produced."""
    _, out = repository
    configs = parse_all(out)
    ensemble = configs["rsd_sr"]
    assert ensemble.platform == "ensemble"
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.input] == [
        ("IMAGE", mc.TYPE_UINT8, [-1, -1, 3]), ("SEED", mc.TYPE_INT64, [1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.output] == [("HR_IMAGE", mc.TYPE_UINT8, [-1, -1, 3])]
    tensors = {t.name: (t.data_type, list(t.dims)) for t in ensemble.input}
    steps = [s.model_name for s in ensemble.ensemble_scheduling.step]
    assert steps == ["rsd_preprocess", "rsd_encoder", "rsd_prior", "rsd_generator", "rsd_decoder", "rsd_postprocess"]
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        assert model.max_batch_size >= ensemble.max_batch_size > 0
        assert set(step.input_map) == {t.name for t in model.input}
        for tensor in model.input:
            source = step.input_map[tensor.name]
            assert source in tensors, f"{step.model_name} reads {source} before it exists"
            data_type, dims = tensors[source]
            assert data_type == tensor.data_type, (step.model_name, tensor.name)
            assert len(dims) == len(tensor.dims) and all(a == b or -1 in (a, b) for a, b in zip(dims, tensor.dims))
        for tensor in model.output:
            target = step.output_map[tensor.name]
            assert target not in tensors, f"{target} produced twice"
            tensors[target] = (tensor.data_type, list(tensor.dims))
    assert tensors["HR_IMAGE"] == (mc.TYPE_UINT8, [-1, -1, 3])
    # the generator's x0 is what the decoder decodes
    decoder_step = ensemble.ensemble_scheduling.step[steps.index("rsd_decoder")]
    assert dict(decoder_step.input_map) == {"z": "x0"}


def _rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    "model, old, new, message",
    [
        ("rsd_sr", 'value: "x0"', 'value: "x_0"', "not produced by an earlier step"),
        ("rsd_decoder", "data_type: TYPE_FP32", "data_type: TYPE_FP16", "wants TYPE_FP16"),
        ("rsd_prior", "dims: 48", "dims: 47", "has dims"),
        ("rsd_generator", 'name: "noise_map"', 'name: "noise"', "not mapped"),
        ("rsd_postprocess", "max_batch_size: 4", "max_batch_size: 2", "max_batch_size 2"),
    ],
)
def test_check_repository_names_each_break(tmp_path, plan, stage_files, model, old, new, message):
    out = tmp_path / "models"
    write_triton_repository(out, plan, stage_files, backend="onnxruntime")
    _rewrite(out / model / "config.pbtxt", old, new)
    with pytest.raises(RepositoryError, match=message):
        check_repository(out)


def test_unparseable_config_and_missing_model_file_are_reported(tmp_path, plan, stage_files):
    out = tmp_path / "models"
    write_triton_repository(out, plan, stage_files, backend="onnxruntime")
    (out / "rsd_encoder" / "1" / "model.onnx").unlink()
    with pytest.raises(RepositoryError, match=r"rsd_encoder: onnxruntime_onnx model without 1/model.onnx"):
        check_repository(out)
    (out / "rsd_prior" / "config.pbtxt").write_text("name: rsd_prior max_batch_size: four")
    with pytest.raises(RepositoryError, match=r"rsd_prior/config.pbtxt: not a valid Triton model config"):
        check_repository(out)


def test_tensorrt_repository_uses_plans_gpu_instances_and_cuda_graphs(tmp_path, plan, serve_range):
    # The writer never opens a plan (it is opaque to Triton's config); these bytes stand in for
    # engines that only a TensorRT machine can build.
    engines = {}
    for stage in ("encoder", "generator", "decoder"):
        engines[stage] = tmp_path / f"{stage}.fp16.plan"
        engines[stage].write_bytes(b"engine bytes " + stage.encode())
    out = tmp_path / "models"
    write_triton_repository(out, plan, engines, backend="tensorrt")
    configs = parse_all(out)
    for stage in ("encoder", "generator", "decoder"):
        config = configs[f"rsd_{stage}"]
        assert config.platform == "tensorrt_plan"
        assert (out / f"rsd_{stage}" / "1" / "model.plan").read_bytes() == engines[stage].read_bytes()
        assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        cuda = config.optimization.cuda
        assert cuda.graphs
        assert [g.batch_size for g in cuda.graph_spec] == list(range(1, serve_range.batch[2] + 1))
        spec = plan.stages[stage]
        for graph in cuda.graph_spec:
            assert {name: list(shape.dim) for name, shape in graph.input.items()} == {
                t.name: list(t.shape(1, serve_range.height[1], serve_range.width[1])[1:]) for t in spec.inputs}
    check_repository(out)


def test_refuses_to_overwrite_foreign_directories_and_bad_inputs(tmp_path, plan, stage_files):
    foreign = tmp_path / "not_a_repo"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(RepositoryError, match="exists and is not empty"):
        write_triton_repository(foreign, plan, stage_files)
    with pytest.raises(RepositoryError, match=f"no {MANIFEST}"):
        write_triton_repository(foreign, plan, stage_files, overwrite=True)
    assert (foreign / "keep.txt").read_text() == "user data"
    with pytest.raises(RepositoryError, match="expected an existing .plan file for the encoder stage"):
        write_triton_repository(tmp_path / "trt", plan, stage_files, backend="tensorrt")
    swapped = {**stage_files, "encoder": stage_files["decoder"]}
    with pytest.raises(RepositoryError, match=r"expected the encoder stage's tensors \['lq_up', 'z_y'\]"):
        write_triton_repository(tmp_path / "swapped", plan, swapped)


def test_standalone_entry_point(tmp_path, onnx_dir, capsys, serve_range):
    out = tmp_path / "models"
    assert main(["--onnx-dir", str(onnx_dir), "--out", str(out), "--checkpoint", str(BUNDLED_DIR / DEMO_NAME), "--backend", "python"]) == 0
    configs = check_repository(out)
    # the shape range recorded in the graphs by rsd-export becomes the repository's limits
    assert configs["rsd_sr"].max_batch_size == serve_range.batch[2]
    assert configs["rsd_preprocess"].parameters["max_lr_height"].string_value == str(serve_range.height[2])
    assert main(["--onnx-dir", str(onnx_dir), "--out", str(out), "--checkpoint", str(BUNDLED_DIR / DEMO_NAME)]) == 1
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["--onnx-dir", str(onnx_dir), "--out", str(out), "--checkpoint", str(BUNDLED_DIR / DEMO_NAME), "--overwrite"]) == 0
    shutil.rmtree(out)
