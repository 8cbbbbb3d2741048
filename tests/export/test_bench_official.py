"""--upstream-src plumbing: which checkout runs which model, importing two checkouts one after the
other, the sampler built with the script's arguments and the benchmarked weights, the script's
calls, and one-line reasons when a checkout cannot run.

The checkouts here are fakes this test writes (same file names, class names and call signatures
as the official repositories; their networks are the project's own modules, so nothing official
is copied): they test the import and dispatch, never a number. The parity of the real official
code with the project's pipeline is the slow test at the end (RSD_OFFICIAL_SINSR=checkout)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from rsd_deploy.checkpoints import build_pipeline
from rsd_deploy.export.bench_backends import BenchContext, backends
from rsd_deploy.export.bench_inputs import case_inputs
from rsd_deploy.export.bench_official import OfficialSampler, checkout_method, find_checkout
from rsd_deploy.export.bench_upstream import RESSHIFT_V3, RSD, UPSTREAM_STAGES, UpstreamProcedure
from rsd_deploy.export.runners import RunnerUnavailable
from rsd_deploy.export.stages import ShapeRange
from rsd_deploy.pipeline import SRPipeline
from rsd_deploy.schedule import TEACHER_4

FILES = {
    "utils/__init__.py": "",
    "utils/util_common.py": """
        import importlib
        def instantiate_from_config(config):
            module, name = config["target"].rsplit(".", 1)
            return getattr(importlib.import_module(module), name)(**config.get("params", dict()))
    """,
    "utils/util_net.py": """
        def reload_model(model, ckpt):
            for key, value in model.state_dict().items():
                assert key in ckpt
                value.copy_(ckpt[key])
    """,
    "utils/util_image.py": """
        class ImageSpliterTh:
            pass
    """,
    "models/__init__.py": "",
    "models/nets.py": """
        import torch
        import torch.nn.functional as F
        from rsd_deploy.models import unet

        class UNetModelSwin(unet.UNetModelSwin):  # a fake checkout: the project's network, called as RSD's (noise_input)
            def forward(self, x, timesteps, lq=None, noise_input=None):
                self.noise_channels = 0 if noise_input is None else noise_input.shape[1]
                return super().forward(x, timesteps, lq, noise_input)

        class Diffusion:
            def __init__(self, sf, steps, kappa, timestep_respacing=None):
                self.sf, self.num_timesteps, self.kappa, self.calls = sf, steps, kappa, []
            def encode_first_stage(self, y, first_stage_model, up_sample=False):
                return first_stage_model.encode(F.interpolate(y, scale_factor=self.sf, mode="bicubic") if up_sample else y)
            def decode_first_stage(self, z_sample, first_stage_model=None):
                return first_stage_model.decode(z_sample)
            def prior_sample(self, y, noise=None):
                return y + self.kappa * noise
            def p_sample(self, model, x, y, t, clip_denoised=True, denoised_fn=None, model_kwargs=None, noise_repeat=False):
                self.calls.append((int(t[0]), sorted(model_kwargs)))
                x0 = model(x, t, **model_kwargs)
                return {"sample": x0, "pred_xstart": x0}
    """,
    "ldm/__init__.py": "",
    "ldm/vq.py": """
        import torch.nn as nn
        import torch.nn.functional as F

        class VQModelTorch(nn.Module):  # a few LDM-named layers: enough to test the weight mapping
            def __init__(self, ch, embed_dim, n_embed):
                super().__init__()
                self.encoder, self.decoder = nn.Module(), nn.Module()
                self.encoder.conv_in, self.encoder.norm_out = nn.Conv2d(3, ch, 3, padding=1), nn.GroupNorm(32, ch, eps=1e-6)
                self.encoder.conv_out, self.decoder.conv_out = nn.Conv2d(ch, embed_dim, 3, padding=1), nn.Conv2d(ch, 3, 3, padding=1)
                self.decoder.conv_in = nn.Conv2d(embed_dim, ch, 3, padding=1)
                self.quant_conv, self.post_quant_conv = nn.Conv2d(embed_dim, embed_dim, 1), nn.Conv2d(embed_dim, embed_dim, 1)
                self.quantize = nn.Module()
                self.quantize.embedding = nn.Embedding(n_embed, embed_dim)
            def encode(self, x):
                h = self.encoder.conv_out(self.encoder.norm_out(self.encoder.conv_in(x)))
                return self.quant_conv(F.avg_pool2d(h, 4))
            def decode(self, h):
                h = self.decoder.conv_in(self.post_quant_conv(h))
                return self.decoder.conv_out(F.interpolate(h, scale_factor=4))
    """,
    "sampler.py": """
        import torch
        from utils import util_common, util_net, util_image

        class BaseSampler:
            def __init__(self, configs, sf=None, use_fp16=False, chop_size=128, chop_stride=128, chop_bs=1, seed=10000, ddim=False,
                         use_amp=False, padding_offset=16):
                self.built_with = dict(sf=sf, use_fp16=use_fp16, chop_size=chop_size, chop_stride=chop_stride, chop_bs=chop_bs, seed=seed,
                                       ddim=ddim, use_amp=use_amp, padding_offset=padding_offset)
                self.configs, self.chop_size, self.chop_stride, self.chop_bs, self.seed = configs, chop_size, chop_stride, chop_bs, seed
                self.sf = sf or configs.diffusion.params.sf
                self.calls = []
                self.setup_dist()
                self.setup_seed()
                self.build_model()
            def setup_dist(self, gpu_id=None):
                raise AssertionError("Please assign one available GPU using CUDA_VISIBLE_DEVICES!")
            def setup_seed(self, seed=None):
                torch.manual_seed(self.seed)
            def build_model(self):
                raise RuntimeError("Torch not compiled with CUDA enabled")
            def _sample(self, y0, one_step):
                z_y = self.base_diffusion.encode_first_stage(y0, self.autoencoder, up_sample=True)
                x = self.base_diffusion.prior_sample(z_y, torch.randn_like(z_y))
                kwargs = {"lq": y0}
                if self.configs.model.get("add_noise", False):
                    kwargs["noise_input"] = torch.randn(y0.shape[:1] + (1,) + y0.shape[2:])
                for step in reversed(range(self.base_diffusion.num_timesteps)):
                    x = self.base_diffusion.p_sample(self.model, x, z_y, torch.tensor([step]), model_kwargs=kwargs)["sample"]
                    if one_step:
                        break
                return self.base_diffusion.decode_first_stage(x, self.autoencoder)

        class ResShiftSampler(BaseSampler):
            def sample_func(self, y0, noise_repeat=False, mask=False):
                self.calls.append(dict(shape=tuple(y0.shape), low=float(y0.min()), noise_repeat=noise_repeat, mask=mask))
                return self._sample(y0, one_step=False).clamp_(-1.0, 1.0)

        class Sampler(BaseSampler):
            def sample_func(self, y0, noise_repeat=False, one_step=False, apply_decoder=True):
                self.calls.append(dict(shape=tuple(y0.shape), low=float(y0.min()), noise_repeat=noise_repeat, one_step=one_step))
                return self._sample(y0, one_step).clamp_(-1.0, 1.0)
    """,
}


def config(pipe: SRPipeline, add_noise: bool, **unet_changes) -> dict:
    params = {k: v for k, v in pipe.unet.config.items() if k != "noise_channels"}  # RSD widens the first conv itself
    params.update(unet_changes)
    return {
        "model": {"target": "models.nets.UNetModelSwin", "add_noise": add_noise, "noise_channels": 1, "params": params},
        "diffusion": {"target": "models.nets.Diffusion", "params": {"sf": 2, "steps": pipe.schedule.steps, "kappa": 2.0}},
        "autoencoder": {"target": "ldm.vq.VQModelTorch", "use_fp16": True,
                        "params": {"ch": 32, "embed_dim": 3, "n_embed": pipe.codec.vq.config.num_vq_embeddings}},
    }


def write_checkout(root: Path, method: str, pipe: SRPipeline, models: bool = True, broken_import: bool = False, **unet_changes) -> Path:
    """A fake checkout of ``method`` (ResShift, SinSR, RSD) whose config builds ``pipe``'s architecture."""
    files = {name: text for name, text in FILES.items() if models or not name.startswith("models/")}
    if broken_import:
        files["sampler.py"] = "import timm_is_not_installed\n" + textwrap.dedent(files["sampler.py"])
    configs = {"ResShift": ["realsr_swinunet_realesrgan256.yaml", "realsr_swinunet_realesrgan256_journal.yaml"],
               "SinSR": ["SinSR.yaml"], "RSD": ["RSD.yaml"]}[method]
    for name in configs:
        files[f"configs/{name}"] = yaml.safe_dump(config(pipe, method == "RSD", **unet_changes))
    files["inference_resshift.py" if method == "ResShift" else "inference.py"] = ""
    for name, text in files.items():
        path = root / method / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / method


