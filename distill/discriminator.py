"""Latent discriminators. Neither paper publishes its head, so these are our choices (docs/distill.md).

- :class:`FakeScoreWithHead` (RSD, DMD2 style): the fake ResShift model f_phi plus a small conv head
  on its middle-block features; the head trains with f_phi, and the generator's GAN gradient
  reaches the student through the fake UNet's input.
- :class:`TimeAwareDiscriminator` (TAD-SR): the frozen teacher's encoder half as feature extractor,
  with trainable heads on every level that are FiLM-conditioned on the timestep embedding.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from rsd_deploy.models.layers import normalization, timestep_embedding
from rsd_deploy.models.unet import UNetModelSwin


class PatchHead(nn.Module):
    """conv3x3 -> GroupNorm -> (FiLM by a time embedding) -> SiLU -> conv1x1 to one logit per pixel."""

    def __init__(self, channels: int, emb_channels: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = normalization(channels)
        self.film = nn.Linear(emb_channels, 2 * channels) if emb_channels else None
        self.act = nn.SiLU()
        self.out = nn.Conv2d(channels, 1, 1)

    def forward(self, features: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(self.conv(features))
        if self.film is not None:
            scale, shift = self.film(emb).to(h.dtype)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        return self.out(self.act(h)).flatten(1).mean(dim=1)  # one logit per sample


def middle_channels(unet: UNetModelSwin) -> int:
    return unet.middle_block[-1].out_layers[-1].out_channels


class FakeScoreWithHead(nn.Module):
    """f_phi(x_t, t, lq) -> (x0 prediction, discriminator logit), one forward pass for both."""

    def __init__(self, unet: UNetModelSwin):
        super().__init__()
        self.unet = unet
        self.head = PatchHead(middle_channels(unet))
        self._features: torch.Tensor | None = None
        unet.middle_block.register_forward_hook(self._keep_features)

    def _keep_features(self, module, inputs, output) -> None:
        self._features = output

    def forward(self, x: torch.Tensor, t: torch.Tensor, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = self.unet(x, t, lq=lq)
        logits = self.head(self._features)
        self._features = None
        return x0, logits


class TimeAwareDiscriminator(nn.Module):
    """TAD-SR's discriminator: frozen teacher encoder (t-conditioned) + trainable t-FiLM heads."""

    def __init__(self, teacher: UNetModelSwin):
        super().__init__()
        emb_channels = teacher.model_channels * 4
        self.taps = [i for i, block in enumerate(teacher.input_blocks) if i and self._ends_level(teacher, i)]
        self.heads = nn.ModuleList(PatchHead(self._channels(teacher.input_blocks[i]), emb_channels) for i in self.taps)
        self.middle_head = PatchHead(middle_channels(teacher), emb_channels)

    @staticmethod
    def _ends_level(unet: UNetModelSwin, index: int) -> bool:
        nxt = index + 1
        return nxt == len(unet.input_blocks) or hasattr(unet.input_blocks[nxt][0], "op")

    @staticmethod
    def _channels(block: nn.Module) -> int:
        return block[0].out_layers[-1].out_channels

    def forward(self, extractor: UNetModelSwin, x: torch.Tensor, t: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        """``extractor``: the frozen teacher (passed in, not owned, so it is neither trained nor saved here)."""
        unet = extractor
        dtype = unet.time_embed[0].weight.dtype
        emb = unet.time_embed(timestep_embedding(t, unet.model_channels).to(dtype))
        h = torch.cat([x, lq], dim=1).to(dtype)
        logits = []
        for i, block in enumerate(unet.input_blocks):
            h = block(h, emb)
            if i in self.taps:
                logits.append(self.heads[self.taps.index(i)](h, emb))
        logits.append(self.middle_head(unet.middle_block(h, emb), emb))
        return torch.stack(logits).mean(dim=0)
