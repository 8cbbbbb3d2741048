"""The C++ path: examples/cpp/aoti_runner built with CMake against the installed torch's libtorch,
run on a PNG with an AOTInductor package of a small one-step pipeline; its PNG equals Python's."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsd_deploy.export.aoti import package_pipeline, read_png, reference_upscale
from rsd_deploy.export.stages import describe_stages

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "cpp"
TOOLCHAIN = [tool for tool in ("cmake", "g++", "make") if shutil.which(tool) is None]
PNG_HEADER = any(Path(p, "png.h").is_file() for p in ("/usr/include", "/usr/local/include"))

pytestmark = pytest.mark.skipif(
    bool(TOOLCHAIN) or not PNG_HEADER,
    reason=f"C++ toolchain incomplete: missing {TOOLCHAIN or ''}{'' if PNG_HEADER else ' libpng headers (apt-get install libpng-dev)'}",
)

SEED = 5


@pytest.fixture(scope="module")
def package(tmp_path_factory, micro_pixel_unshuffle) -> Path:
    return package_pipeline(micro_pixel_unshuffle, tmp_path_factory.mktemp("aoti") / "small.pt2", 64, 64, log=lambda line: print(line))


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Path:
    build = tmp_path_factory.mktemp("cpp-build")
    torch_root = Path(torch.__file__).parent
    began = time.perf_counter()
    subprocess.run(["cmake", "-S", str(EXAMPLES), "-B", str(build), f"-DTORCH_ROOT={torch_root}"],
                   check=True, capture_output=True, text=True, timeout=300)
    result = subprocess.run(["cmake", "--build", str(build), "--target", "aoti_runner", f"-j{os.cpu_count() or 1}"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(f"aoti_runner built in {time.perf_counter() - began:.0f} s")
    return build / "aoti_runner"


@pytest.fixture(scope="module")
def lr_png(tmp_path_factory) -> Path:
    import skimage.data

    path = tmp_path_factory.mktemp("png") / "lr.png"
    Image.fromarray(skimage.data.chelsea()[100:228:2, 150:278:2]).save(path)  # 64x64
    return path


def run(runner: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(runner), *args], capture_output=True, text=True, timeout=300)


def test_cpp_output_equals_python(runner, package, lr_png, micro_pixel_unshuffle, tmp_path):
    out_png = tmp_path / "hr.png"
    result = run(runner, str(package), str(lr_png), str(out_png), "--seed", str(SEED), "--iters", "2")
    assert result.returncode == 0, result.stderr
    assert "64x64 -> 256x256" in result.stdout
    with Image.open(out_png) as image:
        cpp = np.asarray(image.convert("RGB"))
    lr = read_png(lr_png)
    # the same package run from Python: the same kernels, so the same bits
    loaded = torch._inductor.aoti_load_package(str(package))
    assert np.array_equal(cpp, reference_upscale(loaded, micro_pixel_unshuffle, lr, SEED))
    # and the eager PyTorch pipeline: float reordering at most, i.e. one 8-bit step here and there
    eager = reference_upscale(describe_stages(micro_pixel_unshuffle)["pipeline"].module(micro_pixel_unshuffle), micro_pixel_unshuffle, lr, SEED)
    difference = np.abs(cpp.astype(np.int16) - eager.astype(np.int16))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01
    # another seed, another image: the noise really comes from the seed
    other = tmp_path / "other.png"
    assert run(runner, str(package), str(lr_png), str(other), "--seed", str(SEED + 1)).returncode == 0
    with Image.open(other) as image:
        assert not np.array_equal(np.asarray(image.convert("RGB")), cpp)


def test_cpp_runner_errors_are_one_clear_line(runner, package, lr_png, tmp_path):
    wrong_size = tmp_path / "wrong.png"
    Image.new("RGB", (80, 64)).save(wrong_size)
    result = run(runner, str(package), str(wrong_size), str(tmp_path / "x.png"))
    assert result.returncode == 1 and "compiled for 64x64" in result.stderr
    not_png = tmp_path / "not.png"
    not_png.write_text("text")
    result = run(runner, str(package), str(not_png), str(tmp_path / "x.png"))
    assert result.returncode == 1 and "not a readable PNG" in result.stderr
    assert not (tmp_path / "x.png").exists()
