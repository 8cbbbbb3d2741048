"""Writing Triton repositories: the shapes and constants come from the graphs of an rsd-export
folder, a plan that does not fit them is refused in one line, the default form loads in every
Triton with a python backend (the bundled one included), and the standalone command's usage
errors are one line with exit code 2, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from rsd_deploy.export.artifacts import ArtifactError
from rsd_deploy.export.onnx_export import export_stage, graph_signature
from rsd_deploy.export.stages import describe_stages
from rsd_deploy.export.triton_config import RepositoryPlan, check_repository
from rsd_deploy.export.triton_repo import PROG, main, repository_from_export, write_triton_repository


def one_line(error: BaseException | str) -> str:
    text = str(error).strip()
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


def fake_engines(tmp_path: Path) -> dict[str, Path]:
    """The writer never opens a plan (it is opaque to Triton's config); these bytes stand in for
    engines that only a TensorRT machine can build."""
    engines = {}
    for stage in ("encoder", "generator", "decoder"):
        engines[stage] = tmp_path / f"{stage}.fp32.plan"
        engines[stage].write_bytes(b"engine bytes " + stage.encode())
    return engines


def test_the_default_form_is_python_unless_every_stage_has_an_engine(tmp_path, demo, serve_range, stage_files):
    """rsd-export --triton-repo's default must load in the bundled tritonserver, which has only
    the python backend: ONNX graphs become python models; engines stay TensorRT plans."""
    configs, backend = repository_from_export(tmp_path / "default", demo, serve_range, stage_files)
    assert backend == "python"
    assert {configs[f"rsd_{s}"].backend for s in ("encoder", "generator", "decoder")} == {"python"}
    readme = (tmp_path / "default" / "rsd_sr" / "README.md").read_text()
    assert "nvidia-pytriton" in readme and "python -m rsd_deploy.export.triton_server" in readme
    manifest = json.loads((tmp_path / "default" / "rsd_repository.json").read_text())
    assert manifest["stage_backend"] == "python"

    configs, backend = repository_from_export(tmp_path / "ort", demo, serve_range, stage_files, backend="onnxruntime")
    assert backend == "onnxruntime" and configs["rsd_encoder"].platform == "onnxruntime_onnx"
    assert "not the nvidia-pytriton one" in (tmp_path / "ort" / "rsd_sr" / "README.md").read_text()

    plan = RepositoryPlan.from_pipeline(demo, serve_range)
    configs = write_triton_repository(tmp_path / "trt", plan, fake_engines(tmp_path))  # auto, .plan files
    assert configs["rsd_encoder"].platform == "tensorrt_plan"
    with pytest.raises(ArtifactError, match="unknown stage backend 'openvino'"):
        write_triton_repository(tmp_path / "x", plan, stage_files, backend="openvino")


def test_bad_inputs_are_refused_before_anything_is_written(tmp_path, demo, serve_range, stage_files):
    plan = RepositoryPlan.from_pipeline(demo, serve_range)
    with pytest.raises(ArtifactError, match="expected an existing .plan file for the encoder stage"):
        write_triton_repository(tmp_path / "trt", plan, stage_files, backend="tensorrt")
    swapped = {**stage_files, "encoder": stage_files["decoder"]}
    with pytest.raises(ArtifactError, match="given for the encoder stage, but it is the decoder stage's graph"):
        write_triton_repository(tmp_path / "swapped", plan, swapped)
    assert not (tmp_path / "trt").exists() and not (tmp_path / "swapped").exists()


# --- the graphs are the truth ---------------------------------------------------------------------


def test_standalone_takes_every_shape_and_constant_from_the_graphs(tmp_path, onnx_dir, demo, stage_files, serve_range, capsys):
    out = tmp_path / "models"
    assert main(["--onnx-dir", str(onnx_dir), "--out", str(out)]) == 0  # no --checkpoint: the README's command
    assert "python stages, fp32 graphs" in capsys.readouterr().out
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
    with pytest.raises(ArtifactError) as caught:
        write_triton_repository(tmp_path / "models", wrong, stage_files, backend="python")
    assert one_line(caught.value).startswith(f"{stage_files['encoder']}: the encoder graph's tensors")
    assert not (tmp_path / "models").exists()


def test_export_repository_of_engines_is_checked_against_their_graphs(tmp_path, demo, micro, serve_range, stage_files):
    engines = fake_engines(tmp_path)
    configs, backend = repository_from_export(tmp_path / "models", demo, serve_range, stage_files, engines)
    assert backend == "tensorrt" and configs["rsd_prior"].input[0].dims == [48, -1, -1]
    with pytest.raises(ArtifactError) as caught:  # the 3-channel micro pipeline is not what these graphs were exported from
        repository_from_export(tmp_path / "other", micro, serve_range, stage_files, engines)
    assert one_line(caught.value).startswith(f"{stage_files['encoder']}: the encoder graph's tensors")


def _export_with(tmp_path: Path, onnx_dir: Path, encoder: Path) -> Path:
    """A copy of the rsd-export folder whose encoder graph is ``encoder``."""
    folder = tmp_path / "export"
    shutil.copytree(onnx_dir, folder)
    shutil.copy(encoder, folder / "encoder.fp32.onnx")
    return folder


def test_graphs_that_do_not_fit_together_are_one_line_exit_2(tmp_path, onnx_dir, micro, serve_range, capsys):
    other = tmp_path / "micro.onnx"
    export_stage(describe_stages(micro)["encoder"], micro, other, serve_range)
    mixed = _export_with(tmp_path, onnx_dir, other)
    assert main(["--onnx-dir", str(mixed), "--out", str(tmp_path / "models")]) == 2
    assert one_line(capsys.readouterr().err).startswith(f"{PROG}: error: {mixed / 'generator.fp32.onnx'}: rsd_deploy.source")

    old = onnx.load(str(onnx_dir / "encoder.fp32.onnx"))
    kept = [(p.key, p.value) for p in old.metadata_props if p.key != "rsd_deploy.prior_scale"]
    del old.metadata_props[:]
    for key, value in kept:
        old.metadata_props.add(key=key, value=value)
    onnx.save(old, str(tmp_path / "old.onnx"))
    shutil.rmtree(mixed)
    mixed = _export_with(tmp_path, onnx_dir, tmp_path / "old.onnx")
    assert main(["--onnx-dir", str(mixed), "--out", str(tmp_path / "models")]) == 2
    assert "encoder.fp32.onnx: no rsd_deploy.prior_scale metadata" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("args, message", [
    (["--lr-size", "64,64,256"], "must lie inside it"),
    (["--lr-size", "64,x,128"], "--lr-size: expected N or MIN,OPT,MAX integers"),
    (["--batch", "1,2"], "--batch: expected N or MIN,OPT,MAX"),
    (["--lr-size", "64,96,128"], "--batch / --lr-size: LR height range must be multiples of 64"),
    (["--precision", "fp16"], "no fp16 graphs (report.json lists fp32)"),
    (["--backend", "tensorrt"], "lists TensorRT 10/11 engines of no stage at fp32"),
    (["--instances", "0"], "instances must be an integer >= 1"),
])
def test_standalone_usage_errors_are_one_line_exit_2(tmp_path, onnx_dir, capsys, args, message):
    assert main(["--onnx-dir", str(onnx_dir), "--out", str(tmp_path / "models"), *args]) == 2
    assert message in one_line(capsys.readouterr().err)
    assert not (tmp_path / "models").exists()


def test_an_unknown_backend_is_an_argparse_error(tmp_path, onnx_dir, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--onnx-dir", str(onnx_dir), "--out", str(tmp_path / "models"), "--backend", "openvino"])
    assert caught.value.code == 2 and "--backend: invalid choice" in one_line(capsys.readouterr().err)


def test_an_unfinished_export_folder_is_refused(tmp_path, onnx_dir, capsys):
    folder = tmp_path / "export"
    shutil.copytree(onnx_dir, folder)
    (folder / "INCOMPLETE").write_text("{}")
    assert main(["--onnx-dir", str(folder), "--out", str(tmp_path / "models")]) == 2
    assert "an rsd-export run did not finish here" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "models").exists()