@pytest.fixture(scope="module")
def student():
    """The tiny RSD student (noise map) on the tiny VQ codec."""
    return build_pipeline("tiny-rsd", seed=0)


@pytest.fixture(scope="module")
def teacher():
    """The tiny teacher on the 4-step (ResShift v3) schedule: a cheap multi-step chain."""
    tiny = build_pipeline("tiny", seed=1)
    return SRPipeline(tiny.unet, tiny.codec, TEACHER_4, "tiny teacher, 4 steps")


def test_checkouts_are_recognised_and_chosen_by_script(tmp_path, student, teacher):
    resshift, rsd = write_checkout(tmp_path, "ResShift", teacher), write_checkout(tmp_path, "RSD", student)
    assert (checkout_method(resshift), checkout_method(rsd), checkout_method(tmp_path)) == ("ResShift", "RSD", None)
    assert find_checkout((resshift, rsd), RSD) == rsd and find_checkout((resshift, rsd), RESSHIFT_V3) == resshift
    with pytest.raises(RunnerUnavailable, match=f"^--upstream-src: inference.py --task RSD --one_step needs a RSD checkout; "
                                                f"given {resshift} \\(ResShift\\)$"):
        OfficialSampler((resshift,), student, 1, "cpu")


def test_each_anchor_runs_the_official_code_when_its_checkout_is_given(tmp_path, student, teacher):
    """rsd-bench's upstream backends: the official code where --upstream-src has the checkout of the
    script that runs the model, the project pipeline (labelled so) where it has none."""
    resshift = write_checkout(tmp_path, "ResShift", teacher)
    ctx = BenchContext(student, teacher, torch.device("cpu"), ShapeRange(), tmp_path, upstream_src=(resshift,))
    registry = {b.name: b for b in backends(torch.device("cpu"))}
    anchor, chain_anchor = registry["upstream-rsd-1step"].make(ctx), registry["upstream-resshift"].make(ctx)
    assert isinstance(anchor, UpstreamProcedure) and anchor.notes.startswith("project pipeline, unbatched") and not anchor.own_noise
    assert isinstance(chain_anchor, OfficialSampler) and chain_anchor.notes.startswith("official ResShift code") and chain_anchor.own_noise
    chain_anchor.close()


