"""Check rsd-deploy's models against the official ResShift code, on random weights.

    python scripts/verify_against_official.py /path/to/ResShift   # a checkout of zsyOAOA/ResShift

Builds the official UNetModelSwin and VQModelTorch from the real-world x4 config, gives ours the
same random weights (the UNet state dict as is, the autoencoder through the LDM -> diffusers
converter) and prints the relative L2 error of the UNet at 64x64 and 128x192 latents and of the
autoencoder's encode and decode. The official code needs `timm` and `einops` importable.
"""

from __future__ import annotations

import argparse
import sys

import torch

from rsd_deploy.models.autoencoder import VQAutoencoder, convert_ldm_vq_state_dict
from rsd_deploy.models.unet import UNetModelSwin
from rsd_deploy.presets import REALSR_X4_UNET


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / a.double().norm()).item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("resshift", help="path of a ResShift checkout")
    args = parser.parse_args()
    sys.path.insert(0, args.resshift)
    from ldm.models.autoencoder import VQModelTorch  # noqa: E402  (the official code)
    from models.unet import UNetModelSwin as OfficialUNet  # noqa: E402

    generator = torch.Generator().manual_seed(0)
    official = OfficialUNet(**REALSR_X4_UNET).eval()
    state = {k: torch.randn(v.shape, generator=generator) * 0.05 if v.is_floating_point() and not k.endswith("attn_mask") else v
             for k, v in official.state_dict().items()}
    official.load_state_dict(state, strict=True)
    ours = UNetModelSwin(**REALSR_X4_UNET).eval()
    ours.load_state_dict(state, strict=True)
    rows = []
    with torch.no_grad():
        for h, w in [(64, 64), (128, 192)]:
            x, lq = torch.randn(2, 1, 3, h, w, generator=generator).unbind(0)
            t = torch.tensor([14])
            rows.append((f"UNet {h}x{w}", relative_error(official(x, t, lq=lq), ours(x, t, lq=lq))))

    ddconfig = dict(double_z=False, z_channels=3, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4],
                    num_res_blocks=2, attn_resolutions=[], dropout=0.0, padding_mode="zeros")
    official_vq = VQModelTorch(ddconfig, n_embed=8192, embed_dim=3).eval()
    vq_state = {k: v + 0.02 * torch.randn(v.shape, generator=generator) for k, v in official_vq.state_dict().items()}
    official_vq.load_state_dict(vq_state)
    ours_vq = VQAutoencoder().eval()
    ours_vq.vq.load_state_dict(convert_ldm_vq_state_dict(vq_state), strict=True)
    with torch.no_grad():
        image = torch.rand(1, 3, 256, 256, generator=generator) * 2 - 1
        rows.append(("VQ encode 256x256", relative_error(official_vq.encode(image), ours_vq.encode(image))))
        z = torch.randn(1, 3, 64, 64, generator=generator)
        rows.append(("VQ decode 64x64", relative_error(official_vq.decode(z), ours_vq.decode(z))))

    print("| check | relative L2 error |\n|---|---|")
    for name, error in rows:
        print(f"| {name} | {error:.2e} |")
    worst = max(error for _, error in rows)
    print(f"worst {worst:.2e}: {'PASS' if worst < 1e-5 else 'FAIL'} (< 1e-5)")
    return 0 if worst < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
