import pytest
import torch

from rsd_deploy.chain import padded_size
from rsd_deploy.export.stages import STAGE_NAMES, ShapeRange, describe_stages, stage_inputs_from_images
from rsd_deploy.chain import pad_to_multiple
from rsd_deploy.sampling import sample_one_step


def test_descriptions_follow_the_pipeline(tiny_rsd):
    stages = describe_stages(tiny_rsd)
    assert tuple(stages) == STAGE_NAMES
    assert stages["encoder"].input_names == ("lq_up",) and stages["encoder"].output_names == ("z_y",)
    assert stages["generator"].input_names == ("x_t", "lq", "noise_map")
    assert stages["decoder"].output_names == ("hr",)
    assert stages["pipeline"].input_names == ("lr", "eps", "noise_map")
    assert stages["encoder"].inputs[0].shape(2, 64, 128) == (2, 3, 256, 512)
    assert stages["generator"].inputs[2].shape(1, 64, 64) == (1, 1, 64, 64)
    assert stages["pipeline"].inputs[0].symbolic_shape() == ["batch", 3, "height_lr", "width_lr"]
    assert stages["decoder"].outputs[0].symbolic_shape() == ["batch", 3, "4*height", "4*width"]


def test_teacher_has_no_noise_map():
    from rsd_deploy.checkpoints import build_pipeline

    stages = describe_stages(build_pipeline("tiny"))
    assert stages["generator"].input_names == ("x_t", "lq")
    assert stages["pipeline"].input_names == ("lr", "eps")


def test_shape_range_profile_and_validation(tiny_rsd):
    stages = describe_stages(tiny_rsd)
    shapes = ShapeRange(batch=(1, 2, 4), height=(64, 128, 256), width=(64, 64, 192))
    profile = shapes.profile(stages["encoder"])
    assert profile["lq_up"] == ((1, 3, 256, 256), (2, 3, 512, 256), (4, 3, 1024, 768))
    lr_min, lr_opt, _ = shapes.profile(stages["pipeline"])["lr"]
    assert lr_min == (1, 3, 1, 1) and lr_opt == (2, 3, 128, 64)
    assert shapes.contains(3, 192, 64) and not shapes.contains(3, 100, 64) and not shapes.contains(5, 64, 64)
    with pytest.raises(ValueError, match="multiples of 64"):
        ShapeRange(height=(64, 96, 256))
    with pytest.raises(ValueError, match="min <= opt <= max"):
        ShapeRange(batch=(2, 1, 4))


@pytest.mark.parametrize("height, width", [(50, 40), (10, 30)])  # reflect and replicate padding
def test_fused_module_pads_like_the_pipeline(tiny_rsd, height, width):
    """The fused graph's source module equals pad_to_multiple + the three stages + crop."""
    pipe = tiny_rsd
    lr = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(2, 3, padded_size(height), padded_size(width))
    noise_map = torch.randn(2, 1, padded_size(height), padded_size(width))
    with torch.no_grad():
        fused = describe_stages(pipe)["pipeline"].module(pipe)(lr, eps, noise_map)
        lq = pad_to_multiple(lr * 2 - 1)
        hr = pipe.decode(sample_one_step(pipe.unet, pipe.schedule, pipe.encode(lq), lq, eps, noise_map))
    expected = ((hr[:, :, : 4 * height, : 4 * width] + 1) / 2).clamp(0, 1)
    assert fused.shape == (2, 3, 4 * height, 4 * width)
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-6)


def test_stage_inputs_chain_into_each_other(tiny_rsd):
    pipe = tiny_rsd
    lr = torch.rand(1, 3, 64, 64)
    real = stage_inputs_from_images(pipe, lr, seed=3)
    stages = describe_stages(pipe)
    with torch.no_grad():
        z_y = stages["encoder"].module(pipe)(real["encoder"]["lq_up"])
        torch.testing.assert_close(pipe.schedule.prior_sample(z_y, real["pipeline"]["eps"]), real["generator"]["x_t"])
        x0 = stages["generator"].module(pipe)(*real["generator"].values())
        torch.testing.assert_close(x0, real["decoder"]["z"])
        chained = (stages["decoder"].module(pipe)(x0) + 1) / 2
        fused = stages["pipeline"].module(pipe)(*real["pipeline"].values())
    torch.testing.assert_close(fused, chained.clamp(0, 1), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="multiples of 64"):
        stage_inputs_from_images(pipe, torch.rand(1, 3, 50, 64))


def test_single_input_graph_bakes_rsd_upscales_noise(tiny_rsd):
    """Its only input is the image; the noise is rsd-upscale's for the seed, so an image that
    fits one tile comes out exactly as rsd-upscale makes it."""
    from rsd_deploy.export.stages import single_input_stage

    spec = single_input_stage(tiny_rsd, ShapeRange(), seed=7)
    assert spec.input_names == ("lr",) and spec.output_names == ("hr",)
    lr = torch.rand(1, 3, 40, 70, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        baked = spec.module(tiny_rsd)(lr)
        assert spec.module(tiny_rsd)(lr.expand(2, -1, -1, -1)).shape == (2, 3, 160, 280)  # one noise for every image
    torch.testing.assert_close(baked, tiny_rsd(lr, seed=7), rtol=0, atol=1e-6)
