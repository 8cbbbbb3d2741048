"""What exported artifacts say about themselves: a stage graph's tensors and metadata, graphs that
belong together (one export, wired as the chain runs them, inside a shape range, of a model),
and a complete rsd-export folder read into the graphs of one precision; every refusal one line
naming the file."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import onnx
import pytest

from rsd_deploy import chain
from rsd_deploy.export.artifacts import ArtifactError, GraphSet, read_export, read_stage_graph
from rsd_deploy.export.onnx_export import export_stage, read_metadata, set_metadata
from rsd_deploy.export.stages import CHAINED_STAGES, ShapeRange, describe_stages


def one_line(error: BaseException) -> str:
    text = str(error)
    assert text and "\n" not in text, text
    return text


def copy_export(onnx_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "export"
    shutil.copytree(onnx_dir, folder)
    return folder


def test_an_export_folder_says_everything_a_consumer_needs(onnx_dir, demo, serve_range):
    exported = read_export(onnx_dir)
    graphs = exported.graphs
    assert list(graphs.graphs) == list(CHAINED_STAGES) and graphs.paths()["encoder"] == onnx_dir / "encoder.fp32.onnx"
    assert (graphs.precision, graphs.scale, graphs.shape_range) == ("fp32", demo.codec.scale, serve_range)
    assert graphs.prior_scale == pytest.approx(demo.schedule.prior_scale, rel=1e-12) and graphs.source == demo.description
    described = describe_stages(demo)
    for stage, spec in graphs.specs().items():  # the descriptions come back from the graphs (all but the prose)
        for ours, theirs in ((spec.inputs, described[stage].inputs), (spec.outputs, described[stage].outputs)):
            assert ours == tuple(replace(t, doc="") for t in theirs)
    graphs.check_model(demo)
    graphs.check_fits(ShapeRange(batch=(1, 2, 2), height=(64, 64, 64), width=(64, 128, 128)), "--tile 64")
    assert exported.engines == {} and exported.engine_files("tensorrt") == {}


def test_unusable_folders_are_one_line(onnx_dir, tmp_path):
    with pytest.raises(ArtifactError, match="not a folder"):
        read_export(tmp_path / "missing")
    with pytest.raises(ArtifactError, match="no report.json"):
        read_export(tmp_path)
    with pytest.raises(ArtifactError) as caught:
        read_export(onnx_dir, "fp16")
    assert one_line(caught.value) == f"{onnx_dir}: no fp16 graphs (report.json lists fp32); run rsd-export --precision fp16"
    with pytest.raises(ArtifactError, match=r"no fp32 graph of the pipeline stage \(it has encoder, generator, decoder\)"):
        read_export(onnx_dir, stages=("pipeline",))
    folder = copy_export(onnx_dir, tmp_path)
    (folder / "INCOMPLETE").write_text("{}")
    with pytest.raises(ArtifactError, match="an rsd-export run did not finish here"):
        read_export(folder)
    (folder / "INCOMPLETE").unlink()
    (folder / "generator.fp32.onnx").unlink()
    with pytest.raises(ArtifactError, match="generator.fp32.onnx: no such file"):
        read_export(folder)
    (folder / "report.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="report.json: unreadable rsd-export report"):
        read_export(folder)


def test_engines_of_the_precision_by_flavour(onnx_dir, tmp_path):
    folder = copy_export(onnx_dir, tmp_path)
    report = json.loads((folder / "report.json").read_text())
    records = []
    for stage, flavour in (("encoder", "tensorrt"), ("generator", "tensorrt-rtx"), ("decoder", "tensorrt")):
        engine = folder / f"{stage}.plan"
        engine.write_bytes(b"engine")  # report.json's records name the files; they are not opened
        records.append({"stage": stage, "precision": "fp32", "flavour": flavour, "engine": str(engine), "error": None})
    records.append({"stage": "decoder", "precision": "fp32", "flavour": "tensorrt", "engine": None, "error": "failed"})
    report["tensorrt"] = {"engines": records}
    (folder / "report.json").write_text(json.dumps(report))
    exported = read_export(folder)
    assert exported.engine_files("tensorrt") == {"encoder": folder / "encoder.plan", "decoder": folder / "decoder.plan"}
    assert exported.engine_files("tensorrt-rtx") == {"generator": folder / "generator.plan"}


def test_a_graph_given_for_the_wrong_stage_or_broken_is_refused(onnx_dir, tmp_path):
    with pytest.raises(ArtifactError) as caught:
        read_stage_graph(onnx_dir / "decoder.fp32.onnx", "encoder")
    assert one_line(caught.value) == f"{onnx_dir / 'decoder.fp32.onnx'}: given for the encoder stage, but it is the decoder stage's graph"
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(ArtifactError, match="junk.onnx: not a readable ONNX file"):
        read_stage_graph(tmp_path / "junk.onnx", "encoder")
    model = onnx.load(str(onnx_dir / "decoder.fp32.onnx"))
    onnx.save(model, str(tmp_path / "decoder.fp32.onnx"), save_as_external_data=True, location="decoder.weights", size_threshold=0)
    graph = read_stage_graph(tmp_path / "decoder.fp32.onnx", "decoder")
    assert graph.weight_files == (tmp_path / "decoder.weights",)
    (tmp_path / "decoder.weights").unlink()
    with pytest.raises(ArtifactError, match="its weights file .*decoder.weights is missing"):
        read_stage_graph(tmp_path / "decoder.fp32.onnx", "decoder")


def test_graphs_of_another_export_or_model_are_refused(onnx_dir, tmp_path, micro, demo, serve_range):
    files = {s: onnx_dir / f"{s}.fp32.onnx" for s in CHAINED_STAGES}
    other = export_stage(describe_stages(micro)["encoder"], micro, tmp_path / "encoder.fp32.onnx", serve_range)
    with pytest.raises(ArtifactError) as caught:
        GraphSet.read({**files, "encoder": other})
    assert one_line(caught.value).startswith(f"{files['generator']}: rsd_deploy.source ")

    # the same metadata as the demo's graphs, but a 3-channel latent: the chain's wiring catches it
    model = onnx.load(str(other))
    set_metadata(model, **read_metadata(files["encoder"]))
    onnx.save(model, str(other))
    with pytest.raises(ArtifactError) as caught:
        GraphSet.read({**files, "encoder": other})
    assert one_line(caught.value).startswith(f"{files['generator']}: the chain feeds 'x_t' 3 channels at 1x the LR size")

    graphs = GraphSet.read(files)
    with pytest.raises(ArtifactError, match="the encoder graph's tensors"):
        graphs.check_model(micro)
    with pytest.raises(ArtifactError, match=r"exported for .*; --tile 256 \(.*\) must lie inside it"):
        graphs.check_fits(ShapeRange(height=(64, 256, 256), width=(64, 256, 256)), "--tile 256")
    assert list(GraphSet.read({"generator": files["generator"]}).graphs) == [chain.GENERATOR.name]  # a part is fine


def test_shape_range_covers():
    outer = ShapeRange(batch=(1, 2, 4), height=(64, 128, 256), width=(64, 64, 128))
    assert outer.covers(outer) and outer.covers(ShapeRange(batch=(2, 2, 4), height=(128, 128, 192), width=(64, 64, 64)))
    assert not outer.covers(ShapeRange(batch=(1, 1, 8), height=(64, 128, 256), width=(64, 64, 128)))
    assert not outer.covers(ShapeRange(batch=(1, 2, 4), height=(64, 128, 320), width=(64, 64, 128)))
    assert not outer.covers(ShapeRange(batch=(1, 2, 4), height=(64, 128, 256), width=(64, 128, 192)))
