"""The fused Triton window attention against float64 references, at every grid size and shift.

On the CPU the kernel runs under TRITON_INTERPRET=1 (fp16 / fp32; bf16 dots are wrong in the
interpreter); on a GPU the same tests run compiled, with bf16 and bigger batches added.
"""

from __future__ import annotations

import zlib

import pytest
import torch

from rsd_deploy.kernels import window_attention as wa
from rsd_deploy.models.attention import get_attention_backend, reference_window_attention

# relative Frobenius error vs float64 on the same (rounded) inputs; fp16 output rounding alone is
# ~2e-4, bf16 ~2e-3
TOL = {torch.float32: 1e-5, torch.float16: 1.5e-3, torch.bfloat16: 1.2e-2}


def make_inputs(seed, batch, heads, head_dim, h, w, window, dtype, device):
    """Fresh random qkv and bias, at a scale where the bias and the -100 mask both matter."""
    gen = torch.Generator().manual_seed(seed)
    c = heads * head_dim
    qkv = torch.randn(batch, 3 * c, h, w, generator=gen, dtype=torch.float64)
    bias = torch.randn(heads, window * window, window * window, generator=gen, dtype=torch.float64)
    return qkv.to(device=device, dtype=dtype), bias.to(device=device, dtype=dtype)


def case_seed(*args) -> int:
    return zlib.crc32(repr(args).encode())


