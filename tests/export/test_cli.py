"""rsd-export end to end on a micro checkpoint directory (saved with save_pipeline): the report,
one-line errors before any work, exit codes, and a folder that says when a run did not finish."""

import json
import os
import signal
import subprocess
import sys
import time

import onnx
import pytest
import torch

from rsd_deploy.checkpoints import save_pipeline
from rsd_deploy.export.cli import main
from rsd_deploy.export.workflow import INCOMPLETE_MARKER, ExportOptions, OptionError, check_complete, export_all


@pytest.fixture(scope="module")
def checkpoint(micro_pixel_unshuffle, tmp_path_factory):
    """A pixel-unshuffle pipeline (like the bundled demo model) saved as a checkpoint directory."""
    directory = tmp_path_factory.mktemp("ckpt") / "micro"
    save_pipeline(micro_pixel_unshuffle, directory)
    return directory


def test_int8_export_end_to_end(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["--checkpoint", str(checkpoint), "--precision", "int8", "--lr-size", "64,64,128", "--engine", "none",
                 "--batch", "1,1,2", "--calib-count", "2", "--eval-count", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "UNTRAINED" in printed and "TensorRT engines not requested" in printed and "trtexec --onnx=" in printed
    for stage in ("encoder", "generator", "decoder"):
        for precision in ("fp32", "int8"):
            onnx.checker.check_model(str(out / f"{stage}.{precision}.onnx"))
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["untrained"] and report["precision"] == "int8" and report["failures"] == []
    assert len(report["parity"]) == 6 and all(row["relative_l2"] < 1e-4 for row in report["parity"])
    assert "scikit-image bundled photos" in report["calibration"]["source"]
    rows = {row["graphs"]: row for row in report["quality"]["rows"]}
    assert set(rows) == {"encoder+generator+decoder"}
    assert all(row["psnr_db"] > 10 for row in rows.values())
    assert report["tensorrt"]["built"] is False and "--stronglyTyped" in report["tensorrt"]["commands"][0]["trtexec"]
    markdown = (out / "report.md").read_text()
    assert "UNTRAINED WEIGHTS" in markdown and "## FP32 parity" in markdown
    assert not [p for p in out.iterdir() if ".partial" in p.name] and not (out / INCOMPLETE_MARKER).exists()
    check_complete(out)


def test_bad_checkpoint_is_one_line_error(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "missing.pth"), "--vae", str(tmp_path / "vq.pth"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rsd-export: error:") and "missing.pth" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--stages", "encoder,unet"], "unknown stage"),
    (["--lr-size", "64,96,128"], "multiples of 64"),
    (["--lr-size", "64,x,128"], "--lr-size: expected N or MIN,OPT,MAX integers"),
    (["--precision", "int8", "--calib-count", "0"], "--calib-count: expected at least 1"),
    (["--precision", "fp16", "--eval-count", "0"], "--eval-count: expected at least 1"),
    (["--crop", "100"], "--crop: expected a positive multiple of 256"),
    (["--lr-size", "64,128,256", "--crop", "256"], "smaller than 4x the LR opt size"),
    (["--precision", "int8", "--calib-dir", "/nonexistent/div2k"], "--calib-dir: /nonexistent/div2k is not a folder"),
    (["--seed", "-1"], "--seed: expected a non-negative integer"),
    (["--opt-level", "9"], "--opt-level: expected 0..5"),
    (["--engine", "tensorrt", "--compute-capability", "sm89"], "--compute-capability applies to TensorRT for RTX"),
    (["--attention", "plugin", "--precision", "fp16"], "--precision fp32"),
])
def test_bad_options_are_refused_before_any_work(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    started = time.perf_counter()
    assert main(["--preset", "tiny-rsd", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rsd-export: error:") and message in err and len(err.splitlines()) == 1
    assert not out.exists() and time.perf_counter() - started < 20  # nothing exported, nothing written


def test_bad_output_paths_are_one_line_errors(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    cases = [
        (["--out", str(a_file)], "--out:", "exists and is not a folder"),
        (["--out", str(a_file / "sub")], "--out:", "is a file, not a folder"),
        (["--out", str(link)], "--out:", "symbolic link"),
        (["--out", str(tmp_path / "o"), "--triton-repo", str(a_file)], "--triton-repo:", "exists and is not a folder"),
        (["--out", str(tmp_path / "o"), "--triton-repo", str(tmp_path / "o")], "--triton-repo:", "another folder"),
    ]
    for args, option, message in cases:
        assert main(["--preset", "tiny-rsd", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert option in err and message in err and len(err.splitlines()) == 1
    assert a_file.read_text() == "keep me" and not (tmp_path / "o").exists()


def test_non_finite_outputs_fail_the_export(micro, tmp_path):
    """A model that overflows gives NaN / Inf: the parity check fails instead of passing silently."""
    import copy

    broken = copy.deepcopy(micro)
    with torch.no_grad():
        broken.unet.out[2].weight.fill_(3e38)  # x0 overflows to inf
    options = ExportOptions(precision="fp32", stages=("generator",), out=tmp_path, engine="none")
    report = export_all(broken, options, log=lambda line: None)
    assert report.failures and "generator fp32 parity" in report.failures[0]
    assert "## Failed checks" in (tmp_path / "report.md").read_text()


def test_killed_run_leaves_the_folder_marked_incomplete(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "rsd_deploy.export.cli", "--preset", "tiny-rsd", "--precision", "fp32",
               "--stages", "all", "--engine", "none", "--lr-size", "64", "--batch", "1", "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "encoder.fp32.onnx").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (out / INCOMPLETE_MARKER).is_file()
    with pytest.raises(OptionError, match="did not finish"):
        check_complete(out)
    assert main(command[3:]) == 0  # a re-run completes the set and removes the marker
    check_complete(out)
    assert not [p for p in os.listdir(out) if ".partial" in p]


def test_plugin_attention_export(checkpoint, tmp_path, capsys):
    from rsd_deploy.kernels.onnx_custom_op import plugin_nodes

    out = tmp_path / "plugin"
    code = main(["--checkpoint", str(checkpoint), "--precision", "fp32", "--attention", "plugin", "--stages", "generator",
                 "--lr-size", "64", "--batch", "1", "--engine", "none", "--out", str(out)])
    assert code == 0 and "skipped (plugin attention" in capsys.readouterr().out
    assert len(plugin_nodes(onnx.load(str(out / "generator.fp32.onnx")))) == 6


def test_triton_repository_written_beside_the_graphs(checkpoint, tmp_path, capsys):
    from rsd_deploy.export.triton_config import check_repository

    out, repo = tmp_path / "out", tmp_path / "repo"
    code = main(["--checkpoint", str(checkpoint), "--precision", "fp32", "--lr-size", "64", "--batch", "1", "--engine", "none",
                 "--out", str(out), "--triton-repo", str(repo)])
    assert code == 0 and "Triton model repository (python stages)" in capsys.readouterr().out
    configs = check_repository(repo)  # every config.pbtxt parsed by Triton's own protobuf
    assert {"rsd_sr", "rsd_encoder", "rsd_generator", "rsd_decoder"} <= set(configs)
    assert json.loads((out / "report.json").read_text())["triton_repository"]["stage_backend"] == "python"  # loads in the bundled tritonserver


def test_single_input_graph(checkpoint, tmp_path, capsys):
    from rsd_deploy.export.parity import run_onnx
    from rsd_deploy.export.stages import SINGLE_INPUT

    out = tmp_path / "single"
    assert main(["--checkpoint", str(checkpoint), "--precision", "fp32", "--stages", "encoder", "--single-input", "--out", str(out)]) == 2
    assert "--single-input bakes the noise into the fused graph" in capsys.readouterr().err
    code = main(["--checkpoint", str(checkpoint), "--precision", "fp32", "--stages", "pipeline", "--single-input", "--lr-size", "64,64,128",
                 "--batch", "1", "--engine", "none", "--out", str(out)])
    assert code == 0
    graph = onnx.load(str(out / f"{SINGLE_INPUT}.fp32.onnx"))
    assert [i.name for i in graph.graph.input] == ["lr"]
    report = json.loads((out / "report.json").read_text())
    assert {row["stage"] for row in report["parity"]} == {SINGLE_INPUT} and report["failures"] == []
    lr = torch.rand(1, 3, 50, 70)  # any size up to the maximum: padded inside
    assert run_onnx(out / f"{SINGLE_INPUT}.fp32.onnx", {"lr": lr})[0].shape == (1, 3, 200, 280)


def test_a_users_model_in_the_triton_repository_is_refused_before_any_work(tmp_path, capsys):
    repo = tmp_path / "repo"
    (repo / "rsd_encoder").mkdir(parents=True)
    (repo / "rsd_encoder" / "config.pbtxt").write_text('name: "rsd_encoder"\n')
    out = tmp_path / "out"
    assert main(["--preset", "tiny-rsd", "--precision", "fp32", "--engine", "none", "--out", str(out), "--triton-repo", str(repo)]) == 2
    err = capsys.readouterr().err.strip()
    assert "rsd_encoder" in err and "did not write" in err and len(err.splitlines()) == 1
    assert not out.exists() and (repo / "rsd_encoder" / "config.pbtxt").read_text() == 'name: "rsd_encoder"\n'


def test_triton_backend_tensorrt_needs_tensorrt_engines(tmp_path, capsys):
    assert main(["--preset", "tiny-rsd", "--engine", "none", "--out", str(tmp_path / "o"), "--triton-repo", str(tmp_path / "r"),
                 "--triton-backend", "tensorrt"]) == 2
    assert "--triton-backend tensorrt serves TensorRT 10/11 plans" in capsys.readouterr().err


def test_a_fresh_process_prints_no_converter_logging(checkpoint, tmp_path):
    """As a user runs it: a new interpreter, whose modelopt.onnx logger brings its own console
    handler; the fp16 conversion's per-node INFO lines (61 for the tiny generator) must not reach
    the console, its warnings appear once each as 'ModelOpt: ...' lines."""
    run = subprocess.run([sys.executable, "-m", "rsd_deploy.export.cli", "--checkpoint", str(checkpoint), "--stages", "generator",
                          "--precision", "fp16", "--engine", "none", "--lr-size", "64", "--batch", "1", "--calib-count", "1",
                          "--eval-count", "1", "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    printed = run.stdout + run.stderr
    assert "[modelopt]" not in printed and " - INFO - " not in printed, printed[:2000]
