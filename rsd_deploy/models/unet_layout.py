"""The ``UNetModelSwin`` config of a state dict, read off its keys and shapes (official ``.pth``
files carry no config; as timm's ``checkpoint_filter_fn`` beside each model)."""

from __future__ import annotations

import math

import torch


def infer_unet_config(state: dict[str, torch.Tensor]) -> dict:
    """The UNetModelSwin arguments that give this state dict's layout; KeyError when it is not a
    UNetModelSwin's. What the weights do not show (dropout, conv resampling, ...) is left to the
    constructor's defaults, the official values."""
    def shape(key: str) -> tuple[int, ...]:
        return tuple(state[key].shape)

    if "input_blocks.0.0.weight" not in state or "out.2.weight" not in state:
        raise KeyError("input_blocks.0.0.weight / out.2.weight")
    model_channels, first_in = shape("input_blocks.0.0.weight")[:2]
    out_channels = shape("out.2.weight")[0]
    levels: list[list[int]] = [[]]
    swin_levels: set[int] = set()
    index = 1
    while f"input_blocks.{index}.0.op.weight" in state or f"input_blocks.{index}.0.in_layers.2.weight" in state:
        if f"input_blocks.{index}.0.op.weight" in state:
            levels.append([])
        else:
            levels[-1].append(shape(f"input_blocks.{index}.0.in_layers.2.weight")[0])
            if f"input_blocks.{index}.1.patch_embed.proj.weight" in state:
                swin_levels.add(len(levels) - 1)
        index += 1
    swin = "middle_block.1."
    embed_dim = shape(swin + "patch_embed.proj.weight")[0]
    table_rows, heads = shape(swin + "blocks.0.attn.relative_position_bias_table")
    window = (math.isqrt(table_rows) + 1) // 2
    depth = len({k.split(".")[3] for k in state if k.startswith(swin + "blocks.")})
    image_size = 64
    for key in state:
        if key.startswith("input_blocks.") and key.endswith(".attn_mask"):
            block = int(key.split(".")[1])
            level = sum(1 for i in range(1, block) if f"input_blocks.{i}.0.op.weight" in state)
            grid = math.isqrt(state[key].shape[0]) * window
            image_size = grid * 2**level
            break
    in_channels = out_channels
    emb_out = shape("input_blocks.1.0.emb_layers.1.weight")[0]
    return {
        "image_size": image_size,
        "lq_size": image_size,
        "in_channels": in_channels,
        "model_channels": model_channels,
        "out_channels": out_channels,
        "channel_mult": [level[0] // model_channels for level in levels],
        "num_res_blocks": [len(level) for level in levels],
        "attention_resolutions": [image_size // 2**level for level in sorted(swin_levels)],
        "use_scale_shift_norm": emb_out == 2 * levels[0][0],
        "swin_depth": depth,
        "swin_embed_dim": embed_dim,
        "num_head_channels": embed_dim // heads,
        "window_size": window,
        "mlp_ratio": shape(swin + "blocks.0.mlp.fc1.weight")[0] / embed_dim,
        "patch_norm": swin + "patch_embed.norm.weight" in state,
        "noise_channels": first_in - in_channels - 3,
    }
