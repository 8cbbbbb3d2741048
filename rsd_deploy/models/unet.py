"""``UNetModelSwin``: the ResShift / SinSR / RSD latent denoiser.

The constructor takes the official config keys and the state-dict layout equals the official
one, so ``model.load_state_dict(official_state_dict, strict=True)`` works. RSD students carry
one extra input channel (a N(0, 1) noise map), given here by ``noise_channels=1`` and passed
to :meth:`UNetModelSwin.forward` as ``noise``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import get_attention_backend
from .config import records_config
from .layers import normalization, timestep_embedding
from .swin import SwinTransformerStage, WindowAttention


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, FiLM by the time embedding (scale, shift), -> conv; 1x1 skip."""

    def __init__(
        self, channels: int, emb_channels: int, out_channels: int, dropout: float, scale_shift: bool, norm_groups: int = 32
    ):
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(normalization(channels, norm_groups), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, (2 if scale_shift else 1) * out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels, norm_groups), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class TimestepSequential(nn.Sequential):
    """Runs its layers in order, handing the time embedding to the ResBlocks."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNetModelSwin(nn.Module):
    @records_config
    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 3,
        model_channels: int = 160,
        out_channels: int = 3,
        num_res_blocks: int | Sequence[int] = 2,
        attention_resolutions: Sequence[int] = (64, 32, 16, 8),
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 2, 4),
        conv_resample: bool = True,
        dims: int = 2,
        use_fp16: bool = False,
        num_heads: int = -1,
        num_head_channels: int = 32,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = False,
        swin_depth: int = 2,
        swin_embed_dim: int = 192,
        window_size: int = 8,
        mlp_ratio: float = 4.0,
        patch_norm: bool = False,
        cond_lq: bool = True,
        lq_size: int = 64,
        noise_channels: int = 0,
        norm_groups: int = 32,
        **unused_official_keys,
    ):
        super().__init__()
        if dims != 2:
            raise ValueError(f"UNetModelSwin: only dims=2 is supported, got dims={dims}")
        if resblock_updown:
            raise ValueError("UNetModelSwin: resblock_updown=True is not used by any ResShift release")
        if not cond_lq or lq_size != image_size:
            raise ValueError(
                "UNetModelSwin: only the LR-at-latent-size conditioning (cond_lq=True, lq_size == "
                f"image_size) of the x4 SR models is supported, got cond_lq={cond_lq}, lq_size={lq_size}"
            )
        if isinstance(num_res_blocks, int):
            num_res_blocks = [num_res_blocks] * len(channel_mult)
        if len(num_res_blocks) != len(channel_mult):
            raise ValueError("UNetModelSwin: num_res_blocks and channel_mult must have the same length")
        heads = swin_embed_dim // num_head_channels if num_head_channels > 0 else num_heads
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.noise_channels = noise_channels
        self.lq_channels = 3

        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.feature_extractor = nn.Identity()  # lq_size == image_size: the LR image goes in as is

        def swin(channels: int, resolution: int) -> SwinTransformerStage:
            return SwinTransformerStage(
                channels, swin_embed_dim, heads, window_size, swin_depth, resolution, mlp_ratio, patch_norm, norm_groups
            )

        def resblock(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, emb_dim, cout, dropout, use_scale_shift_norm, norm_groups)

        ch = int(channel_mult[0] * model_channels)
        first_in = in_channels + self.lq_channels + noise_channels
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(first_in, ch, 3, padding=1))])
        skip_channels = [ch]
        resolution = image_size
        for level, mult in enumerate(channel_mult):
            for j in range(num_res_blocks[level]):
                layers: list[nn.Module] = [resblock(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if resolution in attention_resolutions and j == 0:
                    layers.append(swin(ch, resolution))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepSequential(Downsample(ch, conv_resample)))
                skip_channels.append(ch)
                resolution //= 2

        self.middle_block = TimestepSequential(resblock(ch, ch), swin(ch, resolution), resblock(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks[level] + 1):
                layers = [resblock(ch + skip_channels.pop(), int(model_channels * mult))]
                ch = int(model_channels * mult)
                if resolution in attention_resolutions and i == 0:
                    layers.append(swin(ch, resolution))
                if level and i == num_res_blocks[level]:
                    layers.append(Upsample(ch, conv_resample))
                    resolution *= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(normalization(ch, norm_groups), nn.SiLU(), nn.Conv2d(int(channel_mult[0] * model_channels), out_channels, 3, padding=1))

    def set_attention_backend(self, name: str) -> "UNetModelSwin":
        """Route every Swin block's window attention through the named implementation."""
        get_attention_backend(name)  # fail here, with the list of names, rather than mid-forward
        for module in self.modules():
            if isinstance(module, WindowAttention):
                module.backend = name
        return self

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        lq: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: scaled noisy latent (B, C, H, W); timesteps: (B,) integer indices; lq: LR image in
        [-1, 1] at latent size; noise: (B, 1, H, W) N(0, 1) map, RSD students only."""
        if lq is None:
            raise ValueError("UNetModelSwin.forward: the LR image `lq` is required (cond_lq=True)")
        if (noise is None) != (self.noise_channels == 0):
            raise ValueError(
                f"UNetModelSwin.forward: this model takes {self.noise_channels} noise channel(s); "
                f"`noise` was {'missing' if noise is None else 'given'}"
            )
        dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))
        inputs = [x, self.feature_extractor(lq)] + ([noise] if noise is not None else [])
        h = torch.cat(inputs, dim=1).to(dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h).to(x.dtype)
