"""Triton model repositories: every config.pbtxt parses with Triton's own protobuf, the
ensemble's tensors line up end to end, broken repositories are caught with a clear message, the
shapes come from the graphs, and a shared repository loses nothing (even to a kill -9)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from rsd_deploy.export.onnx_export import export_stage, graph_signature
from rsd_deploy.export.stages import describe_stages
from rsd_deploy.export.triton_repo import (
    MANIFEST,
    RepositoryError,
    RepositoryPlan,
    _locked,
    check_repository,
    main,
    repository_from_export,
    staging_folder,
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


# --- a shared repository: only our models are ever replaced, each swapped in whole ---------------

IDENTITY_MODEL = "class TritonPythonModel:\n    def execute(self, requests):\n        return []\n"


def user_model(repository: Path, name: str) -> dict[str, bytes]:
    """A model of the user's own in the repository; returns its files' bytes."""
    folder = repository / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "python"\nmax_batch_size: 1\n'
                                         'input [{ name: "X" data_type: TYPE_FP32 dims: [1] }]\n'
                                         'output [{ name: "Y" data_type: TYPE_FP32 dims: [1] }]\n')
    (folder / "1" / "model.py").write_text(IDENTITY_MODEL)
    return snapshot(folder)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(error: BaseException | str) -> str:
    text = str(error).strip()
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


def test_rewrite_replaces_only_its_own_models(tmp_path, plan, stage_files, onnx_dir):
    repository = tmp_path / "models"
    repository.mkdir()
    theirs = user_model(repository, "my_detector")  # written before ours: a repository shared from the start
    (repository / "README.md").write_text("the team's notes")
    write_triton_repository(repository, plan, stage_files)
    write_triton_repository(repository, plan, stage_files, backend="python", overwrite=True)
    assert main(["--onnx-dir", str(onnx_dir), "--out", str(repository), "--backend", "python", "--overwrite"]) == 0
    assert snapshot(repository / "my_detector") == theirs
    assert (repository / "README.md").read_text() == "the team's notes"
    assert json.loads((repository / MANIFEST).read_text())["models"] == MODELS
    configs = parse_all(repository)
    assert configs["rsd_encoder"].backend == "python" and configs["my_detector"].name == "my_detector"
    assert not staging_folder(repository.absolute()).exists()
    check_repository(repository)  # the whole repository, theirs included, still parses and links up


def test_refuses_a_model_folder_with_its_name_that_it_did_not_write(tmp_path, plan, stage_files):
    repository = tmp_path / "models"
    write_triton_repository(repository, replace(plan, prefix="x4"), stage_files)  # our manifest: the x4_* models
    user_model(repository, "rsd_encoder")  # the user's, with a name this plan would write
    before = snapshot(repository)
    with pytest.raises(RepositoryError) as caught:
        write_triton_repository(repository, plan, stage_files, overwrite=True)
    assert one_line(caught.value).startswith(f"{repository.absolute() / 'rsd_encoder'}: a model folder rsd-deploy did not write")
    assert snapshot(repository) == before
    # without overwrite our own models are kept too; a folder of other things is fine to write beside
    with pytest.raises(RepositoryError, match="pass overwrite=True / --overwrite"):
        write_triton_repository(repository, replace(plan, prefix="x4"), stage_files)
    assert snapshot(repository) == before
    other = tmp_path / "not_a_repo"
    other.mkdir()
    (other / "keep.txt").write_text("user data")
    write_triton_repository(other, plan, stage_files)
    assert (other / "keep.txt").read_text() == "user data" and sorted(parse_all(other)) == MODELS


def batching_delays(repository: Path) -> dict[str, int]:
    return {name: c.dynamic_batching.max_queue_delay_microseconds for name, c in parse_all(repository).items()
            if name in MODELS and name != "rsd_sr"}


def test_a_writer_killed_while_building_leaves_the_repository_as_it_was(tmp_path, plan, stage_files, kill_writer):
    repository = tmp_path / "models"
    write_triton_repository(repository, plan, stage_files, backend="python")
    theirs = user_model(repository, "my_detector")
    before = snapshot(repository)
    kill_writer("copyfile", 2, repository)  # the encoder and generator graphs copied
    assert snapshot(repository) == before  # nothing of the half-built update is visible
    assert staging_folder(repository).is_dir()
    write_triton_repository(repository, plan, stage_files, backend="python", overwrite=True, queue_delay_us=5)  # the re-run
    assert not staging_folder(repository).exists()
    assert set(batching_delays(repository).values()) == {5} and snapshot(repository / "my_detector") == theirs


def test_a_writer_killed_while_swapping_leaves_complete_models_and_a_rerun_finishes(tmp_path, plan, stage_files, onnx_dir, kill_writer, capsys):
    repository = tmp_path / "models"
    write_triton_repository(repository, plan, stage_files, backend="python")
    theirs = user_model(repository, "my_detector")
    kill_writer("_exchange", 3, repository)  # three of the seven models swapped in
    delays = batching_delays(repository)
    assert list(delays.values()).count(kill_writer.delay_us) == 3  # three new, the others old, every folder complete:
    check_repository(repository)  # configs, model files and the ensemble's tensor flow all hold
    assert staging_folder(repository).is_dir()
    assert main(["--onnx-dir", str(onnx_dir), "--out", str(repository), "--backend", "python", "--overwrite"]) == 0
    assert "finished the interrupted update" in capsys.readouterr().err
    assert set(batching_delays(repository).values()) == {2000} and not staging_folder(repository).exists()
    assert snapshot(repository / "my_detector") == theirs


def test_one_writer_at_a_time(tmp_path, plan, stage_files):
    repository = tmp_path / "models"
    repository.mkdir()
    with _locked(repository.absolute()):
        with pytest.raises(RepositoryError, match="another rsd-deploy run is writing this repository now"):
            write_triton_repository(repository, plan, stage_files)
    assert not any(repository.iterdir())


def test_bad_out_folders_are_one_line_exit_2(tmp_path, onnx_dir, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    (tmp_path / "real").mkdir()
    a_link = tmp_path / "link"
    a_link.symlink_to(tmp_path / "real")
    for out, message in [(a_file, "exists and is not a folder"), (a_link, "a symbolic link")]:
        assert main(["--onnx-dir", str(onnx_dir), "--out", str(out)]) == 2
        assert message in one_line(capsys.readouterr().err)
    assert a_file.read_text() == "not a folder" and not any((tmp_path / "real").iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_out_is_one_line_exit_2(tmp_path, onnx_dir, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["--onnx-dir", str(onnx_dir), "--out", str(locked / "models")]) == 2
    assert "not writable" in one_line(capsys.readouterr().err)


def test_bad_inputs_are_refused_before_anything_is_written(tmp_path, plan, stage_files):
    with pytest.raises(RepositoryError, match="expected an existing .plan file for the encoder stage"):
        write_triton_repository(tmp_path / "trt", plan, stage_files, backend="tensorrt")
    swapped = {**stage_files, "encoder": stage_files["decoder"]}
    with pytest.raises(RepositoryError, match="given for the encoder stage, but it is the decoder stage's graph"):
        write_triton_repository(tmp_path / "swapped", plan, swapped)
    assert not (tmp_path / "trt").exists() and not (tmp_path / "swapped").exists()


# --- the graphs are the truth ---------------------------------------------------------------------


def test_standalone_takes_every_shape_and_constant_from_the_graphs(tmp_path, onnx_dir, demo, stage_files, serve_range):
    out = tmp_path / "models"
    assert main(["--onnx-dir", str(onnx_dir), "--out", str(out), "--backend", "python"]) == 0  # no --checkpoint: the README's command
    configs = check_repository(out)
    for stage in ("encoder", "generator", "decoder"):
        signature = graph_signature(stage_files[stage])
        graph = {t["name"]: t["shape"] for t in signature["inputs"] + signature["outputs"]}
        for tensor in [*configs[f"rsd_{stage}"].input, *configs[f"rsd_{stage}"].output]:
            assert list(tensor.dims) == [graph[tensor.name][1], -1, -1]
    params = {k: v.string_value for k, v in configs["rsd_preprocess"].parameters.items()}
    assert (params["latent_channels"], params["noise_channels"], params["scale"]) == (str(demo.codec.latent_channels), "1", "4")
    prior = float(configs["rsd_prior"].parameters["prior_scale"].string_value)
    assert prior == pytest.approx(demo.schedule.kappa * float(demo.schedule.sqrt_etas[-1]))
    # the range rsd-export recorded in the graphs becomes the repository's limits
    assert configs["rsd_sr"].max_batch_size == serve_range.batch[2]
    assert params["max_lr_height"] == str(serve_range.height[2])


def test_a_plan_that_does_not_fit_the_graphs_is_refused(tmp_path, micro, serve_range, stage_files):
    wrong = RepositoryPlan.from_pipeline(micro, serve_range)  # a 3-channel latent beside the demo's 48-channel graphs
    with pytest.raises(RepositoryError) as caught:
        write_triton_repository(tmp_path / "models", wrong, stage_files, backend="python")
    assert one_line(caught.value).startswith(f"{stage_files['encoder']}: the encoder graph's tensors")
    assert not (tmp_path / "models").exists()


def test_export_repository_of_engines_is_checked_against_their_graphs(tmp_path, demo, micro, serve_range, stage_files):
    # The writer never opens a plan; these bytes stand in for engines built from the graphs.
    engines = {}
    for stage in ("encoder", "generator", "decoder"):
        engines[stage] = tmp_path / f"{stage}.fp32.plan"
        engines[stage].write_bytes(b"engine bytes")
    configs, backend = repository_from_export(tmp_path / "models", demo, serve_range, stage_files, engines)
    assert backend == "tensorrt" and configs["rsd_prior"].input[0].dims == [48, -1, -1]
    with pytest.raises(RepositoryError) as caught:  # the 3-channel micro pipeline is not what these graphs were exported from
        repository_from_export(tmp_path / "other", micro, serve_range, stage_files, engines)
    assert one_line(caught.value).startswith(f"{stage_files['encoder']}: the encoder graph's tensors")


def _graphs_with(tmp_path: Path, onnx_dir: Path, encoder: Path) -> Path:
    folder = tmp_path / "graphs"
    folder.mkdir()
    for stage in ("generator", "decoder"):
        shutil.copy(onnx_dir / f"{stage}.fp32.onnx", folder)
    shutil.copy(encoder, folder / "encoder.fp32.onnx")
    return folder


def test_graphs_that_do_not_fit_together_are_one_line_exit_2(tmp_path, onnx_dir, micro, serve_range, capsys):
    other = tmp_path / "micro.onnx"
    export_stage(describe_stages(micro)["encoder"], micro, other, serve_range)
    mixed = _graphs_with(tmp_path, onnx_dir, other)
    assert main(["--onnx-dir", str(mixed), "--out", str(tmp_path / "models")]) == 2
    assert one_line(capsys.readouterr().err).startswith(f"error: {mixed / 'generator.fp32.onnx'}: rsd_deploy.source")

    old = onnx.load(str(onnx_dir / "encoder.fp32.onnx"))
    kept = [(p.key, p.value) for p in old.metadata_props if p.key != "rsd_deploy.prior_scale"]
    del old.metadata_props[:]
    for key, value in kept:
        old.metadata_props.add(key=key, value=value)
    onnx.save(old, str(tmp_path / "old.onnx"))
    shutil.rmtree(mixed)
    mixed = _graphs_with(tmp_path, onnx_dir, tmp_path / "old.onnx")
    assert main(["--onnx-dir", str(mixed), "--out", str(tmp_path / "models")]) == 2
    assert "encoder.fp32.onnx: no rsd_deploy.prior_scale metadata" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("args, message", [
    (["--lr-size", "64,64,256"], "must lie inside it"),
    (["--lr-size", "64,x,128"], "--lr-size: expected MIN,OPT,MAX integers"),
    (["--batch", "1,2"], "--batch: expected MIN,OPT,MAX integers"),
    (["--precision", "fp16"], "no encoder.fp16.onnx"),
    (["--instances", "0"], "instances must be an integer >= 1"),
])
def test_standalone_usage_errors_are_one_line_exit_2(tmp_path, onnx_dir, capsys, args, message):
    assert main(["--onnx-dir", str(onnx_dir), "--out", str(tmp_path / "models"), *args]) == 2
    assert message in one_line(capsys.readouterr().err)
    assert not (tmp_path / "models").exists()
