"""rsd-upscale on the graphs of a real rsd-export folder (the bundled demo model's fp32 graphs):
the ONNX Runtime output is the PyTorch one, --tile-batch 4 is --tile-batch 1 byte for byte, the
repository the same rsd-export run wrote (--triton-repo) served by the bundled tritonserver on
loopback gives the in-process output over gRPC and HTTP, and a folder or backend that cannot run
the requested tiles says so in one line, exit 2, before any image."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from rsd_deploy.checkpoints import default_pipeline
from rsd_deploy.cli.upscale import main

pytest.importorskip("onnxruntime")

FAST = ["--tile", "64", "--overlap", "16"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A complete rsd-export folder: the demo's fp32 graphs for LR 64..128, batch 1..4, and the
    Triton repository of them it writes by default (``repository`` beside it)."""
    from rsd_deploy.export.stages import ShapeRange
    from rsd_deploy.export.workflow import ExportOptions, export_all

    root = tmp_path_factory.mktemp("artifacts")
    shapes = ShapeRange(batch=(1, 1, 4), height=(64, 64, 128), width=(64, 64, 128))
    options = ExportOptions(precision="fp32", shapes=shapes, out=root / "rsd-export", engine="none", triton_repo=root / "repository")
    report = export_all(default_pipeline(), options, log=lambda line: None)
    assert report.failures == [] and report.triton_repository["stage_backend"] == "python"
    return root / "rsd-export"


@pytest.fixture(scope="module")
def served(artifacts):
    """The bundled tritonserver serving that repository on loopback."""
    pytest.importorskip("tritonclient")
    from rsd_deploy.export.triton_server import bundled_tritonserver, triton_server

    try:
        bundled_tritonserver()
    except RuntimeError as error:
        pytest.skip(str(error))
    with triton_server(artifacts.parent / "repository") as endpoints:
        yield endpoints


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.astronaut()[40:140, 150:300]).save(folder / "astronaut.png")  # 100 x 150, padded to 128 x 192: 3 x 4 tiles of 64
    Image.fromarray(data.coffee()[100:170, 200:290]).save(folder / "coffee.png")  # 70 x 90, padded to 128 x 128: 3 x 3
    return folder


