"""Model configurations as data: the official releases, the bundled demo models and the small test
configurations."""

from __future__ import annotations

from dataclasses import dataclass

from .models.autoencoder import PIXEL_UNSHUFFLE_CONFIG, VQ_F4_CONFIG
from .schedule import TEACHER_4, TEACHER_15, ResShiftSchedule

# The real-world x4 UNetModelSwin config of ResShift v1/v2/v3, SinSR and RSD (official YAML keys).
REALSR_X4_UNET = {
    "image_size": 64,
    "in_channels": 3,
    "model_channels": 160,
    "out_channels": 3,
    "attention_resolutions": [64, 32, 16, 8],
    "dropout": 0.0,
    "channel_mult": [1, 2, 2, 4],
    "num_res_blocks": [2, 2, 2, 2],
    "conv_resample": True,
    "dims": 2,
    "use_fp16": False,
    "num_head_channels": 32,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "swin_depth": 2,
    "swin_embed_dim": 192,
    "window_size": 8,
    "mlp_ratio": 4,
    "patch_norm": False,
    "cond_lq": True,
    "lq_size": 64,
}

# A few-hundred-thousand-parameter config with every structural feature of the real one
# (two levels, Swin at both, a shifted block), for fast tests.
TINY_UNET = {
    **REALSR_X4_UNET,
    "model_channels": 32,
    "attention_resolutions": [64, 32],
    "channel_mult": [1, 2],
    "num_res_blocks": [1, 1],
    "num_head_channels": 16,
    "swin_embed_dim": 32,
    "mlp_ratio": 2,
}

# The demo denoiser (the bundled rsd_deploy/weights/demo-teacher and demo-rsd, trained on a CPU by
# distill/proof.py): UNetModelSwin on the 48-channel pixel-unshuffle latent, two levels, Swin at both,
# width 64 (3.2M parameters; width 32 trailed bicubic, docs/distill.md). 8 norm groups: with the
# official 32 groups every GroupNorm at width 32 is a per-channel instance norm, and the output head
# (GroupNorm -> SiLU -> conv) cannot pass a per-image colour to the output (on the held-out crops the
# 1-step teacher stayed at 16-17 dB; docs/distill.md).
DEMO_UNET = {**TINY_UNET, "in_channels": 48, "out_channels": 48, "model_channels": 64, "swin_embed_dim": 64, "norm_groups": 8}

TINY_VQ = {
    **VQ_F4_CONFIG,
    "block_out_channels": [32, 32, 32],
    "layers_per_block": 1,
    "num_vq_embeddings": 64,
}


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    unet: dict
    codec: dict
    schedule: ResShiftSchedule


PRESETS = {
    p.name: p
    for p in [
        Preset("resshift-x4", "ResShift v1/v2 teacher, 15 steps", REALSR_X4_UNET, VQ_F4_CONFIG, TEACHER_15),
        Preset("resshift-v3-x4", "ResShift v3, 4 steps", REALSR_X4_UNET, VQ_F4_CONFIG, TEACHER_4),
        Preset("sinsr-x4", "SinSR one-step student", REALSR_X4_UNET, VQ_F4_CONFIG, TEACHER_15),
        Preset("rsd-x4", "RSD one-step student (noise-map channel)", {**REALSR_X4_UNET, "noise_channels": 1}, VQ_F4_CONFIG, TEACHER_15),
        Preset("demo-teacher", "demo ResShift x4 teacher, 15 steps (small pixel-space model)", DEMO_UNET, PIXEL_UNSHUFFLE_CONFIG, TEACHER_15),
        Preset("demo-rsd", "demo RSD x4 one-step student (small pixel-space model, noise-map channel)",
               {**DEMO_UNET, "noise_channels": 1}, PIXEL_UNSHUFFLE_CONFIG, TEACHER_15),
        Preset("tiny", "tiny test teacher", TINY_UNET, TINY_VQ, TEACHER_15),
        Preset("tiny-rsd", "tiny test RSD student", {**TINY_UNET, "noise_channels": 1}, TINY_VQ, TEACHER_15),
    ]
}
