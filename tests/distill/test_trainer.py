"""Trainer and objectives on a small pixel-space model: each objective's step, the fake-model
update, exact resume after an interruption, configs and the CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from rsd_deploy.checkpoints import load_pipeline, save_pipeline
from rsd_deploy.distill import cli
from rsd_deploy.distill.config import build_config
from rsd_deploy.distill.objectives import RSDObjective, add_noise_channel, encode_batch, student_timesteps
from rsd_deploy.distill.trainer import EMA, PairPool, Trainer
from rsd_deploy.models.autoencoder import PixelUnshuffleCodec
from rsd_deploy.models.unet import UNetModelSwin
from rsd_deploy.pipeline import SRPipeline
from rsd_deploy.presets import DEMO_UNET
from rsd_deploy.schedule import TEACHER_15

# the demo's UNet at width 32: the structure at a third of the cost
TEST_UNET = {**DEMO_UNET, "model_channels": 32, "swin_embed_dim": 32}
SMALL = {
    "model": {"unet": TEST_UNET},
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
    unet = UNetModelSwin(**TEST_UNET)
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


@pytest.mark.parametrize("stage, degradation", [("teacher", "bicubic"), ("student", "bicubic"), ("teacher", "realesrgan")])
def test_resume_after_interruption_restores_the_exact_state(tmp_path, teacher_dir, stage, degradation):
    """(realesrgan: with the training-pair pool, whose content must survive the interruption too.)"""
    model = {"teacher": str(teacher_dir)} if stage == "student" else {}
    data = {"degradation": degradation, "pool_batches": 2}
    straight = Trainer(_config(tmp_path / "straight", stage, 3, model=model, data=data))
    straight.fit()
    interrupted = Trainer(_config(tmp_path / "resumed", stage, 3, model=model, data=data))
    interrupted.fit(stop_after=2)  # the process "dies" here: only its checkpoint survives
    del interrupted
    resumed = Trainer(_config(tmp_path / "resumed", stage, 3, model=model, data=data))
    resumed.fit()
    assert resumed.step == straight.step == 3
    _assert_same(_state(straight), _state(resumed))
    if degradation == "realesrgan":
        assert torch.equal(straight.pool.hr, resumed.pool.hr) and straight.pool.filled == 4


@pytest.fixture
def two_checkpoints(tmp_path):
    """A teacher run folder holding checkpoints after steps 1 and 2."""
    Trainer(_config(tmp_path, "teacher", 2)).fit()
    return tmp_path / "checkpoints"


def _damage(checkpoints, how: str) -> None:
    newest = checkpoints / "step_0000002"
    if how == "empty latest.json":
        (checkpoints / "latest.json").write_text("")
    elif how == "truncated weights":
        data = (newest / "unet.safetensors").read_bytes()
        (newest / "unet.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "no trainer_state.pt":
        (newest / "trainer_state.pt").unlink()
    elif how == "another stage":
        config = json.loads((newest / "config.json").read_text())
        (newest / "config.json").write_text(json.dumps({**config, "stage": "student"}))
    elif how == "half-written, pointer not updated":
        broken = checkpoints / "step_0000009"
        broken.mkdir()
        (broken / "unet.safetensors").write_bytes(b"truncated")


@pytest.mark.parametrize("how", ["truncated weights", "no trainer_state.pt", "another stage", "half-written, pointer not updated"])
def test_a_damaged_checkpoint_falls_back_to_the_newest_complete_one(two_checkpoints, tmp_path, how, caplog):
    _damage(two_checkpoints, how)
    before = sorted(p.name for p in two_checkpoints.rglob("*"))
    with caplog.at_level("WARNING", logger="rsd_deploy.distill"):
        trainer = Trainer(_config(tmp_path, "teacher", 2))
    expected = 2 if how == "half-written, pointer not updated" else 1
    assert trainer.step == expected
    assert f"step_{expected:07d}" in caplog.text and "skipped" in caplog.text  # it says so
    assert sorted(p.name for p in two_checkpoints.rglob("*")) == before  # and deletes nothing


def test_an_unreadable_pointer_does_not_hide_complete_checkpoints(two_checkpoints, tmp_path):
    _damage(two_checkpoints, "empty latest.json")
    assert Trainer(_config(tmp_path, "teacher", 2)).step == 2


def test_no_usable_checkpoint_is_one_line_before_training(two_checkpoints, tmp_path, capsys):
    (two_checkpoints / "step_0000002" / "trainer_state.pt").write_bytes(b"\0" * 64)  # junk, not a torch file
    (two_checkpoints / "step_0000001" / "trainer_state.pt").unlink()
    config = tmp_path / "c.json"
    config.write_text(json.dumps(SMALL))
    assert cli.main(["teacher", "--config", str(config), "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no usable checkpoint" in error
    assert "step_0000002: trainer_state.pt unreadable" in error and "step_0000001: trainer_state.pt missing" in error
    assert "weights_only" not in error and "\x1b" not in error  # never torch's advice to unpickle


def test_a_student_run_refuses_a_teacher_run_folder(two_checkpoints, tmp_path, teacher_dir):
    with pytest.raises(ValueError, match=r"a checkpoint of a teacher stage run, this run is student stage, rsd"):
        Trainer(_config(tmp_path, "student", 2, model={"teacher": str(teacher_dir)}))


def test_ema_decay_is_constant_from_the_first_step(teacher_dir):
    """As the release: at step 0 the average moves by (1 - decay), not by a warm-up's 0.9."""
    teacher = load_pipeline(teacher_dir).unet
    ema = EMA(teacher, 0.99)
    moved = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(1.0)
    before = [p.clone() for p in ema.model.parameters()]
    ema.update(moved)
    assert all(torch.allclose(e, b + 0.01) for e, b in zip(ema.model.parameters(), before))


