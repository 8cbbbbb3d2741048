"""One rsd-bench case's inputs: photos, the pipeline's own noise, every chain tensor."""

from __future__ import annotations

import torch

from rsd_deploy import chain
from rsd_deploy.export.bench_inputs import case_inputs, photo_batch
from rsd_deploy.export.stages import FUSED, describe_stages
from rsd_deploy.sampling import NOISE_MAP_STREAM, PRIOR_STREAM, NoiseField


def test_photos_are_lr_images_in_range():
    photos = photo_batch(5, 64)
    assert photos.shape == (5, 3, 64, 64) and 0 <= photos.min() and photos.max() <= 1
    assert not torch.equal(photos[0], photos[1]) and torch.equal(photos[0], photos[4])  # four photos, then again


def test_noise_and_chain_tensors_are_the_pipelines(micro_pixel_unshuffle):
    pipe = micro_pixel_unshuffle
    case = case_inputs(pipe, batch=2, size=64, seed=3)
    field = NoiseField(3)
    assert torch.equal(case.eps[1], field.crop(1, PRIOR_STREAM, pipe.codec.latent_channels, 0, 0, 64, 64))
    assert torch.equal(case.noise_map[0], field.crop(0, NOISE_MAP_STREAM, 1, 0, 0, 64, 64))
    tensors = case.tensors
    torch.testing.assert_close(tensors["x_t"], chain.prior_sample(tensors["z_y"], case.eps, pipe.schedule.prior_scale))
    assert set(case.feeds(chain.DECODER)) == {"z"} and case.feeds(chain.DECODER)["z"] is tensors["x0"]
    assert tuple(case.fused_feeds) == describe_stages(pipe)[FUSED].input_names and case.fused_feeds["lr"] is case.lr
    assert case.batch == 2 and (case.prior_scale, case.scale) == (pipe.schedule.prior_scale, pipe.codec.scale)