def test_the_student_runs_as_the_rsd_script_runs_it(tmp_path, student):
    rsd = write_checkout(tmp_path, "RSD", student)
    runner = OfficialSampler((rsd,), student, 1, "cpu", seed=3)
    sampler = runner.sampler
    assert type(sampler).__mro__[1].__module__ == "sampler" and Path(type(sampler).__mro__[1].__init__.__code__.co_filename).parent == rsd
    assert sampler.built_with == dict(sf=None, use_fp16=True, chop_size=512, chop_stride=448, chop_bs=1, seed=3, ddim=False, use_amp=False,
                                      padding_offset=16)
    assert (sampler.configs.diffusion.params.sf, sampler.configs.diffusion.params.timestep_respacing) == (4, 15)  # what inference.py sets
    # the benchmarked weights: the UNet's as they are (its first conv widened for the noise map), the codec's in the LDM layout
    assert sampler.model.input_blocks[0][0].weight.shape[1] == 7
    assert torch.equal(sampler.model.out[2].weight, student.unet.out[2].weight)
    assert torch.equal(sampler.autoencoder.encoder.norm_out.weight, student.codec.vq.encoder.conv_norm_out.weight)
    assert runner.precision == "fp32" and "official RSD code" in runner.notes and "on CUDA only" in runner.notes
    lr = torch.rand(2, 3, 64, 64)
    out = runner.upscale(lr)
    assert out.shape == (2, 3, 256, 256) and 0 <= out.min() and out.max() <= 1
    # image by image (the scripts' batch of 1), in [-1, 1], one step
    assert [(call["shape"], call["one_step"], call["noise_repeat"]) for call in sampler.calls] == [((1, 3, 64, 64), True, False)] * 2
    assert all(call["low"] < 0 for call in sampler.calls)
    case = case_inputs(student, 1, 64)
    sampler.base_diffusion.calls.clear()
    for stage in UPSTREAM_STAGES:
        (name,) = stage.outputs
        assert runner.run(stage.name, case.feeds(stage))[name].shape == case.tensors[name].shape
    assert sampler.base_diffusion.calls == [(student.schedule.steps - 1, ["lq", "noise_input"])]  # one p_sample at T-1, RSD's noise map


