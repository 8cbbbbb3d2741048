"""Kernel tests run the Triton kernels for real on a GPU and under Triton's CPU interpreter
elsewhere (CI). The interpreter is chosen when a kernel module is decorated, so the variable is
set here, before any test module imports rsd_deploy.kernels."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def kernel_device() -> torch.device:
    from rsd_deploy.kernels import window_attention as wa

    if wa.INTERPRET:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device and the kernel module was imported without TRITON_INTERPRET=1")
    return torch.device("cuda")


@pytest.fixture(scope="session")
def on_gpu(kernel_device) -> bool:
    return kernel_device.type == "cuda"


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


def official_block(block, x):
    """The official SwinTransformerBlock forward (norm, Linear qkv on tokens, attention, proj,
    residual, MLP) with ``block``'s weights, independent of rsd_deploy.models.attention."""
    attn = block.attn
    shortcut = x
    y = block.norm1(x)
    qkv = F.conv2d(y, attn.qkv.weight[:, :, None, None], attn.qkv.bias)  # Linear per token
    n = block.window * block.window
    table = attn.relative_position_bias_table[attn.relative_position_index.view(-1)]
    bias = table.view(n, n, -1).permute(2, 0, 1)
    out = official_attention(
        qkv, bias, num_heads=attn.num_heads, window=block.window, shift=block.shift, scale=attn.scale
    )
    x = shortcut + F.conv2d(out, attn.proj.weight[:, :, None, None], attn.proj.bias)
    return x + block.mlp(block.norm2(x))


@pytest.fixture(scope="session")
def official():
    return SimpleNamespace(
        mask=official_mask, textbook_mask=textbook_mask, attention=official_attention, block=official_block
    )


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm()).item()


@pytest.fixture(scope="session")
def rel():
    return rel_err