def psnr(a_path, b_path) -> float:
    a, b = (cv2.imread(str(p)).astype(np.float64) for p in (a_path, b_path))
    mse = ((a - b) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def test_onnxruntime_runs_the_torch_output(artifacts, photos, tmp_path, capsys):
    assert main([str(photos), "-o", str(tmp_path / "torch"), *FAST]) == 0
    assert main([str(photos), "-o", str(tmp_path / "ort"), *FAST, "--backend", "onnxruntime", "--artifacts", str(artifacts)]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime fp32: CPUExecutionProvider" in out and "2 images: 2 written" in out
    for name in ("astronaut_x4.png", "coffee_x4.png"):
        assert psnr(tmp_path / "torch" / name, tmp_path / "ort" / name) >= 60  # measured: over 95 dB


def test_openvino_runs_the_onnxruntime_output(artifacts, photos, tmp_path, capsys):
    pytest.importorskip("openvino", reason="the openvino extra is not installed (pip install 'rsd-deploy[openvino]')")
    graphs = ["--artifacts", str(artifacts), *FAST]
    assert main([str(photos), "-o", str(tmp_path / "ort"), "--backend", "onnxruntime", *graphs]) == 0
    assert main([str(photos), "-o", str(tmp_path / "ov"), "--backend", "openvino", *graphs]) == 0
    assert "INFERENCE_PRECISION_HINT f32" in capsys.readouterr().out
    for name in ("astronaut_x4.png", "coffee_x4.png"):
        assert psnr(tmp_path / "ort" / name, tmp_path / "ov" / name) >= 50


def test_tile_batch_4_is_tile_batch_1_on_onnxruntime(artifacts, photos, tmp_path, capsys):
    """ONNX Runtime's per-tile results do not depend on the batch: the same bytes, although the
    batches of 4 mix tiles of both images."""
    ort = ["--backend", "onnxruntime", "--artifacts", str(artifacts), *FAST]
    assert main([str(photos), "-o", str(tmp_path / "one"), *ort, "--tile-batch", "1"]) == 0
    assert main([str(photos), "-o", str(tmp_path / "four"), *ort, "--tile-batch", "4"]) == 0
    assert "tiles: 21 (64x64 LR px, overlap 16, seamless) in 6 calls of 4" in capsys.readouterr().out  # 12 + 9 tiles
    for name in ("astronaut_x4.png", "coffee_x4.png"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "four" / name).read_bytes()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_served_output_is_the_in_process_output(artifacts, served, photos, tmp_path, capsys, protocol):
    """Tiles of both images in batches of 4, 3 requests in flight; the server runs the same graphs
    in ONNX Runtime, so the PNGs are the in-process ones."""
    common = [str(photos), *FAST, "--tile-batch", "4"]
    assert main([*common, "-o", str(tmp_path / "local"), "--backend", "onnxruntime", "--artifacts", str(artifacts)]) == 0
    url = f"{protocol}://{getattr(served, protocol)}"
    assert main([*common, "-o", str(tmp_path / "served"), "--server", url, "--in-flight", "3"]) == 0
    out = capsys.readouterr().out
    assert f"served by Triton at {url}" in out and "up to 3 requests in flight" in out and "2 images: 2 written" in out
    for name in ("astronaut_x4.png", "coffee_x4.png"):
        local, remote = (cv2.imread(str(tmp_path / kind / name)).astype(int) for kind in ("local", "served"))
        assert np.abs(local - remote).max() <= 1 and (local != remote).mean() < 1e-4, name


def broken_copies(artifacts, tmp_path):
    """Folders that cannot run: name -> (folder, what the one line says)."""
    incomplete = tmp_path / "incomplete"
    shutil.copytree(artifacts, incomplete)
    (incomplete / "INCOMPLETE").write_text("")
    no_decoder = tmp_path / "no-decoder"
    shutil.copytree(artifacts, no_decoder)
    (no_decoder / "decoder.fp32.onnx").unlink()
    no_stage = tmp_path / "no-stage"
    shutil.copytree(artifacts, no_stage)
    report = json.loads((no_stage / "report.json").read_text())
    report["artifacts"] = [a for a in report["artifacts"] if a["stage"] != "decoder"]
    (no_stage / "report.json").write_text(json.dumps(report))
    return {
        "incomplete": (incomplete, "an rsd-export run did not finish here (INCOMPLETE is present)"),
        "no decoder file": (no_decoder, "decoder.fp32.onnx: no such file (the decoder graph)"),
        "no decoder stage": (no_stage, "no fp32 graph of the decoder stage"),
        "not an export": (tmp_path, "no report.json (not an rsd-export output folder)"),
    }


def test_what_cannot_run_is_one_line_before_any_image(artifacts, photos, tmp_path, capsys):
    ort = ["--backend", "onnxruntime", "--artifacts", str(artifacts)]
    cases = [
        (ort + ["--tile", "256"], "accepts batch 1..4 (opt 1), LR height 64..128 (opt 64), LR width 64..128 (opt 64); "
                                  "--tiling seamless --tile-batch 1 runs tiles of 256x256 LR px"),
        (ort + FAST + ["--tile-batch", "8"], "runs tiles of 64x64 LR px, 8 per call"),
        (ort + ["--tiling", "official"], "runs chops of 64..512 x 64..512 LR px"),
        (ort + FAST + ["--preset", "tiny-rsd"], "the encoder graph's tensors (name, channels, scale) [('lq_up', 3, 4), ('z_y', 48, 1)] "
                                                "differ from the model's [('lq_up', 3, 4), ('z_y', 3, 1)]"),
        (ort + FAST + ["--steps", "15"], "--steps 15: the exported graphs run the one-step chain"),
        (ort + FAST + ["--precision", "fp16"], "no fp16 graphs (report.json lists fp32); run rsd-export --precision fp16"),
        (["--backend", "onnxruntime", *FAST], "--backend onnxruntime runs an rsd-export folder: give --artifacts DIR"),
        (["--artifacts", str(artifacts), *FAST], "--artifacts is an rsd-export folder for --backend onnxruntime"),
        (["--server", "grpc://localhost:1", "--backend", "onnxruntime"], "--server runs the stages the server serves"),
    ]
    if not __import__("torch").cuda.is_available():
        cases.append((["--backend", "tensorrt", "--artifacts", str(artifacts)], "running TensorRT engines needs a CUDA GPU"))
    for name, (folder, reason) in broken_copies(artifacts, tmp_path / "broken").items():
        cases.append((["--backend", "onnxruntime", "--artifacts", str(folder), *FAST], reason))
    out = tmp_path / "out"
    for options, reason in cases:
        assert main([str(photos), "-o", str(out), *options]) == 2, options
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and reason in captured.err, (options, captured.err)
    assert not list(out.iterdir())


def test_bad_server_urls_are_refused_when_parsed(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--server", "localhost:8001", "-o", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --server: server URL 'localhost:8001': expected http://HOST:PORT or grpc://HOST:PORT" in err
    assert not (tmp_path / "out").exists()


def test_engines_run_their_profile_opt_shape():
    """TensorRT engines are fastest at their profile's opt shape: tiles and batch default to it;
    given ones must lie inside the profile (no GPU needed to decide)."""
    from rsd_deploy.cli.backends import Loaded
    from rsd_deploy.cli.upscale import build_parser, tile_options
    from rsd_deploy.cli.args import UsageError
    from rsd_deploy.export.stages import ShapeRange

    engines = Loaded(model=None, description="", source="--backend tensorrt --artifacts x", engine=True,
                     shape_range=ShapeRange(batch=(1, 4, 8), height=(64, 192, 256), width=(64, 128, 256)))
    parse = build_parser().parse_args
    tiles = tile_options(parse([]), engines)
    assert (tiles.shape, tiles.overlap, tiles.batch, tiles.static) == ((192, 128), 32, 4, True)
    tiles = tile_options(parse(["--tile", "256", "--tile-batch", "2"]), engines)
    assert (tiles.shape, tiles.batch) == ((256, 256), 2)
    with pytest.raises(UsageError, match="runs chops of 64..512 x 64..512 LR px, 4 per call"):
        tile_options(parse(["--tiling", "official"]), engines)
    graphs = Loaded(model=None, description="", source="--backend onnxruntime --artifacts x", shape_range=engines.shape_range)
    assert tile_options(parse([]), graphs).shape == (256, 256) and tile_options(parse([]), graphs).batch == 1  # --tile's default
