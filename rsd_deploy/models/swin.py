"""The Swin layers of the ResShift denoiser, working on NCHW feature maps.

State-dict names follow the official ResShift code (``patch_embed.proj``, ``blocks.N.attn.qkv``,
...), so the official checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import get_attention_backend, shift_mask
from .layers import normalization


def relative_position_index(window: int) -> torch.Tensor:
    """(N, N) int64 index into the (2w-1)^2 bias table, N = window^2 (meshgrid "ij")."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    coords = coords.flatten(1)  # (2, N)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


class WindowAttention(nn.Module):
    """qkv projection, (shifted) window attention behind the swap point, output projection."""

    def __init__(self, dim: int, window: int, num_heads: int):
        super().__init__()
        self.dim = dim
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.backend = "reference"

    def relative_position_bias(self) -> torch.Tensor:
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1).contiguous()  # (heads, N, N)

    def forward(self, x: torch.Tensor, shift: int) -> torch.Tensor:
        # Linear layers on tokens are 1x1 convolutions on the NCHW map; applying them before the
        # roll/partition is exact because both are per-token.
        qkv = F.conv2d(x, self.qkv.weight[:, :, None, None], self.qkv.bias)
        attend = get_attention_backend(self.backend)
        out = attend(
            qkv,
            self.relative_position_bias(),
            num_heads=self.num_heads,
            window=self.window,
            shift=shift,
            scale=self.scale,
        )
        return F.conv2d(out, self.proj.weight[:, :, None, None], self.proj.bias)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinTransformerBlock(nn.Module):
    """GroupNorm -> (shifted) window attention -> residual -> GroupNorm -> MLP -> residual."""

    def __init__(
        self, dim: int, resolution: int, num_heads: int, window: int, shift: int, mlp_ratio: float, norm_groups: int = 32
    ):
        super().__init__()
        if resolution <= window:
            # As the official block: a grid no larger than one window is never shifted, and the
            # window shrinks to the grid. This is decided by the *training* resolution, for good.
            shift, window = 0, resolution
        self.window = window
        self.shift = shift
        self.norm1 = normalization(dim, norm_groups)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = normalization(dim, norm_groups)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if shift:
            # Kept only for checkpoint compatibility (the official layout stores it); the mask
            # actually used is derived from the runtime size, as the official forward does.
            self.register_buffer("attn_mask", shift_mask(resolution, resolution, window, shift).clone())
        else:
            self.attn_mask = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), self.shift)
        return x + self.mlp(self.norm2(x))


class PatchProjection(nn.Module):
    """1x1 conv between the UNet width and the Swin width (``patch_embed`` / ``patch_unembed``)."""

    def __init__(self, in_channels: int, out_channels: int, patch_norm: bool, norm_groups: int = 32):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 1)
        self.norm = normalization(out_channels, norm_groups) if patch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class SwinTransformerStage(nn.Module):
    """``BasicLayer`` of the official code: embed to the Swin width, ``depth`` blocks alternating
    unshifted / shifted by half a window, project back. No outer residual."""

    def __init__(
        self,
        channels: int,
        embed_dim: int,
        num_heads: int,
        window: int,
        depth: int,
        resolution: int,
        mlp_ratio: float,
        patch_norm: bool,
        norm_groups: int = 32,
    ):
        super().__init__()
        self.patch_embed = PatchProjection(channels, embed_dim, patch_norm, norm_groups)
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                embed_dim,
                resolution,
                num_heads,
                window,
                shift=0 if i % 2 == 0 else window // 2,
                mlp_ratio=mlp_ratio,
                norm_groups=norm_groups,
            )
            for i in range(depth)
        )
        self.patch_unembed = PatchProjection(embed_dim, channels, patch_norm, norm_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for block in self.blocks:
            x = block(x)
        return self.patch_unembed(x)
