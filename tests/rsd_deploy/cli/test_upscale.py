"""rsd-upscale end to end: kinds of images kept, nothing overwritten, bad inputs and options
reported in one line before any work, the batch goes on. The bundled demo model (no --preset)
is the fastest real model on a CPU."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from rsd_deploy.checkpoints import default_pipeline, save_pipeline
from rsd_deploy.cli.upscale import main, plan_jobs
from rsd_deploy.models.autoencoder import PixelUnshuffleCodec
from rsd_deploy.models.unet import UNetModelSwin
from rsd_deploy.pipeline import SRPipeline
from rsd_deploy.presets import TINY_UNET
from rsd_deploy.schedule import TEACHER_15

ESCAPE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")  # any control character but the newline


def small_photo(path, seed: int = 0, size=(20, 24)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8)).save(path)


def test_batch_with_good_and_bad_inputs(tmp_path, capsys, declared_png):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    declared_png(src / "a_bomb.png", 100_000, 100_000)  # Pillow's DecompressionBombError
    declared_png(src / "b_big.png", 6000, 6000)  # under Pillow's limit, over --max-pixels
    Image.fromarray((rng.random((20, 24)) * 255).astype(np.uint8)).save(src / "gray.png")
    Image.fromarray((rng.random((20, 24, 4)) * 255).astype(np.uint8)).save(src / "rgba.png")
    cv2.imwrite(str(src / "deep.png"), (rng.random((12, 16, 3)) * 65535).astype(np.uint16))
    (src / "notes.png").write_text("not an image")
    (src / "\x1b[31mred.png").write_text("a terminal escape in a file name")
    good = (src / "gray.png").read_bytes()
    (src / "cut.png").write_bytes(good[: len(good) // 2])
    out = tmp_path / "out"
    code = main([str(src), str(tmp_path / "absent.png"), "-o", str(out)])
    assert code == 1
    captured = capsys.readouterr()
    err = captured.err
    for name, reason in [
        ("a_bomb.png", "declares more pixels than Pillow's decompression-bomb limit"),
        ("b_big.png", "6000x6000 is 36000000 pixels, over the limit of 16777216; not decoded (--max-pixels 16777216)"),
        ("notes.png", "not an image"),
        ("cut.png", "truncated"),
        ("absent.png", "no such file"),
        ("\\x1b[31mred.png", "not an image"),
    ]:
        line = next(l for l in err.splitlines() if name in l)
        assert reason in line
    assert not ESCAPE.search(captured.out + captured.err)
    assert "9 images: 3 written, 0 skipped, 6 failed" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["deep_x4.png", "gray_x4.png", "rgba_x4.png"]
    gray = cv2.imread(str(out / "gray_x4.png"), cv2.IMREAD_UNCHANGED)
    rgba = cv2.imread(str(out / "rgba_x4.png"), cv2.IMREAD_UNCHANGED)
    deep = cv2.imread(str(out / "deep_x4.png"), cv2.IMREAD_UNCHANGED)
    assert gray.shape == (80, 96) and gray.dtype == np.uint8
    assert rgba.shape == (80, 96, 4)
    assert deep.shape == (48, 64, 3) and deep.dtype == np.uint16


def test_output_names_mirror_folders_and_never_repeat(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    names = ["a/photo.png", "a/Photo.JPG", "a/photo_2.png", "a/pic.png", "a/sub/photo.png", "a/x4/old_x4.png", "b/photo.png"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    out = a / "x4"  # inside an input folder: never searched
    jobs = plan_jobs([str(a), str(b), str(a / "pic.png")], out)
    assert [(str(Path(j.name).relative_to(tmp_path)), str(j.target.relative_to(out))) for j in jobs] == [
        ("a/Photo.JPG", "Photo_x4.png"),
        ("a/photo.png", "photo_2_x4.png"),  # a case-insensitive file system would merge it with Photo_x4
        ("a/photo_2.png", "photo_2_2_x4.png"),
        ("a/pic.png", "pic_x4.png"),
        ("a/sub/photo.png", "sub/photo_x4.png"),  # the tree under a folder is mirrored
        ("b/photo.png", "photo_3_x4.png"),  # a/pic.png given again by name: once is enough
    ]


def test_outputs_never_collide_or_replace(tmp_path, capsys):
    """photo.png in two folders, pic.png beside pic.jpg: one output each. A second run with -o
    inside an input folder skips what the first wrote and never reads it as an input."""
    a, b = tmp_path / "a", tmp_path / "b"
    for index, path in enumerate([a / "photo.png", b / "photo.png", a / "pic.png", a / "pic.jpg"]):
        small_photo(path, seed=index)
    out = a / "x4"
    fast = ["--tile", "64"]  # the names are the point here, not the tiles
    assert main([str(a), str(b), "-o", str(out), *fast]) == 0
    first = capsys.readouterr().out
    assert "4 images: 4 written, 0 skipped, 0 failed" in first
    outputs = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(outputs) == ["photo_2_x4.png", "photo_x4.png", "pic_2_x4.png", "pic_x4.png"]
    assert f"{a / 'pic.jpg'} -> {out / 'pic_x4.png'}" in first and f"{b / 'photo.png'} -> {out / 'photo_2_x4.png'}" in first
    assert len(set(outputs.values())) == 4  # four different pictures

    (out / "pic_2_x4.png").unlink()
    (out / "photo_x4.png").write_bytes(b"the user's own file")
    assert main([str(a), str(b), "-o", str(out), *fast]) == 0
    second = capsys.readouterr().out
    assert "4 images: 1 written, 3 skipped, 0 failed" in second
    assert f"{out / 'photo_x4.png'} exists (--overwrite replaces it)" in second
    assert (out / "photo_x4.png").read_bytes() == b"the user's own file"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {**outputs, "photo_x4.png": b"the user's own file"}

    assert main([str(a / "photo.png"), "-o", str(out), "--overwrite", *fast]) == 0
    assert "1 images: 1 written" in capsys.readouterr().out
    assert (out / "photo_x4.png").read_bytes() == outputs["photo_x4.png"]


@pytest.mark.parametrize(
    "option,value,expected",
    [
        ("--tile-batch", "-1", "argument --tile-batch: expected an integer >= 1, got -1"),
        ("--tile-batch", "0", "argument --tile-batch: expected an integer >= 1, got 0"),
        ("--tile", "100", "argument --tile: expected a multiple of 64 >= 64, got 100"),
        ("--tile", "0", "argument --tile: expected a multiple of 64 >= 64, got 0"),
        ("--overlap", "-1", "argument --overlap: expected an integer >= 0, got -1"),
        ("--overlap", "256", "argument --overlap: expected less than --tile (256), got 256"),
        ("--steps", "0", "argument --steps: expected an integer >= 1, got 0"),
        ("--seed", "-1", "argument --seed: expected an integer >= 0, got -1"),
        ("--seed", "1.5", "argument --seed: expected an integer >= 0, got '1.5'"),
        ("--max-pixels", "0", "argument --max-pixels: expected an integer from 1 to"),
    ],
)
def test_numeric_options_are_checked_when_parsed(tmp_path, capsys, option, value, expected):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), option, value, "-o", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rsd-upscale: error: ") and expected in err
    assert not (tmp_path / "out").exists()


def test_output_folder_problems_are_found_before_the_model(tmp_path, capsys):
    photo = tmp_path / "in" / "photo.png"
    small_photo(photo)
    (tmp_path / "file").write_text("a file")
    for out, reason in [
        (tmp_path / "file", "exists and is not a folder"),
        (tmp_path / "file" / "sub", "cannot create the folder"),
        (tmp_path / "in", "is an input folder"),
    ]:
        assert main([str(tmp_path / "in"), "-o", str(out)]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and reason in captured.err  # no model loaded
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["photo.png"]


def _triton_interpreting() -> bool:
    from rsd_deploy.kernels import window_attention

    return window_attention.INTERPRET


def test_a_model_that_cannot_run_is_found_before_the_first_image(tmp_path, capsys):
    small_photo(tmp_path / "in" / "photo.png")
    out = tmp_path / "out"
    cases = [(["--steps", "3"], "got 3")]
    if not torch.cuda.is_available():
        cases += [(["--device", "cuda"], "--device cuda: no CUDA GPU")]
        if not _triton_interpreting():  # the kernel tests' TRITON_INTERPRET=1 lets CPU tensors run it (slowly)
            cases += [(["--attention", "triton"], "needs CUDA tensors")]
    for options, reason in cases:
        assert main([str(tmp_path / "in"), "-o", str(out), *options]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and reason in err
    assert not list(out.iterdir())


def test_an_overflow_is_an_error_not_a_black_image(tmp_path, capsys):
    pipe = default_pipeline()
    with torch.no_grad():
        pipe.unet.out[-1].weight.fill_(1e38)  # finite weights (the loader accepts them), Inf outputs
    save_pipeline(pipe, tmp_path / "overflows")
    small_photo(tmp_path / "in" / "photo.png")
    assert main([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "overflows")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "generated latent has NaN/Inf values" in err
    assert not list((tmp_path / "out").iterdir())


def test_bad_checkpoint_is_one_line(tmp_path, capsys):
    bogus = tmp_path / "model.pth"
    bogus.write_bytes(b"garbage")
    assert main(["--checkpoint", str(bogus), "--vae", str(bogus), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.pth" in err


# the child reports its own peak RSS (KiB on Linux) after the run
PEAK_RSS = ("import resource, sys; from rsd_deploy.cli.upscale import main; code = main(sys.argv[1:]); "
            "print('peak KiB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")


@pytest.mark.slow
def test_a_4000x3000_image_streams_in_bounded_memory(tmp_path):
    """A 4000 x 3000 photo becomes a 16000 x 12000 PNG, strip by strip: the process never holds
    the output (its float32 canvas alone would be 2.1 GiB). Peak memory is set by one row of
    tiles (the model's activations for a 512-px tile and the strip being blended), so the whole
    image may need little more than its first row alone (4000 x 512); holding the canvas would
    add about 1.8 GiB. Measured: 2.93 vs 2.59 GiB. A one-level UNet with the parameter-free codec
    (the real UNet code path) keeps it within minutes."""
    from skimage import data

    torch.manual_seed(0)
    unet = UNetModelSwin(**{**TINY_UNET, "in_channels": 48, "out_channels": 48, "channel_mult": [1], "num_res_blocks": [1],
                            "attention_resolutions": [64]}).eval()
    save_pipeline(SRPipeline(unet, PixelUnshuffleCodec(), TEACHER_15, "UNTRAINED: one-level test model"), tmp_path / "model")
    photo = Image.fromarray(data.astronaut()).resize((4000, 3000), Image.BICUBIC)
    photo.save(tmp_path / "big.png")
    photo.crop((0, 0, 4000, 512)).save(tmp_path / "row.png")

    def peak_gib(name: str) -> float:
        run = subprocess.run([sys.executable, "-c", PEAK_RSS, str(tmp_path / f"{name}.png"), "-o", str(tmp_path / "out"),
                              "--checkpoint", str(tmp_path / "model"), "--tile", "512"], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return int(run.stdout.split("peak KiB")[-1]) / 2**20

    row, whole = peak_gib("row"), peak_gib("big")
    with Image.open(tmp_path / "out" / "big_x4.png") as image:
        assert image.size == (16000, 12000)
    assert whole - row < 0.75, (whole, row)