def test_two_checkouts_one_after_the_other(tmp_path, student, teacher):
    """The teacher from a ResShift checkout after the student from an RSD one: each imports its own
    modules (the same package names), and the ResShift script's call (mask None, all T steps)."""
    rsd, resshift = write_checkout(tmp_path, "RSD", student), write_checkout(tmp_path, "ResShift", teacher)
    first = OfficialSampler((resshift, rsd), student, 1, "cpu")
    first.close()
    second = OfficialSampler((resshift, rsd), teacher, 4, "cpu")
    assert Path(type(second.sampler).__mro__[1].__init__.__code__.co_filename).parent == resshift
    assert second.sampler.built_with["use_amp"] and second.sampler.built_with["padding_offset"] == 64
    assert second.script is RESSHIFT_V3 and "realsr_swinunet_realesrgan256_journal.yaml" in second.notes
    second.upscale(torch.rand(1, 3, 64, 64))
    assert [call["mask"] for call in second.sampler.calls] == [None]
    assert [step for step, _ in second.sampler.base_diffusion.calls] == [3, 2, 1, 0]


@pytest.mark.parametrize("problem, message", [
    ("no models", "no models/ package \\(the public RSD repository ships without it"),
    ("import", "its code does not import here \\(ModuleNotFoundError: No module named 'timm_is_not_installed'\\); it needs its requirements"),
    ("architecture", "configs/RSD.yaml: its UNet is not this model's architecture"),
])
def test_checkouts_that_cannot_run_say_why_in_one_line(tmp_path, student, problem, message):
    kwargs = {"no models": dict(models=False), "import": dict(broken_import=True), "architecture": dict(model_channels=64)}[problem]
    rsd = write_checkout(tmp_path, "RSD", student, **kwargs)
    with pytest.raises(RunnerUnavailable, match=message) as error:
        OfficialSampler((rsd,), student, 1, "cpu")
    assert len(str(error.value).splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("RSD_OFFICIAL_SINSR"), reason="set RSD_OFFICIAL_SINSR to a checkout of wyf0912/SinSR "
                    "(with its requirements installed) to check the official code against the project's pipeline")
def test_the_official_sinsr_code_computes_what_the_project_computes():
    """The real official SinSR code on the sinsr-x4 architecture (random weights): its encoder and
    decoder stages equal the project's, and its one step equals the project's from the same x_T."""
    from rsd_deploy import chain

    pipe = build_pipeline("sinsr-x4", seed=0)
    runner = OfficialSampler((Path(os.environ["RSD_OFFICIAL_SINSR"]),), pipe, 1, "cpu")
    case = case_inputs(pipe, 1, 64)
    for stage in (UPSTREAM_STAGES[0], UPSTREAM_STAGES[2]):
        (name,) = stage.outputs
        torch.testing.assert_close(runner.run(stage.name, case.feeds(stage))[name], case.tensors[name], rtol=1e-4, atol=1e-4)
    z_y, lq = case.tensors["z_y"], case.tensors["lq"]
    torch.manual_seed(5)
    eps = torch.randn_like(z_y)  # what the official loop draws first
    torch.manual_seed(5)
    official = runner.run("generator", {"z_y": z_y, "lq": lq})["x0"]
    ours = pipe.run_stage("generator", {"x_t": chain.prior_sample(z_y, eps, pipe.schedule.prior_scale), "lq": lq})
    torch.testing.assert_close(official, ours, rtol=1e-4, atol=1e-4)
