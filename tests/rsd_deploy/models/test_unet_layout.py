"""The denoiser's state-dict layout equals the official one (spec: model-spec.md)."""

from __future__ import annotations

import pytest
import torch

from rsd_deploy.models.unet import UNetModelSwin
from rsd_deploy.models.unet_layout import infer_unet_config
from rsd_deploy.presets import DEMO_UNET, PRESETS, REALSR_X4_UNET

# Representative official keys and shapes, from the released checkpoints' layout.
OFFICIAL_SHAPES = {
    "time_embed.0.weight": (640, 160),
    "input_blocks.0.0.weight": (160, 6, 3, 3),
    "input_blocks.1.0.in_layers.2.weight": (160, 160, 3, 3),
    "input_blocks.1.0.emb_layers.1.weight": (320, 640),
    "input_blocks.1.1.patch_embed.proj.weight": (192, 160, 1, 1),
    "input_blocks.1.1.blocks.0.attn.relative_position_bias_table": (225, 6),
    "input_blocks.1.1.blocks.0.attn.relative_position_index": (64, 64),
    "input_blocks.1.1.blocks.0.attn.qkv.weight": (576, 192),
    "input_blocks.1.1.blocks.0.mlp.fc1.weight": (768, 192, 1, 1),
    "input_blocks.1.1.blocks.1.attn_mask": (64, 64, 64),
    "input_blocks.3.0.op.weight": (160, 160, 3, 3),
    "input_blocks.4.0.skip_connection.weight": (320, 160, 1, 1),
    "middle_block.0.emb_layers.1.weight": (1280, 640),
    "output_blocks.0.0.in_layers.2.weight": (640, 1280, 3, 3),
    "output_blocks.2.1.conv.weight": (640, 640, 3, 3),
    "out.0.weight": (160,),
    "out.2.weight": (3, 160, 3, 3),
}


@pytest.fixture(scope="module")
def full_unet():
    with torch.device("meta"):
        return UNetModelSwin(**REALSR_X4_UNET)


def test_full_size_counts(full_unet):
    state = full_unet.state_dict()
    assert len(state) == 564
    assert sum(p.numel() for p in full_unet.parameters()) == 118_593_583
    assert sum(1 for k in state if k.endswith("relative_position_index")) == 18
    masks = sorted(k for k in state if k.endswith("attn_mask"))
    assert masks == [f"{b}.1.blocks.1.attn_mask" for b in
                     ["input_blocks.1", "input_blocks.4", "input_blocks.7", "output_blocks.3", "output_blocks.6", "output_blocks.9"]]


def test_representative_shapes(full_unet):
    state = full_unet.state_dict()
    for key, shape in OFFICIAL_SHAPES.items():
        assert tuple(state[key].shape) == shape, key


def test_swin_layers_where_official(full_unet):
    swin = sorted({k.split(".patch_embed")[0] for k in full_unet.state_dict() if ".patch_embed." in k})
    assert swin == sorted([f"input_blocks.{i}.1" for i in (1, 4, 7, 10)] + ["middle_block.1"] +
                          [f"output_blocks.{i}.1" for i in (0, 3, 6, 9)])


def test_rsd_student_first_conv():
    with torch.device("meta"):
        student = UNetModelSwin(**REALSR_X4_UNET, noise_channels=1)
    assert tuple(student.state_dict()["input_blocks.0.0.weight"].shape) == (160, 7, 3, 3)


def test_config_inferred_from_weights(full_unet):
    config = infer_unet_config(full_unet.state_dict())
    assert config["noise_channels"] == 0
    with torch.device("meta"):
        assert UNetModelSwin(**config).config == full_unet.config  # what the weights do not show: the defaults


@pytest.mark.parametrize("preset", ["rsd-x4", "tiny-rsd", "demo-rsd"])
def test_inferred_config_rebuilds_each_preset(preset):
    with torch.device("meta"):
        model = UNetModelSwin(**PRESETS[preset].unet)
        rebuilt = UNetModelSwin(**infer_unet_config(model.state_dict()))
    # norm_groups is not in the weights (test_norm_groups_change_normalisation_not_layout)
    assert {**rebuilt.config, "norm_groups": model.config["norm_groups"]} == model.config


def test_official_yaml_keys_tolerated():
    # keys the official YAMLs carry that this model has no use for
    model = UNetModelSwin(**{**REALSR_X4_UNET, "model_channels": 32, "channel_mult": [1], "num_res_blocks": [1],
                             "attention_resolutions": [64], "swin_embed_dim": 32, "num_head_channels": 16},
                          cond_mask=False, num_heads=-1, use_new_attention_order=False)
    assert isinstance(model, UNetModelSwin)


def test_noise_argument_checked(tiny_rsd):
    x = torch.zeros(1, 3, 64, 64)
    t = torch.tensor([14])
    with pytest.raises(ValueError, match="noise"):
        tiny_rsd.unet(x, t, lq=x)


def test_norm_groups_change_normalisation_not_layout(tmp_path):
    from rsd_deploy.checkpoints import load_unet, save_module

    official = UNetModelSwin(**{**DEMO_UNET, "norm_groups": 32})
    demo = UNetModelSwin(**DEMO_UNET)
    assert {k: v.shape for k, v in official.state_dict().items()} == {k: v.shape for k, v in demo.state_dict().items()}
    groups = {m.num_groups for m in demo.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {DEMO_UNET["norm_groups"]}
    # the group count lives in our JSON config, not in the weights, so it must survive a round trip
    save_module(demo, tmp_path / "unet.safetensors", "unet", dict(DEMO_UNET))
    loaded = load_unet(tmp_path / "unet.safetensors")
    assert {m.num_groups for m in loaded.modules() if isinstance(m, torch.nn.GroupNorm)} == groups
