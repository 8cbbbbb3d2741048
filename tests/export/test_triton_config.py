"""Triton model configs: every config.pbtxt parses with Triton's own protobuf, the stage models
are the graphs', the ensemble's tensors line up end to end in the chain's order, and broken
repositories are caught with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from rsd_deploy import chain
from rsd_deploy.export.onnx_export import graph_signature
from rsd_deploy.export.stages import describe_stages
from rsd_deploy.export.triton_config import RepositoryError, RepositoryPlan, check_repository, ensemble_parts
from rsd_deploy.export.triton_repo import write_triton_repository

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
    readme = (out / "rsd_sr" / "README.md").read_text()  # inside our own model folder: a shared repository's README stays theirs
    assert readme.count("perf_analyzer") == 1 and "tritonserver --model-repository" in readme
    for name, config in configs.items():  # bounded queues: under overload Triton refuses instead of piling requests up
        if name != "rsd_sr":
            assert config.dynamic_batching.default_queue_policy.max_queue_size > 0


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


def test_stage_configs_say_their_precision_and_shape_range(repository, serve_range):
    """What a client (TritonRunner) reads from the server besides the tensors."""
    _, out = repository
    for name, config in parse_all(out).items():
        if name in ("rsd_encoder", "rsd_generator", "rsd_decoder"):
            assert config.parameters["precision"].string_value == "fp32"
            assert json.loads(config.parameters["shape_range"].string_value) == serve_range.to_json()


def test_a_model_without_noise_map_gets_an_ensemble_without_one(tiny_teacher, serve_range):
    """The ensemble's order and tensors come from the chain's stages and what each model declares:
    a teacher's generator takes no noise map, so nothing makes or maps one."""
    from rsd_deploy.export import triton_models
    from rsd_deploy.export.triton_config import check_ensemble, ensemble_config, host_config, stage_config

    plan = RepositoryPlan.from_pipeline(tiny_teacher, serve_range)
    assert ensemble_parts(plan) == ["preprocess", chain.ENCODER.name, "prior", chain.GENERATOR.name, chain.DECODER.name, "postprocess"]
    configs = [stage_config(plan, stage.name, "python", "cpu", 1, 0) for stage in chain.STAGES]
    configs += [host_config(plan, model, 0) for model in triton_models.HOST_MODELS]
    configs = {config.name: config for config in configs}
    ensemble = ensemble_config(plan, configs)
    assert check_ensemble(ensemble, configs) == []
    assert "noise_map" not in {t.name for config in configs.values() for t in (*config.input, *config.output)}
    assert [t.name for t in configs["rsd_preprocess"].output] == ["lq_up", "lq", "eps", "lr_size"]
    assert {t.name: t.dims for t in configs["rsd_prior"].input}["eps"] == [3, -1, -1]  # the tiny VQ latent
