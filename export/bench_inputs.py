"""The inputs of one ``rsd-bench`` case (batch x LR size), the same for every backend: real photos,
the noise ``SRPipeline.forward(seed=...)`` draws, and every tensor of the chain computed by the
fp32 PyTorch pipeline (so each stage is timed on the inputs it sees in a real run)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rsd_deploy import chain
from rsd_deploy.pipeline import SRPipeline
from rsd_deploy.sampling import NOISE_MAP_STREAM, PRIOR_STREAM, NoiseField

from .stages import FUSED, describe_stages


def photo_batch(batch: int, size: int) -> torch.Tensor:
    """(batch, 3, size, size) LR images in [0, 1]: centre crops of scikit-image's bundled photos,
    area-downscaled by 2 so that they look like LR inputs."""
    from rsd_deploy import photos

    out = []
    for index in range(batch):
        photo = photos.photo(photos.SCENES[index % len(photos.SCENES)])
        photo = F.avg_pool2d(photo[None], 2)[0]
        h, w = photo.shape[-2:]
        crop = min(size, h, w)
        top, left = photos.centre_box(h, w, crop)
        tile = photo[:, top : top + crop, left : left + crop]
        out.append(F.interpolate(tile[None], size=(size, size), mode="area")[0] if crop != size else tile)
    return torch.stack(out).clamp(0, 1)


@dataclass
class CaseInputs:
    """One case's inputs: ``lr`` in [0, 1], the noise (``eps``, ``noise_map`` for RSD students) of
    ``seed``, every chain tensor (:func:`rsd_deploy.chain.run`) and the fused stage's feeds."""

    lr: torch.Tensor
    seed: int
    eps: torch.Tensor
    noise_map: torch.Tensor | None
    tensors: dict[str, torch.Tensor]
    fused_feeds: dict[str, torch.Tensor]
    prior_scale: float
    scale: int

    @property
    def batch(self) -> int:
        return self.lr.shape[0]

    def feeds(self, stage: chain.Stage) -> dict[str, torch.Tensor]:
        """What ``stage`` reads, from the chain's tensors."""
        return chain.stage_feeds(stage, self.tensors)


@torch.no_grad()
def case_inputs(reference: SRPipeline, batch: int, size: int, seed: int = 0) -> CaseInputs:
    """Photos, the pipeline's own block-seeded noise (image i gets sample i of ``seed``, as in
    ``SRPipeline.forward``) and the chain's tensors computed by ``reference`` (a float32 CPU
    copy of the benchmarked pipeline). ``size`` is a multiple of 64, so nothing is padded."""
    lr = photo_batch(batch, size)
    field = NoiseField(seed)

    def noise(stream: int, depth: int) -> torch.Tensor:
        return torch.stack([field.crop(i, stream, depth, 0, 0, size, size) for i in range(batch)])

    eps = noise(PRIOR_STREAM, reference.codec.latent_channels)
    noise_map = noise(NOISE_MAP_STREAM, reference.unet.noise_channels) if reference.takes_noise_map else None
    prior_scale, scale = reference.schedule.prior_scale, reference.codec.scale
    tensors = chain.run(reference.run_stage, chain.to_model_range(lr), eps, noise_map, prior_scale, scale)
    # the fused graph reads the LR image itself ("lr", in [0, 1]) and the noise, by its stage description
    available = {**tensors, "lr": lr}
    fused_feeds = {name: available[name] for name in describe_stages(reference)[FUSED].input_names}
    return CaseInputs(lr, seed, eps, noise_map, tensors, fused_feeds, prior_scale, scale)