def test_pair_pool_fills_then_swaps_whole_pairs():
    pool = PairPool(4)
    batches = [(torch.full((2, 1, 4, 4), float(i)), torch.full((2, 1, 1, 1), float(i))) for i in range(4)]
    for hr, lr in batches[:2]:
        assert pool.swap(hr, lr, torch.Generator().manual_seed(0))[0] is hr  # filling: passed through
    hr, lr = pool.swap(*batches[2], torch.Generator().manual_seed(0))
    assert set(hr.flatten().tolist()) <= {0.0, 1.0} and torch.equal(hr[:, :, 0, 0], lr[:, :, 0, 0])  # pairs stay pairs
    assert sorted(pool.hr[:, 0, 0, 0].tolist()).count(2.0) == 2  # the new batch went in


def _count_student_calls(objective, batch, seed: int):
    calls = []
    original = objective.student.forward

    def spy(x, t, lq=None, noise=None):
        calls.append((int(t[0]), noise.clone()))
        return original(x, t, lq=lq, noise=noise)

    objective.student.forward = spy
    try:
        with torch.no_grad():
            objective.student_x0(objective.student, batch, torch.Generator().manual_seed(seed), grad=False)
    finally:
        del objective.student.forward
    return calls


@pytest.mark.parametrize("x_true", [True, False])
def test_student_inputs_follow_the_release(teacher_dir, x_true):
    """multistep_x_true: a later timestep's input is the noised real HR latent, so the student runs
    once; otherwise it runs its own chain. Either way one noise map per micro-batch."""
    pipe = load_pipeline(teacher_dir)
    config = build_config("demo", "student", overrides={**SMALL, "objective": {"multistep": 4, "multistep_x_true": x_true}})
    objective = RSDObjective(pipe.unet, pipe.schedule, pipe.codec, None, config.objective)
    hr = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    batch = encode_batch(pipe.codec, hr, torch.nn.functional.avg_pool2d(hr, 4))
    lengths = set()
    for seed in range(12):
        calls = _count_student_calls(objective, batch, seed)
        lengths.add(len(calls))
        assert all(torch.equal(noise, calls[0][1]) for _, noise in calls)
        assert calls[-1][0] in student_timesteps(15, 4)
    assert lengths == ({1} if x_true else {1, 2, 3, 4})


def test_an_rsd_training_checkpoint_starts_the_student_stage(tmp_path, teacher_dir):
    """model_N.pth (trainer.py's save_ckpt layout, DDP keys, the fake inside the unpublished GAN
    wrapper) and its ema_ckpts/ema_model_N.pth: student, fake UNet, EMA and step carry over."""
    teacher = load_pipeline(teacher_dir).unet
    torch.manual_seed(3)
    student, fake, ema = add_noise_channel(teacher), copy.deepcopy(teacher), add_noise_channel(teacher)
    with torch.no_grad():
        for net in (student, fake, ema):
            for param in net.parameters():
                param.add_(0.01 * torch.randn_like(param))
    (tmp_path / "release" / "ckpts").mkdir(parents=True)
    (tmp_path / "release" / "ema_ckpts").mkdir()
    path = tmp_path / "release" / "ckpts" / "model_1000.pth"
    torch.save({"iters_start": 1000, "log_step": {"train": 1000, "val": 1},
                "state_dict": {"student": {f"module.{k}": v for k, v in student.state_dict().items()},
                               "fake": {**{f"module.model.{k}": v for k, v in fake.state_dict().items()},
                                        "module.head.weight": torch.zeros(1, 8)}}}, path)
    torch.save({f"module.{k}": v for k, v in ema.state_dict().items()}, tmp_path / "release" / "ema_ckpts" / "ema_model_1000.pth")
    trainer = Trainer(_config(tmp_path / "run", "student", 1001, model={"teacher": str(teacher_dir), "init": str(path)}))
    assert trainer.step == 1000
    for mine, theirs in [(trainer.objective.student, student), (trainer.objective.fake.unet, fake), (trainer.ema.model, ema)]:
        _assert_same(mine.state_dict(), theirs.state_dict())
