"""Training configs: the released recipe's values, overrides that merge, and one-line errors for
bad values before any model is built."""

from __future__ import annotations

import json

import pytest

from rsd_deploy.distill.config import build_config
from rsd_deploy.presets import DEMO_UNET, REALSR_X4_UNET


def _yaml(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_rsd_official_is_the_released_recipe():
    """RSD.yaml (train, model, diffusion sections) and trainer.py (RSDTrainer), value by value."""
    config = build_config("rsd-official", "student")
    optim, objective, data, run = config.optim, config.objective, config.data, config.run
    assert (optim.lr, optim.fake_lr, optim.betas, optim.weight_decay) == (5e-5, 5e-5, (0.9, 0.95), 0.0)  # lr, betas, weight_decay; one lr for both AdamWs
    assert (optim.batch, optim.batch // optim.grad_accum // 4, optim.steps) == (64, 8, 3000)  # batch [64, ..], microbatch 8 on 4 GPUs, iterations
    assert (optim.ema_decay, optim.warmup, optim.cosine) == (0.999, 0, False)  # ema_rate, scheduler "none"
    assert optim.grad_clip == 0  # trainer.py never clips
    assert run.precision == "fp32" and run.seed == 123456  # use_fp16: False, seed
    assert (objective.method, objective.fake_updates, objective.multistep) == ("rsd", 5, 4)  # n_fake_loop, diffusion num_steps
    assert (objective.lpips_weight, objective.gan_weight, objective.gan_d_weight, objective.mse_weight) == (2.0, 3e-3, 3e-3, 0.0)
    assert objective.multistep_x_true  # true_data: True
    assert (data.crop, data.degradation, data.hflip, data.rot, data.rescale_gt) == (256, "realesrgan", True, False, True)
    assert config.model.unet == REALSR_X4_UNET and config.model.schedule == {"steps": 15, "min_noise": 0.04, "kappa": 2.0}
    assert (run.ckpt_every, run.val_every, run.log_every) == (1000, 1000, 1)  # save_freq, val_freq, log_freq[0]


def test_the_demo_keeps_the_release_recipe_where_scale_allows():
    config = build_config("demo", "student")
    assert config.objective.gan_d_weight == 3e-3 and config.optim.grad_clip == 0 and config.run.precision == "fp32"
    assert config.objective.multistep_x_true and config.objective.fake_updates == 5


def test_files_override_and_reject_unknown_keys(tmp_path):
    path = _yaml(tmp_path, "optim:\n  lr: 5e-5\n  betas: [0.8, 0.9]\nobjective:\n  method: tsdsr\n")  # YAML 1.1 reads 5e-5 as a string
    config = build_config("rsd-official", "student", path)
    assert config.optim.lr == 5e-5 and config.optim.betas == (0.8, 0.9) and config.objective.method == "tsdsr"
    path.write_text(json.dumps({"optim": {"learning_rate": 1}}))
    with pytest.raises(ValueError, match="unknown key 'learning_rate'"):
        build_config("demo", "student", path)


def test_unet_overrides_merge_into_the_base():
    config = build_config("demo", "teacher", overrides={"model": {"unet": {"model_channels": 48, "swin_embed_dim": 48}}})
    assert config.model.unet == {**DEMO_UNET, "model_channels": 48, "swin_embed_dim": 48}


@pytest.mark.parametrize("unet, message", [
    ({"model_chanels": 64}, "unknown key 'model_chanels'"),  # a typo is not silently ignored
    ({"in_channels": 3, "out_channels": 3}, "in_channels is 3, but the codec's latent has 48 channels"),
])
def test_unet_keys_and_channels_are_checked(unet, message):
    with pytest.raises(ValueError, match=message):
        build_config("demo", "teacher", overrides={"model": {"unet": unet}})


@pytest.mark.parametrize("text, message", [
    ("run:\n  ckpt_every: 0\n", r"config.run.ckpt_every: expected >= 1, got 0"),
    ("run:\n  log_every: 0\n", r"config.run.log_every: expected >= 1, got 0"),
    ("optim:\n  lr: abc\n", r"optim.lr: expected a number, got 'abc'"),
    ("optim:\n  lr: -1.0\n", r"config.optim.lr: expected a positive learning rate"),
    ("optim:\n  steps: 2.5\n", r"optim.steps: expected an integer, got 2.5"),
    ("data:\n  crop: 66\n", r"config.data.crop: expected a positive multiple of 4"),
    ("data:\n  crop: 96\n", r"config.data.crop: 96 gives a 24 px latent, .* needs a multiple of 16: use a multiple of 64"),
    ("- optim\n- lr\n", r"expected a mapping of config sections, got list"),
    ("optim: 3\n", r"optim: expected a mapping, got int"),
    ("run:\n  precision: fp8\n", r"config.run.precision: expected one of fp32, bf16, fp16, got 'fp8'"),
    ("objective:\n  multistep_x_true: 1\n", r"multistep_x_true: expected true or false"),
])
def test_bad_values_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(ValueError, match=message) as error:
        build_config("demo", "student", _yaml(tmp_path, text))
    assert "\n" not in str(error.value)


def test_the_real_unet_needs_crops_of_256(tmp_path):
    with pytest.raises(ValueError, match=r"data.crop: 128 gives a 32 px latent, .* multiple of 64: use a multiple of 256"):
        build_config("rsd-official", "student", _yaml(tmp_path, "data:\n  crop: 128\n"))
