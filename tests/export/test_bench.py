"""The rsd-bench command line: --list, --help with defaults, one-line errors with exit code 2
before any work, exit 1 with one line when nothing can run, and a small real run."""

from __future__ import annotations

import json

import pytest
import torch

from rsd_deploy.export.bench import build_parser, main


def test_list_shows_every_backend_and_its_properties(capsys):
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    by_name = {line.split()[0]: line for line in listed}
    assert "quality reference" in by_name["pytorch-fp32"] and "upstream" in by_name["upstream-resshift"]
    assert "needs GPU" in by_name["tensorrt-int8"]
    assert ("not default: compiling takes minutes" in by_name["torch-compile"]) == (not torch.cuda.is_available())


def test_help_shows_the_defaults():
    text = " ".join(build_parser().format_help().split())
    assert "--vae" in text and "--codec" not in text
    for default in ("(default: 1,2)", "(default: 64)", "(default: default)", "(default: bench)", "(default: 20)"):
        assert default in text


@pytest.mark.parametrize("args, message", [
    (["--lr-size", "100"], "--lr-size: expected multiples of 64, got 100"),
    (["--batch", "0"], "argument --batch: expected positive integers, got '0'"),
    (["--backends", "pytorch-fp32,no-such-backend"], "--backends: unknown no-such-backend; choose from"),
    (["--onnx-dir", "/nonexistent/graphs"], "--onnx-dir: /nonexistent/graphs is not a folder"),
    (["--min-iters", "5", "--iters", "2"], "--warmup / --min-iters / --iters"),
    (["--budget-s", "-1"], "--budget-s: expected >= 0"),
    (["--seed", "-1"], "--seed: expected a non-negative integer"),
    (["--large-image", "1000"], "--large-image: expected a multiple of 64, at least --tile 256, got 1000"),
    (["--large-image", "128"], "--large-image: expected a multiple of 64, at least --tile 256, got 128"),
    (["--large-image", "1024", "--tile", "32"], "--tile: expected a multiple of 64 above the overlap 32, got 32"),
    (["--large-image", "1024", "--tile-batch", "0"], "argument --tile-batch: expected positive integers, got '0'"),
    (["--checkpoint", "/nonexistent/unet.pth", "--vae", "/nonexistent/vq.pth"], "/nonexistent/unet.pth"),
    (["--preset", "tiny-rsd", "--vae", "/x.pth"], "--vae / --config go with --checkpoint"),
    (["--upstream-src", "/nonexistent/ResShift"], "--upstream-src: /nonexistent/ResShift is not a checkout of the official ResShift, "
                                                  "SinSR or RSD code (expected inference_resshift.py, configs/RSD.yaml or configs/SinSR.yaml in it)"),
])
def test_bad_options_are_one_line_exit_2(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    try:
        code = main([*args, "--out", str(out)])
    except SystemExit as exit_:  # argparse's own checks (types, choices)
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("rsd-bench: error:") and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_output_path_that_is_a_file(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    assert main(["--out", str(a_file)]) == 2
    assert "--out:" in capsys.readouterr().err and a_file.read_text() == "keep me"


def test_graph_folders_must_be_complete_rsd_export_sets(tmp_path, capsys):
    unfinished = tmp_path / "rsd-export"
    unfinished.mkdir()
    (unfinished / "report.json").write_text("{}")
    (unfinished / "INCOMPLETE").write_text("")
    assert main(["--onnx-dir", str(unfinished), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rsd-bench: error: --onnx-dir:") and "did not finish" in err and len(err.splitlines()) == 1
    assert main(["--plugin-onnx-dir", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "no report.json" in capsys.readouterr().err


def test_nothing_runnable_is_one_line_exit_1(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--backends", "tensorrt-fp16", "--batch", "1", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("rsd-bench: error: nothing could run: tensorrt-fp16: ") and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_small_run_writes_the_reports(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--preset", "tiny-rsd", "--backends", "pytorch-fp32,upstream-rsd-1step", "--batch", "1", "--iters", "1",
                 "--min-iters", "1", "--budget-s", "0", "--device", "cpu", "--threads", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "UNTRAINED" in printed and f"wrote {out / 'bench.json'}" in printed
    report = json.loads((out / "bench.json").read_text())
    assert [r["backend"] for r in report["results"]] == ["pytorch-fp32", "upstream-rsd-1step"]
    assert report["environment"]["torch_threads"] == 1 and report["grid"] == {"batch": [1], "lr_size": [64]}
    assert "| pytorch-fp32 | 1 | 64 |" in (out / "bench.md").read_text() and (out / "bench.png").is_file()
