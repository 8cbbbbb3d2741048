"""Shifted-window attention against an independent transcription of the official block."""

from __future__ import annotations

import pytest
import torch

from rsd_deploy.models.attention import get_attention_backend, shift_mask
from rsd_deploy.models.swin import SwinTransformerBlock


@pytest.mark.parametrize("h,w", [(16, 16), (64, 64), (32, 48), (16, 24), (8, 16)])
def test_shift_mask_matches_official(h, w, official):
    assert torch.equal(shift_mask(h, w, 8, 4), official.mask(h, w, 8, 4))


def test_shift_mask_quirk_counts():
    # only the last row of windows is masked, and width wrap-around never is
    assert (shift_mask(16, 16, 8, 4) != 0).sum((1, 2)).tolist() == [0, 0, 2048, 2048]


@pytest.mark.parametrize("shift", [0, 4])
@pytest.mark.parametrize("h,w", [(16, 16), (32, 16), (64, 64)])
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_block_matches_official(backend, shift, h, w, rng, official):
    torch.manual_seed(0)
    block = SwinTransformerBlock(64, resolution=64, num_heads=2, window=8, shift=shift, mlp_ratio=2).double()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_(0, 0.5, generator=rng)
    block.attn.backend = backend
    x = torch.randn(2, 64, h, w, generator=rng, dtype=torch.float64)
    expected = official.block(block, x)
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


def test_kernel_backends_are_declared_not_imported_by_the_core():
    """The core lists the kernels' backends from their entry points and imports them only when
    one is requested."""
    import subprocess
    import sys

    script = ("import sys; from rsd_deploy.models.attention import attention_backends, get_attention_backend; "
              "names = attention_backends(); assert {'triton', 'trt_plugin'} <= set(names), names; "
              "assert not any(m.startswith('rsd_deploy.kernels') for m in sys.modules); "
              "get_attention_backend('trt_plugin'); assert 'rsd_deploy.kernels.onnx_custom_op' in sys.modules")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
