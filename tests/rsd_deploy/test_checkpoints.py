"""Checkpoint formats in and out: official layouts, wrappers, prefixes, our safetensors."""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict

import pytest
import torch

from rsd_deploy.checkpoints import (
    BUNDLED_DIR,
    CheckpointError,
    load_codec,
    load_pipeline,
    load_unet,
    read_state_dict,
    read_training_checkpoint,
    save_module,
    save_pipeline,
    split_unet,
)
from rsd_deploy.models.autoencoder import VQ_F4_CONFIG, PixelUnshuffleCodec, VQAutoencoder, build_codec, codec_kind, convert_ldm_vq_state_dict
from rsd_deploy.models.unet import UNetModelSwin
from rsd_deploy.pipeline import SRPipeline
from rsd_deploy.presets import PRESETS, TINY_VQ
from rsd_deploy.schedule import TEACHER_4, TEACHER_15


def ldm_vq_shapes(ch=128, ch_mult=(1, 2, 4), num_res_blocks=2, z=3, embed=3, n_embed=8192):
    """Key -> shape of an LDM VQModelTorch state dict (the layout of autoencoder_vq_f4.pth)."""
    shapes = {}

    def conv(name, cin, cout, k):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def norm(name, c):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c,), (c,)

    def resblock(name, cin, cout):
        norm(f"{name}.norm1", cin), conv(f"{name}.conv1", cin, cout, 3)
        norm(f"{name}.norm2", cout), conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def mid(prefix, c):
        resblock(f"{prefix}.mid.block_1", c, c)
        norm(f"{prefix}.mid.attn_1.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{prefix}.mid.attn_1.{part}", c, c, 1)
        resblock(f"{prefix}.mid.block_2", c, c)

    widths = [ch * m for m in ch_mult]
    conv("encoder.conv_in", 3, ch, 3)
    cin = ch
    for i, width in enumerate(widths):
        for j in range(num_res_blocks):
            resblock(f"encoder.down.{i}.block.{j}", cin, width)
            cin = width
        if i != len(widths) - 1:
            conv(f"encoder.down.{i}.downsample.conv", width, width, 3)
    mid("encoder", cin)
    norm("encoder.norm_out", cin), conv("encoder.conv_out", cin, z, 3)
    conv("decoder.conv_in", z, widths[-1], 3)
    mid("decoder", widths[-1])
    cin = widths[-1]
    for i in reversed(range(len(widths))):
        for j in range(num_res_blocks + 1):
            resblock(f"decoder.up.{i}.block.{j}", cin, widths[i])
            cin = widths[i]
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", cin, cin, 3)
    norm("decoder.norm_out", cin), conv("decoder.conv_out", cin, 3, 3)
    conv("quant_conv", z, embed, 1), conv("post_quant_conv", embed, z, 1)
    shapes["quantize.embedding.weight"] = (n_embed, embed)
    return shapes


def test_official_vq_f4_layout_converts_exactly():
    shapes = ldm_vq_shapes()
    assert len(shapes) == 205
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 55_322_782
    converted = convert_ldm_vq_state_dict({k: torch.empty(s, device="meta") for k, s in shapes.items()})
    with torch.device("meta"):
        target = VQAutoencoder(VQ_F4_CONFIG).vq.state_dict()
    assert set(converted) == set(target)
    assert all(converted[k].shape == target[k].shape for k in target)
    encoder = sum(v.numel() for k, v in target.items() if k.startswith(("encoder.", "quant_conv.")))
    assert encoder == 22_337_423


def test_official_vq_file_loads(tmp_path, rng):
    shapes = ldm_vq_shapes(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, n_embed=64)
    state = {k: torch.randn(s, generator=rng) for k, s in shapes.items()}
    path = tmp_path / "autoencoder_vq_tiny.pth"
    torch.save({"state_dict": state}, path)
    codec = load_codec(path)
    assert codec.config["block_out_channels"] == [32, 32, 64]
    # the 1x1-conv attention weights became linear weights, values untouched
    got = codec.vq.state_dict()["encoder.mid_block.attentions.0.to_q.weight"]
    assert torch.equal(got, state["encoder.mid.attn_1.q.weight"][:, :, 0, 0])


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "module", "orig_mod", "ema"])
def test_unet_formats_round_trip(tmp_path, tiny_rsd, wrap):
    state = tiny_rsd.unet.state_dict()
    if wrap == "state_dict":
        payload = {"state_dict": state, "epoch": 3}
    elif wrap == "module":
        payload = {f"module.{k}": v for k, v in state.items()}
    elif wrap == "orig_mod":
        payload = {f"module._orig_mod.{k}": v for k, v in state.items()}
    elif wrap == "ema":
        payload = {"ema": state}
    else:
        payload = state
    path = tmp_path / f"{wrap}.pth"
    torch.save(payload, path)
    loaded = load_unet(path)
    assert loaded.noise_channels == 1  # 7-channel first conv detected
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_six_channel_model_detected(tmp_path, tiny_teacher):
    path = tmp_path / "teacher.pth"
    torch.save(tiny_teacher.unet.state_dict(), path)
    assert load_unet(path).noise_channels == 0


