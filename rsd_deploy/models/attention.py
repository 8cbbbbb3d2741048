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
- ``triton`` and ``trt_plugin``: the fused kernel and the TensorRT plugin node of
  ``rsd_deploy.kernels``, declared as entry points of :data:`BACKEND_ENTRY_POINTS` (this
  module never imports the kernels; requesting a backend loads its entry point).
"""

from __future__ import annotations

import functools
from importlib import metadata
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


def to_windows(qkv: torch.Tensor, window: int, num_heads: int) -> torch.Tensor:
    """(B, 3C, H, W) -> (3, B, nH, nW, heads, N, d): q, k and v of every window, windows in
    row-major order, tokens row-major inside a window (N = window^2, d = C / heads).

    Windows keep their own axes instead of being folded into the batch, so every reshape is of
    sizes read from the input or constants: exported graphs never divide one runtime size by
    another, and TensorRT never has to guess whether a reshape dimension is zero."""
    b, c3, h, w = qkv.shape
    x = qkv.reshape(b, 3, num_heads, c3 // 3 // num_heads, h // window, window, w // window, window)
    x = x.permute(1, 0, 4, 6, 2, 5, 7, 3)  # (3, B, nH, nW, heads, wy, wx, d)
    return x.reshape(3, b, h // window, w // window, num_heads, window * window, c3 // 3 // num_heads)


def from_windows(out: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`to_windows` for one tensor: (B, nH, nW, heads, N, d) -> ``shape``
    (B, C, H, W)."""
    b, c, h, w = shape
    n_h, n_w, heads, n, d = out.shape[1:]
    window = h // n_h
    x = out.reshape(b, n_h, n_w, heads, window, window, d).permute(0, 3, 6, 1, 4, 2, 5)  # (B, heads, d, nH, wy, nW, wx)
    return x.reshape(b, c, h, w)


def row_shift_mask(h: int, window: int, shift: int, device: torch.device | None = None) -> torch.Tensor:
    """The official shifted-window mask of each row of windows: (nH, N, N) float32, 0 / -100.

    Two quirks of the official ``calculate_mask``, kept exactly:
    1. The mask image is (1, 1, H, W) but indexed as if it were (1, H, W, 1): the "height"
       slices hit the singleton channel axis (only the last is non-empty) and the "width"
       slices label rows. So regions differ by row only (the mask is the same for every window
       of a row of windows) and width wrap-around is never masked.
    2. The partitioned mask windows are permuted (nW, ws, ws, 1) -> (nW, ws, 1, ws) before
       flattening, so tokens are numbered column-major: token t gets the label of row t % ws.
    Integer ops on the runtime height only, so an exported graph keeps H symbolic and no float
    op ever feeds a shape.
    """
    rows = torch.arange(h, device=device)
    labels = (rows >= h - window).long() + (rows >= h - shift).long()
    token_rows = torch.arange(window * window, device=device) % window
    labels = labels.reshape(-1, window)[:, token_rows]  # (nH, N)
    return torch.where(labels[:, :, None] != labels[:, None, :], MASK_VALUE, 0.0)


_cached_row_shift_mask = functools.lru_cache(maxsize=64)(row_shift_mask)


def _row_mask(h: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return row_shift_mask(h, window, shift, device)
    return _cached_row_shift_mask(h, window, shift, device)


def shift_mask(h: int, w: int, window: int, shift: int, device: torch.device | None = None) -> torch.Tensor:
    """The official shifted-window mask per window, (nW, N, N) float32 with 0 / -100 entries
    (the layout of the checkpoints' ``attn_mask`` buffers)."""
    # key the cache on the actual device: None under `with torch.device("meta")` is not None on CPU
    device = torch.device(device) if device is not None else torch.get_default_device()
    return _row_mask(h, window, shift, device).repeat_interleave(w // window, dim=0)


def reference_window_attention(
    qkv: torch.Tensor, bias: torch.Tensor, *, num_heads: int, window: int, shift: int, scale: float
) -> torch.Tensor:
    """Op for op the official ResShift window attention (without the qkv / output projections):
    roll, partition, ``(q * scale) @ k^T + bias (+ mask)``, softmax, ``@ v``, reverse, roll back.

    qkv: (B, 3C, H, W); bias: (heads, N, N) relative position bias. Returns (B, C, H, W).
    """
    b, c3, h, w = qkv.shape
    if shift:
        qkv = torch.roll(qkv, shifts=(-shift, -shift), dims=(2, 3))
    q, k, v = to_windows(qkv, window, num_heads)  # (B, nH, nW, heads, N, d)
    attn = (q * scale) @ k.transpose(-2, -1) + bias.to(q.dtype)
    if shift:  # one mask per row of windows, broadcast over the batch, the columns and the heads
        attn = attn + _row_mask(h, window, shift, attn.device).to(attn.dtype)[:, None, None]
    out = from_windows(attn.softmax(dim=-1) @ v, (b, c3 // 3, h, w))
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(2, 3))
    return out


def sdpa_window_attention(
    qkv: torch.Tensor, bias: torch.Tensor, *, num_heads: int, window: int, shift: int, scale: float
) -> torch.Tensor:
    """The same function through ``scaled_dot_product_attention`` with an additive float mask.

    SDPA's fast kernels take 4-D tensors: unshifted blocks fold the windows into the batch and
    share one (heads, N, N) bias; shifted ones fold them into the heads, (B, nW * heads, N, d),
    so one (nW * heads, N, N) bias + mask broadcasts over the batch instead of per image.
    """
    b, c3, h, w = qkv.shape
    n = window * window
    if shift:
        qkv = torch.roll(qkv, shifts=(-shift, -shift), dims=(2, 3))
    q, k, v = to_windows(qkv, window, num_heads)  # (B, nH, nW, heads, N, d)
    n_h, n_w, d = q.shape[1], q.shape[2], q.shape[-1]
    if shift:
        mask = _row_mask(h, window, shift, q.device).to(q.dtype)[:, None, None]  # (nH, 1, 1, N, N)
        additive = (bias.to(q.dtype) + mask).expand(n_h, n_w, num_heads, n, n).reshape(1, -1, n, n)
        q, k, v = (t.reshape(b, n_h * n_w * num_heads, n, d) for t in (q, k, v))
    else:
        additive = bias.to(q.dtype).unsqueeze(0)
        q, k, v = (t.reshape(b * n_h * n_w, num_heads, n, d) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=additive, scale=scale)
    out = from_windows(out.reshape(b, n_h, n_w, num_heads, n, d), (b, c3 // 3, h, w))
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(2, 3))
    return out


_BACKENDS: dict[str, WindowAttentionFn] = {
    "reference": reference_window_attention,
    "sdpa": sdpa_window_attention,
}
# Backends that live in optional modules and register themselves on import.
# Backends in other packages (the fused kernels of rsd_deploy.kernels) declare themselves as entry
# points of this group; the first request for one imports it, and the import registers it.
BACKEND_ENTRY_POINTS = "rsd_deploy.attention_backends"


def register_attention_backend(name: str, fn: WindowAttentionFn) -> None:
    _BACKENDS[name] = fn


def _declared() -> dict:
    return {point.name: point for point in metadata.entry_points(group=BACKEND_ENTRY_POINTS)}


def attention_backends() -> list[str]:
    return sorted(set(_BACKENDS) | set(_declared()))


def get_attention_backend(name: str) -> Callable[..., torch.Tensor]:
    if name not in _BACKENDS:
        declared = _declared()
        if name in declared:
            register_attention_backend(name, declared[name].load())
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose from {attention_backends()}")
    return _BACKENDS[name]
