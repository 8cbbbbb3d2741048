"""rsd-export end to end on a micro checkpoint directory (saved with save_pipeline)."""

import json

import onnx
import pytest

from rsd_deploy.checkpoints import save_pipeline
from rsd_deploy.export.cli import main


@pytest.fixture(scope="module")
def checkpoint(micro_pixel_unshuffle, tmp_path_factory):
    """A pixel-unshuffle pipeline (like the bundled demo model) saved as a checkpoint directory."""
    directory = tmp_path_factory.mktemp("ckpt") / "micro"
    save_pipeline(micro_pixel_unshuffle, directory)
    return directory


def test_int8_export_end_to_end(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["--checkpoint", str(checkpoint), "--precision", "int8", "--lr-size", "64,64,128",
                 "--batch", "1,1,2", "--calib-count", "2", "--eval-count", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "UNTRAINED" in printed and "TensorRT engines" in printed and "trtexec --onnx=" in printed
    for stage in ("encoder", "generator", "decoder"):
        for precision in ("fp32", "int8"):
            onnx.checker.check_model(str(out / f"{stage}.{precision}.onnx"))
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["untrained"] and report["precision"] == "int8"
    assert len(report["parity"]) == 6 and all(row["relative_l2"] < 1e-4 for row in report["parity"])
    assert "scikit-image bundled photos" in report["calibration"]["source"]
    rows = {row["graphs"]: row for row in report["quality"]["rows"]}
    assert set(rows) == {"encoder+generator+decoder"}
    assert all(row["psnr_db"] > 10 for row in rows.values())
    assert report["tensorrt"]["built"] is False and "--stronglyTyped" in report["tensorrt"]["commands"][0]["trtexec"]
    markdown = (out / "report.md").read_text()
    assert "UNTRAINED WEIGHTS" in markdown and "## FP32 parity" in markdown
    assert not [p for p in out.iterdir() if ".partial" in p.name]


def test_bad_checkpoint_is_one_line_error(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "missing.pth"), "--vae", str(tmp_path / "vq.pth"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rsd-export: error:") and "missing.pth" in err and len(err.splitlines()) == 1


def test_bad_arguments(tmp_path, capsys):
    assert main(["--preset", "tiny-rsd", "--stages", "encoder,unet", "--out", str(tmp_path)]) == 2
    assert "unknown stage" in capsys.readouterr().err
    assert main(["--preset", "tiny-rsd", "--lr-size", "64,96,128", "--out", str(tmp_path)]) == 2
    assert "multiples of 64" in capsys.readouterr().err


def test_plugin_attention_export(checkpoint, tmp_path, capsys):
    from rsd_deploy.kernels.onnx_custom_op import plugin_nodes

    out = tmp_path / "plugin"
    code = main(["--checkpoint", str(checkpoint), "--precision", "fp32", "--attention", "plugin", "--stages", "generator",
                 "--lr-size", "64", "--batch", "1", "--out", str(out)])
    assert code == 0 and "skipped (plugin attention" in capsys.readouterr().out
    assert len(plugin_nodes(onnx.load(str(out / "generator.fp32.onnx")))) == 6
    assert main(["--checkpoint", str(checkpoint), "--precision", "fp16", "--attention", "plugin", "--out", str(out)]) == 2
    assert "--precision fp32" in capsys.readouterr().err


def test_triton_repository_written_beside_the_graphs(checkpoint, tmp_path, capsys):
    from rsd_deploy.export.triton_repo import check_repository

    out, repo = tmp_path / "out", tmp_path / "repo"
    code = main(["--checkpoint", str(checkpoint), "--precision", "fp32", "--lr-size", "64", "--batch", "1",
                 "--out", str(out), "--triton-repo", str(repo)])
    assert code == 0 and "Triton model repository (onnxruntime stages)" in capsys.readouterr().out
    configs = check_repository(repo)  # every config.pbtxt parsed by Triton's own protobuf
    assert {"rsd_sr", "rsd_encoder", "rsd_generator", "rsd_decoder"} <= set(configs)
    assert json.loads((out / "report.json").read_text())["triton_repository"]["stage_backend"] == "onnxruntime"
