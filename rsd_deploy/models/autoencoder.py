"""Latent codecs: the VQ-f4 autoencoder (through diffusers' ``VQModel``) and a parameter-free
pixel-unshuffle codec used by the small demo models.

Both map an HR image in [-1, 1] to a latent at LR size and back:
``encode(hr) -> z`` (no quantisation, as the reference), ``decode(z) -> hr`` (the VQ codec
snaps ``z`` to its codebook first, as the reference ``decode`` does). Each says what it is in
``.kind`` (``"vq"`` / ``"pixel_unshuffle"``), a JSON config in :func:`codec_kind`. The layouts of
checkpoint files (the official LDM one, diffusers') are read here too: :func:`infer_vq_config`,
:func:`diffusers_vq_state_dict`.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

# diffusers' VQModel config of the LDM VQ-f4 autoencoder that ResShift/SinSR/RSD use.
VQ_F4_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [128, 256, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 3,
    "sample_size": 256,
    "num_vq_embeddings": 8192,
    "norm_num_groups": 32,
    "vq_embed_dim": 3,
}
# The parameter-free codec's whole config (saved beside demo models as is).
PIXEL_UNSHUFFLE_CONFIG = {"kind": "pixel_unshuffle", "factor": 4}


def nearest_codebook_entries(z: torch.Tensor, codebook: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """Snap every latent vector of z (B, C, H, W) to its nearest codebook row (K, C).

    Distances are computed as LDM's VectorQuantizer2 does (|z|^2 + |e|^2 - 2 z.e), so ties and
    near-ties resolve to the same code; the straight-through form ``z + (z_q - z)`` is kept too.
    Pixels are processed in chunks in eager mode so a large latent never needs a (HW x K) matrix.
    """
    b, c, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, c)
    codebook = codebook.to(flat.dtype)
    code_norms = (codebook**2).sum(dim=1)

    def nearest(part: torch.Tensor) -> torch.Tensor:
        distance = (part**2).sum(dim=1, keepdim=True) + code_norms - 2 * part @ codebook.t()
        return distance.argmin(dim=1)

    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        indices = nearest(flat)  # one graph node; engines run it on tile-sized latents
    else:
        indices = torch.cat([nearest(part) for part in flat.split(chunk)])
    quantized = codebook[indices].view(b, h, w, c).permute(0, 3, 1, 2)
    return z + (quantized - z)


class VQAutoencoder(nn.Module):
    """The VQ-f4 autoencoder as ResShift uses it; ``self.vq`` is a diffusers ``VQModel``."""

    kind = "vq"
    scale = 4

    def __init__(self, config: dict | None = None):
        super().__init__()
        from diffusers import VQModel

        self.config = dict(VQ_F4_CONFIG if config is None else config)
        self.vq = VQModel(**self.config)
        self.latent_channels = self.config["vq_embed_dim"]

    def encode(self, hr: torch.Tensor) -> torch.Tensor:
        return self.vq.quant_conv(self.vq.encoder(hr))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        quantized = nearest_codebook_entries(z, self.vq.quantize.embedding.weight)
        return self.vq.decoder(self.vq.post_quant_conv(quantized))


class PixelUnshuffleCodec(nn.Module):
    """A parameter-free x4 "autoencoder": the latent is the HR image's 4x4 pixel blocks stacked
    on channels (48 channels at LR size). Used by the small demo models trained on a CPU."""

    kind = "pixel_unshuffle"
    scale = 4

    def __init__(self, config: dict | None = None):
        super().__init__()
        self.config = dict(PIXEL_UNSHUFFLE_CONFIG)
        self.latent_channels = 3 * self.scale**2

    def encode(self, hr: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(hr, self.scale)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(z, self.scale)


def codec_kind(config: dict | None) -> str:
    """The ``.kind`` of the codec a JSON config builds, before there is one: ``{"kind":
    "pixel_unshuffle", ...}`` or a VQModel config (None: the VQ-f4 one)."""
    return PixelUnshuffleCodec.kind if config is not None and config.get("kind") == PixelUnshuffleCodec.kind else VQAutoencoder.kind


def build_codec(config: dict | None) -> nn.Module:
    """A codec from its JSON config (see :func:`codec_kind`)."""
    return PixelUnshuffleCodec() if codec_kind(config) == PixelUnshuffleCodec.kind else VQAutoencoder(config)


# --- layouts: the config of a state dict, the official LDM layout -> diffusers' -----------------


def infer_vq_config(state: dict[str, torch.Tensor]) -> dict:
    """The VQModel config of a diffusers-layout VQ state dict (KeyError when it is not one)."""
    levels = len({k.split(".")[2] for k in state if k.startswith("encoder.down_blocks.")})
    channels = [state[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(levels)]
    per_block = len({k.split(".")[4] for k in state if k.startswith("encoder.down_blocks.0.resnets.")})
    codes, dim = state["quantize.embedding.weight"].shape
    return {
        **VQ_F4_CONFIG,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": channels,
        "layers_per_block": per_block,
        "latent_channels": state["encoder.conv_out.weight"].shape[0],
        "num_vq_embeddings": codes,
        "vq_embed_dim": dim,
    }


_RESNET_RENAMES = {"nin_shortcut": "conv_shortcut"}
_ATTN_RENAMES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def is_ldm_vq_state_dict(state_dict: dict) -> bool:
    return "quantize.embedding.weight" in state_dict and any(k.startswith("encoder.down.") for k in state_dict)


def diffusers_vq_state_dict(state_dict: dict) -> dict:
    """A VQ state dict in diffusers' layout: the official LDM one converted (its level count read
    from its keys), any other as it is."""
    if not is_ldm_vq_state_dict(state_dict):
        return state_dict
    levels = len({k.split(".")[2] for k in state_dict if k.startswith("encoder.down.")})
    return convert_ldm_vq_state_dict(state_dict, num_levels=levels)


def convert_ldm_vq_state_dict(state_dict: dict, num_levels: int = 3) -> dict:
    """Rename an LDM ``VQModelTorch`` state dict (``autoencoder_vq_f4.pth``) to diffusers' layout.

    The mid-block attention's 1x1-conv q/k/v/proj weights become linear weights.
    """
    out = {}
    for key, value in state_dict.items():
        new = key
        new = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", new)
        new = re.sub(r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2.", new)
        new = re.sub(r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", new)
        up = re.match(r"^decoder\.up\.(\d+)\.(block|upsample)\.(?:(\d+)\.)?", new)
        if up:
            level = num_levels - 1 - int(up.group(1))
            tail = new[up.end():]
            if up.group(2) == "block":
                new = f"decoder.up_blocks.{level}.resnets.{up.group(3)}.{tail}"
            else:
                new = f"decoder.up_blocks.{level}.upsamplers.0.{tail}"
        new = re.sub(r"^(encoder|decoder)\.mid\.block_(\d)\.", lambda m: f"{m.group(1)}.mid_block.resnets.{int(m.group(2)) - 1}.", new)
        attn = re.match(r"^(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)$", new)
        if attn:
            new = f"{attn.group(1)}.mid_block.attentions.0.{_ATTN_RENAMES[attn.group(2)]}.{attn.group(3)}"
            if attn.group(2) != "norm" and attn.group(3) == "weight" and value.dim() == 4:
                value = value[:, :, 0, 0]
        for old_name, new_name in _RESNET_RENAMES.items():
            new = new.replace(f".{old_name}.", f".{new_name}.")
        out[new] = value
    return out
