"""Image quality of images in [0, 1]: PSNR, SSIM and LPIPS, one definition each.

- :func:`psnr`: over a whole batch in float64 (how close an exported graph is to PyTorch);
- :func:`image_metrics`: the mean PSNR, SSIM (scikit-image's, on 8-bit RGB) and LPIPS of each
  image of a batch (how good an SR output is against its HR photo);
- :class:`LPIPS`: the AlexNet LPIPS of the ``lpips`` package, also the distillation's perceptual
  loss. It needs torchvision's ImageNet AlexNet weights, which torchvision downloads into the
  torch hub cache on first use. When they are not there (an offline machine) the only runnable
  LPIPS is the package's trained linear heads on a seeded *random* backbone: the same code path,
  still multi-scale conv features, but not the perceptual metric of the papers. ``.kind`` says
  which one it is, and the fallback is logged once per process.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

log = logging.getLogger(__name__)

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's IMAGENET1K_V1 AlexNet weights
RANDOM_BACKBONE_SEED = 0  # the random backbone is seeded so that the fallback metric is reproducible
# Evaluating with the backbone a student was trained against would grade it on its own loss; the
# distillation proof evaluates a random-backbone LPIPS on a different one.
EVAL_BACKBONE_SEED = 1

_random_backbone_logged = False


def psnr(actual: torch.Tensor | np.ndarray, expected: torch.Tensor | np.ndarray, data_range: float = 1.0) -> float:
    """PSNR in dB over everything given (the whole batch), in float64; inf when identical."""
    mse = float(np.mean((np.asarray(actual, dtype=np.float64) - np.asarray(expected, dtype=np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def alexnet_weights_cached() -> bool:
    return (Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE).is_file()


def _log_random_backbone() -> None:
    global _random_backbone_logged
    if not _random_backbone_logged:
        _random_backbone_logged = True
        log.warning("LPIPS: AlexNet ImageNet weights (%s) not in the torch hub cache; using a seeded RANDOM backbone "
                    "(runs, but is not the perceptual metric)", ALEXNET_FILE)


class LPIPS(nn.Module):
    """LPIPS distance between images in [-1, 1], one value per sample; frozen, always in eval mode.

    ``backbone``: ``"auto"`` (ImageNet AlexNet when cached, else a random one seeded by ``seed``),
    ``"pretrained"`` (an error when not cached) or ``"random"``."""

    def __init__(self, backbone: str = "auto", seed: int = RANDOM_BACKBONE_SEED):
        super().__init__()
        import lpips

        if backbone not in ("auto", "pretrained", "random"):
            raise ValueError(f"LPIPS backbone must be auto, pretrained or random, got {backbone!r}")
        pretrained = backbone == "pretrained" or (backbone == "auto" and alexnet_weights_cached())
        if backbone == "pretrained" and not alexnet_weights_cached():
            raise RuntimeError(
                f"LPIPS: pretrained AlexNet weights requested but {ALEXNET_FILE} is not in "
                f"{Path(torch.hub.get_dir()) / 'checkpoints'} (run once where torchvision can download it)"
            )
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # lpips builds torchvision's AlexNet with the deprecated `pretrained=` argument
            warnings.filterwarnings("ignore", message=r".*(parameter 'pretrained'|weight enum)", category=UserWarning)
            torch.manual_seed(seed)
            self.net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=not pretrained, verbose=False)
        self.pretrained_backbone = pretrained
        self.seed = seed
        if not pretrained:
            _log_random_backbone()
        self.requires_grad_(False).eval()

    @property
    def kind(self) -> str:
        return "LPIPS-alex" if self.pretrained_backbone else f"LPIPS-alex(random backbone, seed {self.seed})"

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)  # always eval: dropout in the lpips heads stays off

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(x.float(), y.float(), normalize=False).flatten()


@torch.no_grad()
def lpips_distance(metric: LPIPS, actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Mean LPIPS between image batches in [0, 1]; ``metric.kind`` says which LPIPS it is."""
    return float(metric(actual * 2 - 1, expected * 2 - 1).mean())


def _uint8(x: torch.Tensor) -> np.ndarray:
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_metrics(output: torch.Tensor, target: torch.Tensor, lpips: LPIPS) -> dict[str, float]:
    """Mean PSNR (dB), SSIM and LPIPS over a batch of (B, 3, H, W) images in [0, 1]; PSNR and SSIM
    of the 8-bit output (as saved), LPIPS of the 8-bit output against the target."""
    from skimage.metrics import structural_similarity

    out, ref = _uint8(output), _uint8(target)
    psnrs = [psnr(o, r, data_range=255) for o, r in zip(out, ref)]
    ssim = [structural_similarity(r, o, channel_axis=2, data_range=255) for o, r in zip(out, ref)]
    with torch.no_grad():
        device = next(lpips.parameters()).device
        quantised = torch.from_numpy(out).permute(0, 3, 1, 2).float().to(device) / 255
        distance = lpips(quantised * 2 - 1, target.to(device).float() * 2 - 1)
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssim)), "lpips": float(distance.mean())}
