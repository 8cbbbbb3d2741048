"""Checkpoint formats in and out: official layouts, wrappers, prefixes, our safetensors."""

from __future__ import annotations

import pickle

import pytest
import torch

from rsd_deploy.checkpoints import (
    CheckpointError,
    load_codec,
    load_pipeline,
    load_unet,
    read_state_dict,
    save_module,
    save_pipeline,
)
from rsd_deploy.models.autoencoder import VQ_F4_CONFIG, VQAutoencoder, convert_ldm_vq_state_dict
from rsd_deploy.presets import TINY_VQ


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


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"weight": NotATensor()}, f)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_state_dict(path)


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


def test_vq_safetensors_round_trip(tmp_path, tiny_rsd):
    save_module(tiny_rsd.codec.vq, tmp_path / "codec", "codec", tiny_rsd.codec.config)
    codec = load_codec(tmp_path / "codec.safetensors")
    assert codec.config == tiny_rsd.codec.config == {**TINY_VQ}
    z = torch.randn(1, 3, 8, 8)
    assert torch.equal(codec.decode(z), tiny_rsd.codec.decode(z))
