"""A shared Triton repository loses nothing: only rsd-deploy's own models are ever replaced, each
swapped in whole, one writer at a time, and a writer killed while building or swapping (kill -9)
leaves complete models that load and serve; the next run finishes the update."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from rsd_deploy.export.triton_config import RepositoryError, RepositoryPlan, check_repository
from rsd_deploy.export.triton_repo import main, write_triton_repository
from rsd_deploy.export.triton_swap import MANIFEST, _locked, staging_folder

MODELS = ["rsd_decoder", "rsd_encoder", "rsd_generator", "rsd_postprocess", "rsd_preprocess", "rsd_prior", "rsd_sr"]


def parse_all(directory: Path) -> dict[str, mc.ModelConfig]:
    return {p.parent.name: text_format.Parse(p.read_text(), mc.ModelConfig()) for p in sorted(directory.glob("*/config.pbtxt"))}


@pytest.fixture(scope="module")
def plan(demo, serve_range) -> RepositoryPlan:
    return RepositoryPlan.from_pipeline(demo, serve_range)


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


def test_a_repository_left_by_a_writer_killed_mid_swap_loads_and_serves(tmp_path, demo, plan, stage_files, kill_writer):
    """Three of the seven models new, four old: the bundled tritonserver loads it and serves the
    in-process pipeline's image (to one 8-bit step)."""
    import skimage.data
    import torch
    import tritonclient.grpc as grpcclient

    from rsd_deploy.export.triton_server import triton_server

    repository = tmp_path / "models"
    write_triton_repository(repository, plan, stage_files, backend="python")
    kill_writer("_exchange", 3, repository)
    image = np.ascontiguousarray(skimage.data.astronaut()[::4, ::4][:64, :64])
    inputs = [grpcclient.InferInput("IMAGE", [1, 64, 64, 3], "UINT8"), grpcclient.InferInput("SEED", [1, 1], "INT64")]
    inputs[0].set_data_from_numpy(image[None])
    inputs[1].set_data_from_numpy(np.array([[3]], np.int64))
    with triton_server(repository) as endpoints:
        client = grpcclient.InferenceServerClient(endpoints.grpc)
        served = client.infer("rsd_sr", inputs, client_timeout=120).as_numpy("HR_IMAGE")[0]
        client.close()
    reference = demo(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, seed=3)[0].permute(1, 2, 0).numpy()
    assert np.abs(served.astype(int) - np.rint(reference * 255).astype(int)).max() <= 1
