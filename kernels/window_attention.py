"""Fused (shifted) window attention in Triton, with its plain PyTorch reference beside it.

One kernel does what the eager block does in ~9 launches: roll by -shift, window partition,
``q * scale``, ``q k^T``, relative position bias, the official shift mask, softmax (fp32),
``@ v``, window reverse and the roll back. It reads q, k and v straight from the qkv feature map
(B, 3C, H, W) and writes the (B, C, H, W) output, so each activation crosses HBM exactly once
each way and no roll / partition pass exists (issue 5, item 2: folded into the indexing).

Layout of the work: one program per (image, head, window). With windows of 8x8 the whole 64x64
score tile lives in registers, so softmax is a plain fp32 max / exp / sum, not an online loop.
Token ``t = iy * ws + ix`` of window ``(wy, wx)`` reads row ``(wy*ws + iy + shift) % H`` and
column ``(wx*ws + ix + shift) % W`` (the roll by -shift) and its output goes back to that same
pixel (the roll by +shift).

The shift mask is rebuilt from integers, bit for bit what :func:`rsd_deploy.models.attention.
shift_mask` gives (two quirks of the official ``calculate_mask`` kept): regions are labelled by
row only, ``label(r) = (r >= H - ws) + (r >= H - shift)`` on the rolled map, and the mask numbers
the tokens column-major, so attention index ``t`` carries the label of row ``wy*ws + t % ws``,
i.e. of ``wy*ws + ix``. Logits whose labels differ get -100 added (not -inf), as the official code.

Kernel arguments are ordered inputs, int32 scalars, outputs, everything else compile-time, so
the same kernel is what the TensorRT AOT plugin (:mod:`rsd_deploy.kernels.trt_plugin`) bakes
into an engine.

Importing this module registers the ``"triton"`` attention backend. CUDA tensors run the
compiled kernel; CPU tensors run it only under ``TRITON_INTERPRET=1`` (set before this module
is imported), which is how the CPU tests check it.
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

from rsd_deploy.models.attention import (
    MASK_VALUE,
    reference_window_attention,
    register_attention_backend,
    shift_mask,
)

__all__ = [
    "window_attention",
    "triton_window_attention",
    "reference_window_attention",
    "shift_mask",
    "kernel_meta",
    "default_num_warps",
    "window_attention_kernel",
]

# Globals read inside a @triton.jit function must be constexpr.
MASK_VALUE_CONST = tl.constexpr(MASK_VALUE)
LOG2E_CONST = tl.constexpr(1.4426950408889634)


# No specialisation of the window counts: a count of 1 would otherwise become a constant, and the
# JIT-compiled kernel stays the same one the AOT plugin compiles for dynamic shapes.
@triton.jit(do_not_specialize=["n_wy", "n_wx"])
def window_attention_kernel(
    qkv_ptr,  # (B, 3C, H, W) contiguous, channels [q | k | v], head-major inside each
    bias_ptr,  # (NUM_HEADS, N, N) contiguous relative position bias
    n_wy,  # int32: windows along H (H = n_wy * WINDOW)
    n_wx,  # int32: windows along W; a multiple of WINDOWS_PER_PROGRAM
    out_ptr,  # (B, C, H, W) contiguous
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    WINDOW: tl.constexpr,
    SHIFT: tl.constexpr,
    SCALE: tl.constexpr,
    BLOCK_N: tl.constexpr,  # next power of two >= WINDOW * WINDOW (and >= 16 for tl.dot)
    BLOCK_D: tl.constexpr,  # next power of two >= HEAD_DIM (and >= 16)
    DOT_PRECISION: tl.constexpr,  # "ieee" keeps fp32 inputs exact; no effect on fp16 / bf16
    VEC: tl.constexpr,  # gcd(SHIFT, WINDOW): length of the contiguous column runs of a shifted window
    WINDOWS_PER_PROGRAM: tl.constexpr,  # neighbouring windows along W handled one after the other
):
    N: tl.constexpr = WINDOW * WINDOW
    C: tl.constexpr = NUM_HEADS * HEAD_DIM
    EVEN_N: tl.constexpr = BLOCK_N == N
    EVEN_D: tl.constexpr = BLOCK_D == HEAD_DIM

    # Window counts rather than H and W are passed so that the compiler knows W is a multiple
    # of WINDOW: with that, window rows become vector loads without specialising W.
    H = n_wy * WINDOW
    W = n_wx * WINDOW
    # Windows vary fastest so that programs running side by side read neighbouring windows,
    # which share DRAM sectors (a window row is only 8 contiguous elements).
    pid = tl.program_id(0)
    n_groups = n_wx // WINDOWS_PER_PROGRAM
    group = pid % n_groups
    rest = pid // n_groups
    wy = rest % n_wy
    rest = rest // n_wy
    head = rest % NUM_HEADS
    b = rest // NUM_HEADS

    tok = tl.arange(0, BLOCK_N)
    iy = tok // WINDOW
    ix = tok % WINDOW
    d = tl.arange(0, BLOCK_D)
    nd_ok = (tok[:, None] < N) & (d[None, :] < HEAD_DIM)
    dn_ok = (d[:, None] < HEAD_DIM) & (tok[None, :] < N)
    if SHIFT > 0:
        row = (wy * WINDOW + iy + SHIFT) % H
    else:
        row = wy * WINDOW + iy

    # The bias (per head) and the shift mask (per window row) are the same for every window of a
    # program. The bias stays in its storage dtype until used: an fp32 copy would cost 16 more
    # registers a thread and occupancy with it.
    bias_ptrs = bias_ptr + head * (N * N) + tok[:, None] * N + tok[None, :]
    if EVEN_N:
        bias = tl.load(bias_ptrs)
    else:
        bias = tl.load(bias_ptrs, mask=(tok[:, None] < N) & (tok[None, :] < N), other=0.0)
    if SHIFT > 0:
        label_row = wy * WINDOW + ix  # column-major token numbering of the official mask
        label = (label_row >= H - WINDOW).to(tl.int32) + (label_row >= H - SHIFT).to(tl.int32)

    # Scalar parts of the offsets in int64 (B * 3C * H * W can pass 2^31 on big latents);
    # the per-element parts stay int32: HEAD_DIM * H * W is far below 2^31.
    hw = H.to(tl.int64) * W
    q_base = qkv_ptr + (b.to(tl.int64) * (3 * C) + head * HEAD_DIM) * hw
    k_base = q_base + C * hw
    v_base = k_base + C * hw
    o_base = out_ptr + (b.to(tl.int64) * C + head * HEAD_DIM) * hw
    plane = d * (H * W)  # (BLOCK_D,)

    for j in tl.static_range(WINDOWS_PER_PROGRAM):
        wx = group * WINDOWS_PER_PROGRAM + j
        if SHIFT > 0:
            # Same as (wx*WINDOW + ix + SHIFT) % W, written so that Triton's axis analysis sees
            # runs of VEC contiguous columns (VEC = gcd(SHIFT, WINDOW) divides W, so no run
            # wraps) and vectorises the loads; a plain modulo hides all contiguity. Built from
            # `tok`, not `ix`: the analysis only tracks divisions of a fully contiguous range.
            run_start = ((tok // VEC) % (WINDOW // VEC)) * VEC
            col = (wx * WINDOW + SHIFT + run_start) % W + tok % VEC
        else:
            col = wx * WINDOW + ix
        pix = row * W + col  # (BLOCK_N,) pixel offset inside one channel plane

        q_ptrs = q_base + pix[:, None] + plane[None, :]  # (BLOCK_N, BLOCK_D)
        kt_ptrs = k_base + plane[:, None] + pix[None, :]  # (BLOCK_D, BLOCK_N): k^T directly
        v_ptrs = v_base + pix[:, None] + plane[None, :]
        if EVEN_N and EVEN_D:
            q = tl.load(q_ptrs)
            kt = tl.load(kt_ptrs)
            v = tl.load(v_ptrs)
        else:
            q = tl.load(q_ptrs, mask=nd_ok, other=0.0)
            kt = tl.load(kt_ptrs, mask=dn_ok, other=0.0)
            v = tl.load(v_ptrs, mask=nd_ok, other=0.0)

        # Scores in fp32; scaling after the dot is the more accurate order and costs nothing.
        s = tl.dot(q, kt, input_precision=DOT_PRECISION) * SCALE + bias.to(tl.float32)
        if SHIFT > 0:
            s = tl.where(label[:, None] != label[None, :], s + MASK_VALUE_CONST, s)
        if not EVEN_N:
            # padding keys of a non-power-of-two window must get exactly zero weight
            s = tl.where(tok[None, :] < N, s, float("-inf"))
        m = tl.max(s, axis=1)
        p = tl.exp2((s - m[:, None]) * LOG2E_CONST)
        denom = tl.sum(p, axis=1)
        o = tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION) / denom[:, None]

        o_ptrs = o_base + pix[:, None] + plane[None, :]
        if EVEN_N and EVEN_D:
            tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty))
        else:
            tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=nd_ok)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def kernel_meta(
    num_heads: int, head_dim: int, window: int, shift: int, scale: float, windows_per_program: int = 1
) -> dict:
    """The compile-time arguments of :func:`window_attention_kernel` for one Swin block."""
    return dict(
        NUM_HEADS=num_heads,
        HEAD_DIM=head_dim,
        WINDOW=window,
        SHIFT=shift,
        SCALE=float(scale),
        BLOCK_N=max(16, _next_pow2(window * window)),
        BLOCK_D=max(16, _next_pow2(head_dim)),
        DOT_PRECISION="ieee",
        VEC=math.gcd(shift, window) if shift else window,
        WINDOWS_PER_PROGRAM=windows_per_program,
    )


def default_num_warps(dtype: torch.dtype) -> int:
    """Warps per program. fp32 needs 8: its non-tensor-core dots hold the tiles in registers and
    4 warps take 255 registers a thread (2 programs per SM); fp16 / bf16 fit 4 warps in 64."""
    return 8 if dtype == torch.float32 else 4


def _interpreting() -> bool:
    return type(window_attention_kernel).__name__ == "InterpretedFunction"


def _check(qkv: torch.Tensor, bias: torch.Tensor, num_heads: int, window: int, shift: int) -> None:
    if qkv.dim() != 4:
        raise ValueError(f"qkv must be (B, 3C, H, W), got shape {tuple(qkv.shape)}")
    b, c3, h, w = qkv.shape
    if c3 % (3 * num_heads):
        raise ValueError(f"qkv has {c3} channels, not a multiple of 3 * num_heads = {3 * num_heads}")
    if h % window or w % window:
        raise ValueError(f"H, W = {h}, {w} must be multiples of the window {window}")
    if not 0 <= shift < window:
        raise ValueError(f"shift must be in [0, window), got {shift} for window {window}")
    n = window * window
    if n > 128:
        # the whole N x N score tile lives in registers; past 128 tokens it would spill badly
        raise ValueError(f"window {window} ({n} tokens) is too large for the one-tile kernel (at most 128 tokens)")
    if tuple(bias.shape) != (num_heads, n, n):
        raise ValueError(f"bias must be (heads, N, N) = {(num_heads, n, n)}, got {tuple(bias.shape)}")
    if qkv.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"qkv dtype {qkv.dtype} is not supported (float16, bfloat16, float32)")
    if qkv.device.type == "cpu" and not _interpreting():
        raise RuntimeError(
            "the Triton window-attention kernel needs CUDA tensors; on the CPU it runs only under "
            "TRITON_INTERPRET=1 set before rsd_deploy.kernels.window_attention is imported "
            "(the default 'reference' backend is the CPU path)"
        )
    if qkv.device.type not in ("cuda", "cpu"):
        raise RuntimeError(f"unsupported device {qkv.device} for the Triton kernel")
    if qkv.numel() and b * num_heads * (h // window) * (w // window) >= 2**31:
        raise ValueError("too many (image, head, window) programs for one launch")


def window_attention(
    qkv: torch.Tensor,
    bias: torch.Tensor,
    *,
    num_heads: int,
    window: int,
    shift: int,
    scale: float,
    out: torch.Tensor | None = None,
    num_warps: int | None = None,
    windows_per_program: int = 1,
) -> torch.Tensor:
    """Launch the fused kernel (no autograd). Same contract as the ``reference`` backend.

    ``out``, if given, must be a contiguous (B, C, H, W) tensor of ``qkv``'s dtype and device;
    it is filled and returned (the tests pass a NaN-poisoned one to prove every element is written).
    ``num_warps`` and ``windows_per_program`` (neighbouring windows along W per program, which
    then share the bias, the mask and the DRAM sectors of their rows; must divide W / window)
    are tuning knobs for the benchmark.
    """
    _check(qkv, bias, num_heads, window, shift)
    b, c3, h, w = qkv.shape
    c = c3 // 3
    qkv = qkv.contiguous()  # a no-op for the conv output in the model
    # the official block adds the bias in the logits' dtype; fp16 bias also halves its reads
    bias = bias.to(device=qkv.device, dtype=qkv.dtype).contiguous()
    if out is None:
        out = torch.empty((b, c, h, w), device=qkv.device, dtype=qkv.dtype)
    elif out.shape != (b, c, h, w) or out.dtype != qkv.dtype or out.device != qkv.device or not out.is_contiguous():
        raise ValueError("out must be a contiguous (B, C, H, W) tensor with qkv's dtype and device")
    if out.numel() == 0:
        return out
    if windows_per_program < 1 or (w // window) % windows_per_program:
        raise ValueError(f"windows_per_program={windows_per_program} must divide the {w // window} windows along W")
    grid = (b * num_heads * (h // window) * (w // window // windows_per_program),)
    meta = kernel_meta(num_heads, c // num_heads, window, shift, scale, windows_per_program)
    with torch.cuda.device(qkv.device) if qkv.is_cuda else contextlib.nullcontext():
        window_attention_kernel[grid](
            qkv, bias, h // window, w // window, out, **meta, num_warps=num_warps or default_num_warps(qkv.dtype)
        )
    return out


class _WindowAttentionFn(torch.autograd.Function):
    """Forward through the fused kernel; backward recomputes the reference (not fused)."""

    @staticmethod
    def forward(ctx, qkv, bias, num_heads, window, shift, scale):
        ctx.save_for_backward(qkv, bias)
        ctx.args = (num_heads, window, shift, scale)
        return window_attention(qkv, bias, num_heads=num_heads, window=window, shift=shift, scale=scale)

    @staticmethod
    def backward(ctx, grad_out):
        qkv, bias = ctx.saved_tensors
        num_heads, window, shift, scale = ctx.args
        with torch.enable_grad():
            qkv_ = qkv.detach().requires_grad_(ctx.needs_input_grad[0])
            bias_ = bias.detach().requires_grad_(ctx.needs_input_grad[1])
            ref = reference_window_attention(
                qkv_, bias_, num_heads=num_heads, window=window, shift=shift, scale=scale
            )
            inputs = [t for t in (qkv_, bias_) if t.requires_grad]
            grads = iter(torch.autograd.grad(ref, inputs, grad_out))
        return (
            next(grads) if ctx.needs_input_grad[0] else None,
            next(grads) if ctx.needs_input_grad[1] else None,
            None,
            None,
            None,
            None,
        )


def triton_window_attention(
    qkv: torch.Tensor, bias: torch.Tensor, *, num_heads: int, window: int, shift: int, scale: float
) -> torch.Tensor:
    """The ``"triton"`` attention backend (the contract of ``rsd_deploy.models.attention``)."""
    if torch.is_grad_enabled() and (qkv.requires_grad or bias.requires_grad):
        return _WindowAttentionFn.apply(qkv, bias, num_heads, window, shift, scale)
    return window_attention(qkv, bias, num_heads=num_heads, window=window, shift=shift, scale=scale)


register_attention_backend("triton", triton_window_attention)

# Whether this import got Triton's CPU interpreter (TRITON_INTERPRET=1 at import time).
INTERPRET = _interpreting()
