"""The bundled photos: every name loads as RGB (grey repeated), the tensor form, crop boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsd_deploy import photos


def test_every_listed_photo_loads_as_8_bit_rgb():
    for name in photos.PHOTOS:
        array = photos.photo_array(name)
        assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3, name
    grey = photos.photo_array("camera")
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 0], grey[..., 2])


def test_matplotlibs_photo_is_available():
    assert photos.photo_array("grace_hopper").shape == (600, 512, 3)


def test_the_tensor_form_is_the_array_in_0_1():
    image = photos.photo("chelsea")
    assert image.shape == (3, 300, 451) and image.dtype == torch.float32
    assert torch.equal(image * 255, torch.from_numpy(photos.photo_array("chelsea")).permute(2, 0, 1).float())


def test_an_unknown_name_is_one_line():
    with pytest.raises(ValueError, match="no image 'astronot'"):
        photos.photo_array("astronot")


def test_crop_boxes_sit_on_the_grid_inside_the_image():
    assert photos.centre_box(300, 451, 256) == (22, 97)
    assert photos.centre_box(300, 451, 256, multiple=4) == (20, 96)
    rng, again = np.random.default_rng(3), np.random.default_rng(3)
    boxes = [photos.random_box(300, 451, 256, rng, multiple=4) for _ in range(50)]
    assert boxes == [photos.random_box(300, 451, 256, again, multiple=4) for _ in range(50)]
    assert all(t % 4 == 0 and l % 4 == 0 and 0 <= t <= 300 - 256 and 0 <= l <= 451 - 256 for t, l in boxes)
    assert len(set(boxes)) > 10