def test_our_format_round_trip(tmp_path, tiny_rsd):
    save_pipeline(tiny_rsd, tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["codec.json", "codec.safetensors", "unet.json", "unet.safetensors"]
    pipe = load_pipeline(tmp_path / "model")
    lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(pipe(lr, seed=5), tiny_rsd(lr, seed=5))
    assert pipe.schedule == tiny_rsd.schedule


def test_mismatch_is_one_readable_line(tmp_path, tiny_rsd):
    state = dict(tiny_rsd.unet.state_dict())
    state.pop("out.0.weight")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        load_unet(path, config=tiny_rsd.unet.config)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    assert "1 missing (out.0.weight)" in message and "1 unexpected (extra.weight)" in message


class NotATensor:
    pass


def _refusal(path) -> str:
    with pytest.raises(CheckpointError) as error:
        read_state_dict(path)
    message = str(error.value)
    assert "\n" not in message and "\x1b" not in message and str(path) in message
    assert "weights_only" not in message and "likely succeed" not in message  # never torch's advice to unpickle
    return message


def test_pickled_code_is_refused_without_torchs_advice(tmp_path):
    raw = tmp_path / "evil.pth"
    with open(raw, "wb") as f:
        pickle.dump({"weight": NotATensor()}, f)
    assert "not a readable checkpoint" in _refusal(raw)
    saved = tmp_path / "evil2.pth"
    torch.save({"weight": NotATensor()}, saved)
    assert "refused: it pickles Python objects" in _refusal(saved) and "NotATensor" in _refusal(saved)


def test_truncated_checkpoint_is_one_line(tmp_path, tiny_teacher):
    path = tmp_path / "model.pth"
    torch.save(tiny_teacher.unet.state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])
    assert "truncated or corrupt" in _refusal(path)


def test_nan_weights_are_refused_naming_the_tensor(tmp_path, tiny_teacher):
    state = dict(tiny_teacher.unet.state_dict())
    state["out.2.bias"] = state["out.2.bias"].clone()
    state["out.2.bias"][0] = float("nan")
    state["time_embed.0.bias"] = torch.full_like(state["time_embed.0.bias"], float("inf"))
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    message = _refusal(path)
    assert "tensor time_embed.0.bias holds NaN or Inf" in message  # the first bad one, in file order


def test_unet_and_codec_latents_must_match(tmp_path, tiny_teacher):
    """A 3-channel (VQ) UNet with the 48-channel pixel-unshuffle codec is two halves of different models."""
    save_module(tiny_teacher.unet, tmp_path / "unet.safetensors", "unet", tiny_teacher.unet.config)
    save_module(PixelUnshuffleCodec(), tmp_path / "codec.safetensors", "codec", PixelUnshuffleCodec().config)
    with pytest.raises(CheckpointError) as error:
        load_pipeline(tmp_path / "unet.safetensors", tmp_path / "codec.safetensors")
    message = str(error.value)
    assert "unet.safetensors" in message and "codec.safetensors" in message and "3-channel" in message and "48-channel" in message