def run_kernel(qkv, bias, heads, window, shift, scale):
    """The kernel into a NaN-poisoned output, so an unwritten element cannot pass."""
    b, c3, h, w = qkv.shape
    out = torch.full((b, c3 // 3, h, w), float("nan"), dtype=qkv.dtype, device=qkv.device)
    got = wa.window_attention(qkv, bias, num_heads=heads, window=window, shift=shift, scale=scale, out=out)
    assert got is out
    assert torch.isfinite(out).all(), "the kernel left elements unwritten (NaN poison survived)"
    return out


def reference64(qkv, bias, heads, window, shift, scale):
    return reference_window_attention(
        qkv.double(), bias.double(), num_heads=heads, window=window, shift=shift, scale=scale
    )


def dtypes(on_gpu):
    return [torch.float16, torch.float32] + ([torch.bfloat16] if on_gpu else [])


@pytest.mark.parametrize("grid", [8, 16, 32, 64])
@pytest.mark.parametrize("shift", [0, 4])
def test_every_grid_size_and_shift(grid, shift, kernel_device, on_gpu, rel):
    # 64/32/16/8 windows of 8x8 are the model's grids at a 64x64 latent; 128 is a larger latent
    grids = [grid] + ([128] if on_gpu and grid == 64 else [])
    batch, heads = (16, 6) if on_gpu else (1, 1)
    for g in grids:
        for dtype in dtypes(on_gpu):
            qkv, bias = make_inputs(case_seed(g, shift, dtype), batch, heads, 32, g, g, 8, dtype, kernel_device)
            out = run_kernel(qkv, bias, heads, 8, shift, 32**-0.5)
            err = rel(out, reference64(qkv, bias, heads, 8, shift, 32**-0.5))
            assert err < TOL[dtype], f"grid {g} shift {shift} {dtype}: rel err {err:.2e}"


@pytest.mark.parametrize("h,w", [(16, 24), (24, 16)])
@pytest.mark.parametrize("shift", [0, 4])
def test_odd_shapes_batch_and_heads(h, w, shift, kernel_device, on_gpu, rel):
    for dtype in dtypes(on_gpu):
        qkv, bias = make_inputs(case_seed(h, w, shift, dtype), 2, 2, 32, h, w, 8, dtype, kernel_device)
        out = run_kernel(qkv, bias, 2, 8, shift, 32**-0.5)
        err = rel(out, reference64(qkv, bias, 2, 8, shift, 32**-0.5))
        assert err < TOL[dtype], f"{h}x{w} shift {shift} {dtype}: rel err {err:.2e}"


def test_model_head_layout(kernel_device, rel):
    # the real attention width: 6 heads x 32 = 192 channels
    qkv, bias = make_inputs(7, 1, 6, 32, 16, 16, 8, torch.float16, kernel_device)
    out = run_kernel(qkv, bias, 6, 8, 4, 32**-0.5)
    assert rel(out, reference64(qkv, bias, 6, 8, 4, 32**-0.5)) < TOL[torch.float16]


def test_mask_has_this_models_quirks(kernel_device, official, rel):
    """The kernel follows the official ResShift mask (rows only, column-major numbering), not the
    Swin paper's, and the two differ enough on a 16x24 map that a mix-up cannot pass."""
    qkv, bias = make_inputs(11, 2, 2, 32, 16, 24, 8, torch.float32, kernel_device)
    out = run_kernel(qkv, bias, 2, 8, 4, 32**-0.5)
    args = dict(num_heads=2, window=8, shift=4, scale=32**-0.5)
    quirky = official.attention(qkv.double(), bias.double(), **args)
    textbook = official.attention(qkv.double(), bias.double(), mask_fn=official.textbook_mask, **args)
    assert rel(textbook, quirky) > 1e-2
    assert rel(out, quirky) < TOL[torch.float32]
    assert rel(out, textbook) > 1e-2


@pytest.mark.parametrize(
    "window,head_dim,h,w,shift",
    [
        (7, 24, 14, 21, 3),  # 49 tokens and 24 channels: padded tiles, masked loads
        (4, 32, 8, 8, 2),  # the window a small training resolution shrinks to
        (8, 16, 8, 16, 4),  # one window row: every window is in the masked last row
    ],
)
def test_other_windows_and_head_dims(window, head_dim, h, w, shift, kernel_device, rel):
    qkv, bias = make_inputs(case_seed(window, head_dim), 1, 2, head_dim, h, w, window, torch.float32, kernel_device)
    out = run_kernel(qkv, bias, 2, window, shift, head_dim**-0.5)
    assert rel(out, reference64(qkv, bias, 2, window, shift, head_dim**-0.5)) < TOL[torch.float32]


@pytest.mark.parametrize("per_program", [2, 4])
def test_several_windows_per_program(per_program, kernel_device, rel):
    qkv, bias = make_inputs(per_program, 2, 2, 32, 16, 32, 8, torch.float16, kernel_device)
    ref = reference64(qkv, bias, 2, 8, 4, 32**-0.5)
    out = torch.full_like(ref, float("nan"), dtype=qkv.dtype)[:, :64]
    wa.window_attention(
        qkv, bias, num_heads=2, window=8, shift=4, scale=32**-0.5, out=out, windows_per_program=per_program
    )
    assert rel(out, ref) < TOL[torch.float16]
    with pytest.raises(ValueError, match="must divide"):
        wa.window_attention(qkv[..., :24], bias, num_heads=2, window=8, shift=4, scale=0.2, windows_per_program=2)


def test_non_contiguous_input_and_fp32_bias(kernel_device, rel):
    qkv, bias = make_inputs(3, 1, 1, 32, 16, 16, 8, torch.float16, kernel_device)
    ref = reference64(qkv, bias, 1, 8, 4, 32**-0.5)
    strided = qkv.to(memory_format=torch.channels_last)
    out = wa.window_attention(strided, bias.float(), num_heads=1, window=8, shift=4, scale=32**-0.5)
    assert rel(out, ref) < TOL[torch.float16]


def test_registered_backend_and_autograd(kernel_device, rel):
    fn = get_attention_backend("triton")
    assert fn is wa.triton_window_attention
    qkv, bias = make_inputs(5, 1, 1, 32, 8, 8, 8, torch.float32, kernel_device)
    qkv.requires_grad_(True)
    bias.requires_grad_(True)
    out = fn(qkv, bias, num_heads=1, window=8, shift=0, scale=32**-0.5)
    grad = torch.randn_like(out)
    g_qkv, g_bias = torch.autograd.grad(out, (qkv, bias), grad)
    ref = reference_window_attention(qkv, bias, num_heads=1, window=8, shift=0, scale=32**-0.5)
    r_qkv, r_bias = torch.autograd.grad(ref, (qkv, bias), grad)
    assert rel(out.detach(), ref.detach()) < TOL[torch.float32]
    assert rel(g_qkv, r_qkv) < 1e-5 and rel(g_bias, r_bias) < 1e-5


def test_empty_batch(kernel_device):
    qkv, bias = make_inputs(1, 0, 1, 32, 8, 8, 8, torch.float32, kernel_device)
    assert wa.window_attention(qkv, bias, num_heads=1, window=8, shift=0, scale=0.2).shape == (0, 32, 8, 8)


@pytest.mark.parametrize(
    "shape,bias_shape,kwargs,error",
    [
        ((1, 96, 16, 12), (1, 64, 64), dict(num_heads=1, window=8, shift=0), "multiples of the window"),
        ((1, 96, 16, 16), (1, 64, 64), dict(num_heads=1, window=8, shift=8), "shift must be"),
        ((1, 96, 16, 16), (2, 64, 64), dict(num_heads=1, window=8, shift=0), "bias must be"),
        ((1, 90, 16, 16), (4, 64, 64), dict(num_heads=4, window=8, shift=0), "not a multiple"),
        ((1, 96, 16, 16), (1, 256, 256), dict(num_heads=1, window=16, shift=0), "too large"),
    ],
)
def test_bad_arguments_are_clear_errors(shape, bias_shape, kwargs, error, kernel_device):
    qkv = torch.zeros(shape, device=kernel_device)
    bias = torch.zeros(bias_shape, device=kernel_device)
    with pytest.raises(ValueError, match=error):
        wa.window_attention(qkv, bias, scale=0.2, **kwargs)


def test_gpu_matches_eager_fp16_within_rounding(kernel_device, on_gpu, rel):
    if not on_gpu:
        pytest.skip("needs a CUDA GPU: compares the compiled kernel with eager fp16 at full size")
    qkv, bias = make_inputs(9, 16, 6, 32, 64, 64, 8, torch.float16, kernel_device)
    ref = reference64(qkv, bias, 6, 8, 4, 32**-0.5)
    eager = reference_window_attention(qkv, bias, num_heads=6, window=8, shift=4, scale=32**-0.5)
    out = run_kernel(qkv, bias, 6, 8, 4, 32**-0.5)
    assert rel(out, ref) <= max(1.5 * rel(eager, ref), 5e-4)
