"""LPIPS (AlexNet) through the ``lpips`` package, with an explicit answer to "is it real?".

LPIPS needs torchvision's ImageNet AlexNet weights, which torchvision downloads into the torch hub
cache on first use. When they are not there and cannot be fetched (an offline machine), the only
runnable LPIPS is the package's trained linear heads on a *randomly initialised* backbone: it
exercises the same code path and still compares multi-scale conv features, but it is not the
perceptual metric of the papers. :func:`build_lpips` says which one it built, and logs it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's IMAGENET1K_V1 AlexNet weights
RANDOM_BACKBONE_SEED = 0  # the random backbone is seeded so that the fallback metric is reproducible
# Evaluating with the backbone a student was trained against would grade it on its own loss; the
# proof evaluates a random-backbone LPIPS on a different one.
EVAL_BACKBONE_SEED = 1


def alexnet_weights_cached() -> bool:
    return (Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE).is_file()


class LPIPSLoss(nn.Module):
    """LPIPS distance between images in [-1, 1], one value per sample; frozen."""

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
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=not pretrained, verbose=False)
        self.pretrained_backbone = pretrained
        self.seed = seed
        if not pretrained:
            log.warning(
                "LPIPS: AlexNet ImageNet weights (%s) are not in the torch hub cache; using the lpips "
                "linear heads on a seeded RANDOM backbone. This runs the loss code path but is NOT "
                "the perceptual LPIPS metric.", ALEXNET_FILE,
            )
        self.requires_grad_(False).eval()

    @property
    def kind(self) -> str:
        return "LPIPS-alex" if self.pretrained_backbone else f"LPIPS-alex(random backbone, seed {self.seed})"

    def train(self, mode: bool = True) -> "LPIPSLoss":
        return super().train(False)  # always eval: dropout in the lpips heads stays off

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(x.float(), y.float(), normalize=False).flatten()
