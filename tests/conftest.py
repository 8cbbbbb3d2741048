"""Shared fixtures: tiny and micro pipelines with seeded weights, built once per test session,
and an independent transcription of the official ResShift Swin code (``official``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from rsd_deploy.checkpoints import build_pipeline
from rsd_deploy.models.autoencoder import build_codec
from rsd_deploy.models.unet import UNetModelSwin
from rsd_deploy.pipeline import SRPipeline
from rsd_deploy.presets import TINY_UNET, TINY_VQ
from rsd_deploy.schedule import TEACHER_15


@pytest.fixture(scope="session")
def tiny_rsd():
    """The tiny RSD student (7-channel first conv) with the tiny VQ codec, seeded weights."""
    return build_pipeline("tiny-rsd", seed=0)


@pytest.fixture(scope="session")
def tiny_teacher():
    """The tiny 15-step teacher (6-channel first conv), seeded weights."""
    return build_pipeline("tiny", seed=1)


# One UNet level (Swin with a shifted block at the 64 grid): every structural feature export and
# AOT compilation handle (time embedding, FiLM, window attention + shift mask, noise map), in ~400
# ONNX nodes.
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
    # zero-initialised output convs would make the residual branches vanish: give them weights
    for name, param in unet.named_parameters():
        if "out_layers.3" in name:
            torch.nn.init.normal_(param, std=0.02)
    return SRPipeline(unet.eval(), codec_module.eval(), TEACHER_15, f"UNTRAINED: micro test pipeline ({codec}), seed {seed}")


@pytest.fixture(scope="session")
def micro():
    return micro_pipeline()


@pytest.fixture(scope="session")
def micro_pixel_unshuffle():
    """The micro RSD student on the parameter-free pixel-unshuffle codec (the fastest to export
    and to AOT-compile)."""
    return micro_pipeline("pixel_unshuffle")


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


# --- an independent transcription of the official ResShift Swin code (token layout) -------------


def official_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """calculate_mask of the official block, run the way the official code runs it: the (1, 1, H, W)
    image is indexed as if it were (1, H, W, 1), and the windows are permuted before flattening."""
    img_mask = torch.zeros((1, 1, h, w))
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for first in cuts:
        for second in cuts:
            img_mask[:, first, second, :] = label
            label += 1
    parts = img_mask.view(1, 1, h // window, window, w // window, window)
    windows = parts.permute(0, 2, 4, 3, 5, 1).reshape(-1, window, window, 1)
    ids = windows.permute(0, 2, 3, 1).reshape(-1, window * window)
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def textbook_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """The mask of the Swin paper's code (regions by rows and columns, tokens row-major): what the
    kernel must NOT compute for this model."""
    img = torch.zeros(h, w)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in cuts:
        for cols in cuts:
            img[rows, cols] = label
            label += 1
    ids = img.view(h // window, window, w // window, window).permute(0, 2, 1, 3).reshape(-1, window * window)
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return torch.where(diff != 0, -100.0, 0.0)


def official_attention(qkv, bias, *, num_heads, window, shift, scale, mask_fn=official_mask):
    """roll -> partition -> (q*scale) k^T + bias (+ mask) -> softmax -> @ v -> reverse -> roll back,
    as in the official SwinTransformerBlock / WindowAttention forward, from the qkv map."""
    b, c3, h, w = qkv.shape
    c = c3 // 3
    n = window * window
    x = torch.roll(qkv, (-shift, -shift), (2, 3)) if shift else qkv
    x = x.view(b, c3, h // window, window, w // window, window).permute(0, 2, 4, 3, 5, 1).reshape(-1, n, c3)
    heads = x.reshape(-1, n, 3, num_heads, c // num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = heads[0] * scale, heads[1], heads[2]
    attn = q @ k.transpose(-2, -1) + bias.unsqueeze(0).to(q.dtype)
    if shift:
        mask = mask_fn(h, w, window, shift).to(attn)
        n_windows = mask.shape[0]
        attn = (attn.view(-1, n_windows, num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(-1, num_heads, n, n)
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, c)
    out = out.view(b, h // window, w // window, window, window, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)
    return torch.roll(out, (shift, shift), (2, 3)) if shift else out


def official_block(block, x: torch.Tensor) -> torch.Tensor:
    """Token-layout forward of the official SwinTransformerBlock (roll, partition, Linear...)."""
    b, c, h, w = x.shape
    attn, win, shift = block.attn, block.window, block.shift
    heads, n = attn.num_heads, block.window**2
    y = block.norm1(x)
    if shift:
        y = torch.roll(y, (-shift, -shift), (2, 3))
    y = y.view(b, c, h // win, win, w // win, win).permute(0, 2, 4, 3, 5, 1).reshape(-1, n, c)
    qkv = F.linear(y, attn.qkv.weight, attn.qkv.bias).reshape(-1, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * attn.scale, qkv[1], qkv[2]
    logits = q @ k.transpose(-2, -1)
    table = attn.relative_position_bias_table[attn.relative_position_index.view(-1)]
    logits = logits + table.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
    if shift:
        mask = official_mask(h, w, win, shift).to(x.dtype)
        logits = (logits.view(-1, mask.shape[0], heads, n, n) + mask[None, :, None]).view(-1, heads, n, n)
    out = F.linear((logits.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, c), attn.proj.weight, attn.proj.bias)
    out = out.view(b, h // win, w // win, win, win, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)
    if shift:
        out = torch.roll(out, (shift, shift), (2, 3))
    x = x + out
    return x + block.mlp(block.norm2(x))


@pytest.fixture(scope="session")
def official():
    return SimpleNamespace(
        mask=official_mask, textbook_mask=textbook_mask, attention=official_attention, block=official_block
    )


def pytest_configure(config):
    """Under pytest-xdist (the README's ``-n 2``) each worker takes its share of the cores, so two
    workers on a 2-core machine run one torch thread each instead of thrashing four."""
    import os

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(config, items):
    """Tests marked slow (minutes on a 2-core CPU) run only with RSD_RUN_SLOW=1."""
    import os

    if os.environ.get("RSD_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow on a 2-core CPU; set RSD_RUN_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