def test_missing_and_non_checkpoint_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_unet(tmp_path / "absent.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_unet(junk)
    torch.save({"a": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a ResShift UNetModelSwin checkpoint"):
        load_unet(tmp_path / "other.pth")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_codec_config_says_its_kind_before_the_codec_exists(preset):
    config = PRESETS[preset].codec
    with torch.device("meta"):
        assert codec_kind(config) == build_codec(config).kind
    assert codec_kind(None) == VQAutoencoder.kind and codec_kind(PixelUnshuffleCodec().config) == PixelUnshuffleCodec.kind


@pytest.mark.parametrize("name", ["demo-rsd", "demo-teacher"])
def test_the_bundled_demo_models_are_their_presets_trained(name):
    saved = {part: json.loads((BUNDLED_DIR / name / f"{part}.json").read_text()) for part in ("unet", "codec")}
    with torch.device("meta"):
        assert UNetModelSwin(**saved["unet"]["config"]).config == UNetModelSwin(**PRESETS[name].unet).config
    assert saved["codec"]["config"] == PRESETS[name].codec
    assert saved["unet"]["schedule"] == asdict(PRESETS[name].schedule)


def test_vq_safetensors_round_trip(tmp_path, tiny_rsd):
    save_module(tiny_rsd.codec.vq, tmp_path / "codec", "codec", tiny_rsd.codec.config)
    codec = load_codec(tmp_path / "codec.safetensors")
    assert codec.config == tiny_rsd.codec.config == {**TINY_VQ}
    z = torch.randn(1, 3, 8, 8)
    assert torch.equal(codec.decode(z), tiny_rsd.codec.decode(z))


# --- the official releases' files and YAMLs, mirrored at a tiny size ---------------------------------
# The YAML texts follow the official files key by key (ResShift configs/realsr_swinunet_realesrgan256*.yaml,
# SinSR/RSD configs/SinSR.yaml, configs/RSD.yaml); only the UNet's sizes are shrunk to the tiny test
# config so the weights are seeded and small.

TINY_PARAMS = """    image_size: 64
    model_channels: 32
    attention_resolutions: [64, 32]
    dropout: 0
    channel_mult: [1, 2]
    num_res_blocks: [1, 1]
    conv_resample: True
    dims: 2
    use_fp16: False
    num_head_channels: 16
    use_scale_shift_norm: True
    resblock_updown: False
    swin_depth: 2
    swin_embed_dim: 32
    window_size: 8
    mlp_ratio: 2
"""

DIFFUSION_15 = """diffusion:
  target: models.script_util.create_gaussian_diffusion
  params:
    sf: 4
    schedule_name: exponential
    schedule_kwargs:
      power: 0.3
    etas_end: 0.99
    steps: 15
    min_noise_level: 0.04
    kappa: 2.0
    predict_type: xstart
    normalize_input: True
    latent_flag: True
"""

SINSR_YAML = f"""model:
  target: models.unet.UNetModelSwin
  ckpt_path: ~
  teacher_ckpt_path: weights/resshift_realsrx4_s15_v1.pth
  params:
    in_channels: 6
    out_channels: 3
    cond_lq: True
{TINY_PARAMS}
{DIFFUSION_15}
autoencoder:
  params:
    embed_dim: 3
"""

RSD_YAML = SINSR_YAML.replace("  ckpt_path: ~\n", """  target_gan: models.unet.UNetModelSwinGanWrapper
  ckpt_path: ~
  add_noise: True
  noise_channels: 1
  gan_loss: True
""").replace("latent_flag: True\n", "latent_flag: True\n    num_steps: 4\n")

JOURNAL_YAML = f"""trainer:
  target: trainer.TrainerDifIRLPIPS
autoencoder:
  target: ldm.models.autoencoder.VQModelTorch
  params:
    embed_dim: 3
    n_embed: 8192
model:
  target: models.unet.UNetModelSwin
  ckpt_path: ~
  params:
    in_channels: 3
    out_channels: ${{autoencoder.params.embed_dim}}
{TINY_PARAMS}    cond_lq: True
    lq_size: 64
{DIFFUSION_15.replace("steps: 15", "steps: 4").replace("min_noise_level: 0.04", "min_noise_level: 0.2")}"""


@pytest.fixture
def tiny_codec(tmp_path, tiny_teacher):
    path = tmp_path / "vq.safetensors"
    save_module(tiny_teacher.codec.vq, path, "codec", tiny_teacher.codec.config)
    return path


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name, text, model", [("SinSR.yaml", SINSR_YAML, "tiny_teacher"), ("RSD.yaml", RSD_YAML, "tiny_rsd")])
def test_sinsr_and_rsd_yamls_count_the_lr_image_in_in_channels(tmp_path, request, tiny_codec, name, text, model):
    """Their UNetModelSwin concatenates the LR image inside in_channels (6), ResShift's adds it (3)."""
    pipe = request.getfixturevalue(model)
    path = tmp_path / "model.pth"
    torch.save({f"module.{k}": v for k, v in pipe.unet.state_dict().items()}, path)  # as ema_model_2800.pth: DDP keys
    loaded = load_pipeline(path, tiny_codec, unet_config=_write(tmp_path, name, text))
    assert loaded.unet.in_channels == 3 and loaded.unet.noise_channels == pipe.unet.noise_channels
    assert loaded.schedule == TEACHER_15
    lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded(lr, seed=3), SRPipeline(pipe.unet, loaded.codec, TEACHER_15)(lr, seed=3))


def test_a_yaml_that_does_not_fit_the_weights_is_one_line(tmp_path, tiny_teacher, tiny_codec):
    path = tmp_path / "model.pth"
    torch.save(tiny_teacher.unet.state_dict(), path)  # 6 input channels: no noise map
    with pytest.raises(CheckpointError, match=r"model.pth: its first conv takes 6 input channels, but RSD.yaml describes "
                                              r"3 latent \+ 3 LR image \+ 1 noise channels"):
        load_unet(path, _write(tmp_path, "RSD.yaml", RSD_YAML))


def test_the_journal_yaml_selects_resshift_v3s_four_steps(tmp_path, tiny_teacher, tiny_codec):
    path = tmp_path / "resshift_realsrx4_s4_v3.pth"
    torch.save({"state_dict": tiny_teacher.unet.state_dict()}, path)
    pipe = load_pipeline(path, tiny_codec, unet_config=_write(tmp_path, "realsr_swinunet_realesrgan256_journal.yaml", JOURNAL_YAML))
    assert pipe.schedule == TEACHER_4 and pipe.unet.out_channels == 3  # ${autoencoder.params.embed_dim} resolved
    lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert pipe(lr, steps=4, seed=1).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="schedule has 4 steps, so run 1 .* or 4, got 15"):
        pipe(lr, steps=15)


@pytest.mark.parametrize("steps, schedule", [(None, TEACHER_15), (1, TEACHER_15), (15, TEACHER_15), (4, TEACHER_4)])
def test_steps_select_the_official_schedule_of_a_bare_pth(tmp_path, tiny_teacher, tiny_codec, steps, schedule):
    path = tmp_path / "resshift.pth"
    torch.save(tiny_teacher.unet.state_dict(), path)
    assert load_pipeline(path, tiny_codec, steps=steps).schedule == schedule


def test_steps_no_official_schedule_has_are_one_line(tmp_path, tiny_teacher, tiny_codec):
    path = tmp_path / "resshift.pth"
    torch.save(tiny_teacher.unet.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"resshift.pth: --steps 7: the official schedules have 15 steps .* or 4"):
        load_pipeline(path, tiny_codec, steps=7)


def _rsd_training_checkpoint(path, student: torch.nn.Module, fake: torch.nn.Module, step: int) -> dict:
    """A model_N.pth as trainer.py's save_ckpt writes it under DDP: the fake model inside the
    (unpublished) GAN wrapper, here with the UNet under `model.` and a head beside it."""
    head = {"head.conv.weight": torch.randn(4, 64, 3, 3), "head.conv.bias": torch.zeros(4)}
    fake_state = {**{f"module.model.{k}": v for k, v in fake.state_dict().items()}, **{f"module.{k}": v for k, v in head.items()}}
    optimizer = torch.optim.AdamW(student.parameters(), lr=5e-5, betas=(0.9, 0.95))
    checkpoint = {
        "iters_start": step,
        "log_step": {"train": step, "val": step // 1000},
        "log_step_img": {"train": step // 200, "val": step // 1000},
        "optimizer": {"student": optimizer.state_dict(), "fake": optimizer.state_dict()},
        "state_dict": {"student": {f"module.{k}": v for k, v in student.state_dict().items()}, "fake": fake_state},
        "scheduler": {"student": {"last_epoch": step, "base_lrs": [5e-5]}, "fake": {"last_epoch": step, "base_lrs": [5e-5]}},
    }
    torch.save(checkpoint, path)
    return head


def test_an_rsd_training_checkpoint_gives_its_student_and_both_networks(tmp_path, tiny_rsd, tiny_teacher):
    path = tmp_path / "model_1000.pth"
    head = _rsd_training_checkpoint(path, tiny_rsd.unet, tiny_teacher.unet, 1000)
    student = load_unet(path)  # the network to export
    assert student.noise_channels == 1
    assert all(torch.equal(student.state_dict()[k], v) for k, v in tiny_rsd.unet.state_dict().items())
    both = read_training_checkpoint(path)  # everything a resumed distillation needs
    assert both["step"] == 1000
    fake_unet, rest = split_unet(both["fake"])
    assert set(fake_unet) == set(tiny_teacher.unet.state_dict()) and set(rest) == set(head)
