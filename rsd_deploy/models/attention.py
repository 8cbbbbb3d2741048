"""Shifted-window attention: the single swap point for fused kernels.

Every Swin block calls :func:`window_attention` with its ``qkv`` feature map in NCHW layout
(the qkv projection is per token, so it commutes with the roll and the window partition).
Roll, partition, scale, ``q k^T``, relative position bias, the shift mask, softmax, ``@ v``,
window reverse and the roll back all happen behind this function, so an implementation is
free to fold the roll and the partition into its indexing.

Implementations are registered by name; the model selects one with
``UNetModelSwin.set_attention_backend(name)``:

- ``reference``: plain PyTorch, op for op what the official ResShift block computes.
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with an additive mask, the
  strongest library baseline.
- ``triton``: the fused kernel from ``rsd_deploy.kernels`` (registered when that module is
  imported; requesting it imports it).
"""

from __future__ import annotations

import functools
import importlib
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

MASK_VALUE = -100.0  # the official block uses -100, not -inf, for masked logits


class WindowAttentionFn(Protocol):
    def __call__(
        self,
        qkv: torch.Tensor,
        bias: torch.Tensor,
        *,
        num_heads: int,
        window: int,
        shift: int,
        scale: float,
    ) -> torch.Tensor: ...


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * nWindows, window * window, C), windows in row-major order."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // window, window, w // window, window)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nWindows, window * window, C) -> (B, C, H, W)."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(b, h // window, w // window, window, window, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


def _shift_mask(h: int, w: int, window: int, shift: int, device: torch.device | None) -> torch.Tensor:
    # Two quirks of the official calculate_mask, kept exactly:
    # 1. The mask image is (1, 1, H, W) but indexed as if it were (1, H, W, 1): the "height"
    #    slices hit the singleton channel axis (only the last is non-empty) and the "width"
    #    slices label rows. So regions differ by row only; width wrap-around is never masked.
    # 2. The partitioned mask windows are permuted (nW, ws, ws, 1) -> (nW, ws, 1, ws) before
    #    flattening, so tokens are numbered column-major: token i gets the label of row i % ws.
    # Written with tensor ops on the runtime size so that export keeps H and W symbolic.
    rows = torch.arange(h, device=device)
    region = (rows >= h - window).float() + (rows >= h - shift).float()
    region = region.view(1, 1, h, 1).expand(1, 1, h, w).contiguous()
    ids = window_partition(region, window).view(-1, window, window).transpose(1, 2).reshape(-1, window * window)
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.where(diff != 0, MASK_VALUE, 0.0)


_cached_shift_mask = functools.lru_cache(maxsize=64)(_shift_mask)


def shift_mask(h: int, w: int, window: int, shift: int, device: torch.device | None = None) -> torch.Tensor:
    """The official shifted-window mask, (nW, N, N) float32 with 0 / -100 entries."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return _shift_mask(h, w, window, shift, device)
    # key the cache on the actual device: None under `with torch.device("meta")` is not None on CPU
    return _cached_shift_mask(h, w, window, shift, torch.device(device) if device is not None else torch.get_default_device())


def reference_window_attention(
    qkv: torch.Tensor, bias: torch.Tensor, *, num_heads: int, window: int, shift: int, scale: float
) -> torch.Tensor:
    """Op-for-op the official ResShift window attention (without the qkv / output projections).

    qkv: (B, 3C, H, W); bias: (heads, N, N) relative position bias. Returns (B, C, H, W).
    """
    b, c3, h, w = qkv.shape
    c = c3 // 3
    n = window * window
    if shift:
        qkv = torch.roll(qkv, shifts=(-shift, -shift), dims=(2, 3))
    tokens = window_partition(qkv, window)  # (B*nW, N, 3C)
    heads = tokens.reshape(-1, n, 3, num_heads, c // num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = heads[0], heads[1], heads[2]  # (B*nW, heads, N, d)
    attn = (q * scale) @ k.transpose(-2, -1)
    attn = attn + bias.unsqueeze(0).to(attn.dtype)
    if shift:
        mask = shift_mask(h, w, window, shift, attn.device).to(attn.dtype)
        n_windows = mask.shape[0]
        attn = attn.view(-1, n_windows, num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, num_heads, n, n)
    attn = attn.softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(-1, n, c)
    out = window_reverse(out, window, h, w)
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(2, 3))
    return out


def sdpa_window_attention(
    qkv: torch.Tensor, bias: torch.Tensor, *, num_heads: int, window: int, shift: int, scale: float
) -> torch.Tensor:
    """The same function through ``scaled_dot_product_attention`` with an additive float mask.

    Windows are folded into the head axis, (B, nW * heads, N, d), so one (nW * heads, N, N)
    bias + mask broadcasts over the batch instead of being repeated per image.
    """
    b, c3, h, w = qkv.shape
    c = c3 // 3
    n = window * window
    n_windows = (h // window) * (w // window)
    if shift:
        qkv = torch.roll(qkv, shifts=(-shift, -shift), dims=(2, 3))
    tokens = window_partition(qkv, window)  # (B*nW, N, 3C)
    heads = tokens.reshape(b, n_windows, n, 3, num_heads, c // num_heads).permute(3, 0, 1, 4, 2, 5)
    if shift:  # the mask differs per window: one (nW * heads, N, N) mask shared across the batch
        q, k, v = (t.reshape(b, n_windows * num_heads, n, c // num_heads) for t in heads)
        additive = bias.to(q.dtype).unsqueeze(0) + shift_mask(h, w, window, shift, q.device).to(q.dtype).unsqueeze(1)
        additive = additive.reshape(1, n_windows * num_heads, n, n)
    else:  # the bias alone broadcasts over every window without a copy
        q, k, v = (t.reshape(b * n_windows, num_heads, n, c // num_heads) for t in heads)
        additive = bias.to(q.dtype).unsqueeze(0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=additive, scale=scale)
    out = out.view(b, n_windows, num_heads, n, c // num_heads).permute(0, 1, 3, 2, 4).reshape(-1, n, c)
    out = window_reverse(out, window, h, w)
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(2, 3))
    return out


_BACKENDS: dict[str, WindowAttentionFn] = {
    "reference": reference_window_attention,
    "sdpa": sdpa_window_attention,
}
# Backends that live in optional modules and register themselves on import.
_LAZY_BACKENDS = {
    "triton": "rsd_deploy.kernels.window_attention",
    "trt_plugin": "rsd_deploy.kernels.onnx_custom_op",  # one custom ONNX node per attention
}


def register_attention_backend(name: str, fn: WindowAttentionFn) -> None:
    _BACKENDS[name] = fn


def attention_backends() -> list[str]:
    return sorted(set(_BACKENDS) | set(_LAZY_BACKENDS))


def get_attention_backend(name: str) -> Callable[..., torch.Tensor]:
    if name not in _BACKENDS and name in _LAZY_BACKENDS:
        importlib.import_module(_LAZY_BACKENDS[name])
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose from {attention_backends()}")
    return _BACKENDS[name]
