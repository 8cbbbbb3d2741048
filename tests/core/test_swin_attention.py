"""Shifted-window attention against an independent transcription of the official block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rsd_deploy.models.attention import get_attention_backend, shift_mask
from rsd_deploy.models.swin import SwinTransformerBlock


def official_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """ResShift's calculate_mask, step by step as the official code runs it."""
    img_mask = torch.zeros((1, 1, h, w))
    slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    count = 0
    for hs in slices:
        for ws in slices:
            img_mask[:, hs, ws, :] = count  # (1, 1, H, W) indexed as if (1, H, W, 1)
            count += 1
    x = img_mask.view(1, 1, h // window, window, w // window, window)
    windows = x.permute(0, 2, 4, 3, 5, 1).reshape(-1, window, window, 1)
    ids = windows.permute(0, 2, 3, 1).reshape(-1, window * window)
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


@pytest.mark.parametrize("h,w", [(16, 16), (64, 64), (32, 48), (16, 24), (8, 16)])
def test_shift_mask_matches_official(h, w):
    assert torch.equal(shift_mask(h, w, 8, 4), official_mask(h, w, 8, 4))


def test_shift_mask_quirk_counts():
    # only the last row of windows is masked, and width wrap-around never is
    assert (shift_mask(16, 16, 8, 4) != 0).sum((1, 2)).tolist() == [0, 0, 2048, 2048]


def official_block(block: SwinTransformerBlock, x: torch.Tensor) -> torch.Tensor:
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


@pytest.mark.parametrize("shift", [0, 4])
@pytest.mark.parametrize("h,w", [(16, 16), (32, 16), (64, 64)])
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_block_matches_official(backend, shift, h, w, rng):
    torch.manual_seed(0)
    block = SwinTransformerBlock(64, resolution=64, num_heads=2, window=8, shift=shift, mlp_ratio=2).double()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_(0, 0.5, generator=rng)
    block.attn.backend = backend
    x = torch.randn(2, 64, h, w, generator=rng, dtype=torch.float64)
    expected = official_block(block, x)
    got = block(x)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-12


def test_small_resolution_disables_shift():
    block = SwinTransformerBlock(32, resolution=8, num_heads=2, window=8, shift=4, mlp_ratio=2)
    assert block.shift == 0 and block.attn_mask is None


def test_unknown_backend_is_a_clear_error(tiny_rsd):
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        get_attention_backend("nope")
    with pytest.raises(ValueError, match="reference"):
        tiny_rsd.unet.set_attention_backend("nope")
