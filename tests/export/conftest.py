"""Small pipelines for the export tests (CPU, seconds per graph)."""

from __future__ import annotations

import pytest
import torch

from rsd_deploy.checkpoints import build_pipeline
from rsd_deploy.models.autoencoder import build_codec
from rsd_deploy.models.unet import UNetModelSwin
from rsd_deploy.pipeline import SRPipeline
from rsd_deploy.presets import TINY_UNET, TINY_VQ
from rsd_deploy.schedule import TEACHER_15

# One UNet level (Swin with a shifted block at the 64 grid): every structural feature the export
# handles (time embedding, FiLM, window attention + shift mask, noise map), in ~400 ONNX nodes.
MICRO_UNET = {**TINY_UNET, "channel_mult": [1], "num_res_blocks": [1], "attention_resolutions": [64], "noise_channels": 1}


def micro_pipeline(codec: str = "vq", seed: int = 0) -> SRPipeline:
    torch.manual_seed(seed)
    if codec == "pixel_unshuffle":
        config = {**MICRO_UNET, "in_channels": 48, "out_channels": 48}
        codec_module = build_codec({"kind": "pixel_unshuffle"})
    else:
        config = dict(MICRO_UNET)
        codec_module = build_codec(TINY_VQ)
    unet = UNetModelSwin(**config)
    unet.config = config
    # zero-initialised output convs would make the residual branches vanish: give them weights
    for name, param in unet.named_parameters():
        if "out_layers.3" in name:
            torch.nn.init.normal_(param, std=0.02)
    return SRPipeline(unet.eval(), codec_module.eval(), TEACHER_15, f"UNTRAINED: micro test pipeline ({codec}), seed {seed}")


@pytest.fixture(scope="session")
def micro():
    return micro_pipeline()


@pytest.fixture(scope="session")
def tiny_rsd():
    return build_pipeline("tiny-rsd")


@pytest.fixture(scope="session")
def micro_pixel_unshuffle():
    return micro_pipeline("pixel_unshuffle")
