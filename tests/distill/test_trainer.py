"""Trainer and objectives on a small pixel-space model: each objective's step, the fake-model
update, exact resume after an interruption, configs and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rsd_deploy.checkpoints import load_pipeline, save_pipeline
from rsd_deploy.distill import cli
from rsd_deploy.distill.config import DEMO_UNET, build_config
from rsd_deploy.distill.objectives import RSDObjective, add_noise_channel, encode_batch, student_timesteps
from rsd_deploy.distill.trainer import Trainer
from rsd_deploy.models.autoencoder import PixelUnshuffleCodec
from rsd_deploy.models.unet import UNetModelSwin
from rsd_deploy.pipeline import SRPipeline
from rsd_deploy.schedule import TEACHER_15

SMALL = {
    "data": {"photos": ["astronaut", "coffee"], "val_photos": ["chelsea"], "crop": 64, "val_crop": 256, "val_crops_per_image": 1},
    "optim": {"batch": 2, "ema_decay": 0.9},
    "objective": {"fake_updates": 1, "multistep": 2},
    "run": {"val_every": 0, "ckpt_every": 1, "log_every": 1, "threads": 1},
}


def _config(tmp_path, stage: str, steps: int, **sections):
    overrides = json.loads(json.dumps(SMALL))
    overrides["optim"]["steps"] = steps
    overrides["run"]["out_dir"] = str(tmp_path)
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return build_config("demo", stage, overrides=overrides)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    torch.manual_seed(0)
    unet = UNetModelSwin(**DEMO_UNET)
    unet.config = dict(DEMO_UNET)
    directory = tmp_path_factory.mktemp("teacher")
    save_pipeline(SRPipeline(unet.eval(), PixelUnshuffleCodec(), TEACHER_15, "test teacher"), directory)
    return directory


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    state = {f"{n}.{k}": v.clone() for n, net in trainer.objective.networks.items() for k, v in net.state_dict().items()}
    state.update({f"ema.{k}": v.clone() for k, v in trainer.ema.model.state_dict().items()})
    for name, optimizer in trainer.optimizers.items():
        for index, slots in optimizer.state_dict()["state"].items():
            state.update({f"opt.{name}.{index}.{k}": torch.as_tensor(v).clone() for k, v in slots.items()})
    return state


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_student_starts_as_the_teacher_whatever_the_noise_map(teacher_dir):
    teacher = load_pipeline(teacher_dir).unet
    student = add_noise_channel(teacher)
    x, lq, t = torch.randn(2, 48, 16, 16), torch.randn(2, 3, 16, 16), torch.tensor([14, 3])
    assert student.state_dict()["input_blocks.0.0.weight"].shape[1] == 48 + 3 + 1
    with torch.no_grad():
        assert torch.allclose(student(x, t, lq=lq, noise=torch.randn(2, 1, 16, 16)), teacher(x, t, lq=lq), atol=1e-6)


def test_student_timesteps_start_at_t_max():
    assert student_timesteps(15, 4) == [14, 11, 7, 3]
    assert student_timesteps(15, 1) == [14]


@pytest.mark.parametrize("method", ["rsd", "tadsr", "tsdsr"])
def test_one_step_of_each_objective_trains_the_student(tmp_path, teacher_dir, method):
    trainer = Trainer(_config(tmp_path, "student", 1, model={"teacher": str(teacher_dir)}, objective={"method": method}))
    before = {k: v.clone() for k, v in trainer.objective.student.state_dict().items()}
    values = trainer.train_step(trainer._loader())
    after = trainer.objective.student.state_dict()
    assert all(torch.isfinite(torch.tensor(v)) for v in values.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert set(trainer.objective.phases()) == set(trainer.optimizers)
    assert "student/lpips" in values


def test_teacher_step_reports_its_losses(tmp_path):
    trainer = Trainer(_config(tmp_path, "teacher", 1))
    values = trainer.train_step(trainer._loader())
    assert set(values) >= {"unet/loss", "unet/mse", "unet/grad_norm"} and values["unet/loss"] > 0


def test_fake_model_update_reduces_its_loss(teacher_dir):
    config = build_config("demo", "student", overrides=SMALL)
    pipe = load_pipeline(teacher_dir)
    objective = RSDObjective(pipe.unet, pipe.schedule, pipe.codec, None, config.objective)
    hr = torch.rand(4, 3, 64, 64)
    batch = encode_batch(pipe.codec, hr, torch.nn.functional.avg_pool2d(hr, 4))
    optimizer = torch.optim.Adam(objective.fake.parameters(), lr=1e-3)

    def loss():
        return objective.fake_loss(objective.fake, batch, torch.Generator().manual_seed(5))

    first = loss()[1]["fake_mse"]
    for _ in range(8):
        optimizer.zero_grad()
        loss()[0].backward()
        optimizer.step()
    assert loss()[1]["fake_mse"] < 0.8 * first


@pytest.mark.parametrize("stage", ["teacher", "student"])
def test_resume_after_interruption_restores_the_exact_state(tmp_path, teacher_dir, stage):
    model = {"teacher": str(teacher_dir)} if stage == "student" else {}
    straight = Trainer(_config(tmp_path / "straight", stage, 3, model=model))
    straight.fit()
    interrupted = Trainer(_config(tmp_path / "resumed", stage, 3, model=model))
    interrupted.fit(stop_after=2)  # the process "dies" here: only its checkpoint survives
    del interrupted
    resumed = Trainer(_config(tmp_path / "resumed", stage, 3, model=model))
    resumed.fit()
    assert resumed.step == straight.step == 3
    _assert_same(_state(straight), _state(resumed))


def test_a_half_written_checkpoint_is_never_resumed_from(tmp_path):
    trainer = Trainer(_config(tmp_path, "teacher", 1))
    trainer.fit()
    broken = tmp_path / "checkpoints" / "step_0000009"
    broken.mkdir()
    (broken / "unet.safetensors").write_bytes(b"truncated")  # a kill mid-write, pointer not updated
    assert Trainer(_config(tmp_path, "teacher", 1)).latest_checkpoint().name == "step_0000001"
    assert set(load_file(str(tmp_path / "checkpoints" / "step_0000001" / "unet.safetensors")))


def test_config_files_override_and_reject_unknown_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1.0e-5\n  betas: [0.8, 0.9]\nobjective:\n  method: tsdsr\n")
    config = build_config("paper", "student", path)
    assert config.optim.lr == 1e-5 and config.optim.betas == (0.8, 0.9) and config.objective.method == "tsdsr"
    assert config.model.unet["model_channels"] == 160 and config.optim.batch == 64
    path.write_text(json.dumps({"optim": {"learning_rate": 1}}))
    with pytest.raises(ValueError, match="unknown key 'learning_rate'"):
        build_config("demo", "student", path)


def test_cli_reports_bad_config_in_one_line(tmp_path, capsys):
    assert cli.main(["student", "--base", "demo", "--method", "tsdsr", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["objective"]["method"] == "tsdsr"
    assert cli.main(["student", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: no such config file" in capsys.readouterr().err
    assert cli.main(["student", "--out", str(tmp_path)]) == 2  # no teacher given
    assert "model.teacher" in capsys.readouterr().err


def test_cli_names_a_missing_image_folder(tmp_path, teacher_dir, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"data": {"hr_dirs": [str(tmp_path / "nowhere")]}}))
    assert cli.main(["teacher", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "nowhere: no such image folder" in capsys.readouterr().err
