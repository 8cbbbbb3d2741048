"""The official ResShift / SinSR / RSD code as ``rsd-bench``'s upstream anchors (``--upstream-src DIR``).

A checkout is recognised by the files its scripts load (:func:`checkout_method`): ResShift has
``inference_resshift.py``, RSD ``configs/RSD.yaml``, SinSR ``configs/SinSR.yaml``. The script that
runs a model (:func:`.bench_upstream.official_script`) picks the checkout: ResShift's for the
teacher, RSD's for a student with a noise map, SinSR's (or RSD's, whose ``inference.py --task
SinSR`` runs it too) for one without.

:class:`OfficialSampler` constructs the checkout's sampler class with the script's keyword
arguments and config edits. Only building the networks differs from the class's own
``build_model``, which hard-codes ``.cuda()`` and reads checkpoint files: the config's networks
are instantiated by the checkout's ``instantiate_from_config``, receive the benchmarked model's
weights through its ``reload_model`` (the UNet's state dict is the official layout; the
autoencoder's is converted back to the LDM layout), go to the device and, on CUDA, into the
script's precision exactly as its ``build_model`` does (``convert_to_fp16`` and a half
autoencoder for SinSR / RSD; ResShift's fp16 is the autocast around each sample).

End to end is the script's per-image step: ``sample_func`` on ``(x - 0.5) / 0.5`` one image at a
time (the scripts' default batch of 1; tiled by the checkout's ``ImageSpliterTh`` above
``chop_size``), then ``* 0.5 + 0.5``. The stages are the same procedure cut where the chain cuts:
``encode_first_stage``; the sampling loop of ``p_sample_loop_progressive`` (``prior_sample``, then
``p_sample`` per step); ``decode_first_stage`` and the clamp. The official samplers draw noise
from torch's global generator (seeded by the sampler, as in the scripts), so their images are not
compared with the reference's, which uses the project's noise.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn

from rsd_deploy.models.autoencoder import convert_ldm_vq_state_dict
from rsd_deploy.pipeline import SRPipeline

from .bench_upstream import FP16_AUTOCAST, FP16_TORSO, RSD, SAMPLER, SINSR, UPSTREAM_STAGES, OfficialScript, official_script
from .runners import Runner, RunnerUnavailable

# The top-level packages every official checkout brings (and that another checkout's would shadow).
CHECKOUT_PACKAGES = ("sampler", "models", "utils", "ldm", "datapipe", "basicsr")
REQUIREMENTS = "timm, einops, loguru, omegaconf, opencv-python, albumentations<2, scikit-learn"


def checkout_method(path: Path) -> str | None:
    """ResShift, RSD or SinSR: the repository ``path`` is a checkout of, or None."""
    if (path / "inference_resshift.py").is_file():
        return "ResShift"
    if (path / "configs" / "RSD.yaml").is_file():
        return "RSD"
    if (path / "configs" / "SinSR.yaml").is_file():
        return "SinSR"
    return None


def find_checkout(checkouts: tuple[Path, ...], script: OfficialScript) -> Path:
    """The checkout among ``checkouts`` whose code runs ``script``."""
    runs = {script.method} | ({"RSD"} if script is SINSR else set())
    for path in checkouts:
        if checkout_method(path) in runs:
            return path
    given = ", ".join(f"{path} ({checkout_method(path) or 'not a checkout'})" for path in checkouts)
    raise RunnerUnavailable(f"--upstream-src: {script.script} needs a {script.method} checkout; given {given}")


def _revision(path: Path) -> str:
    try:
        done = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
    except OSError:
        return ""
    return f" @ {done.stdout.strip()}" if done.returncode == 0 else ""


def _import(checkout: Path) -> dict:
    """The checkout's ``sampler``, ``utils.util_common``, ``utils.util_net`` and ``utils.util_image``
    (modules of the same names imported from another checkout are dropped first)."""
    for name in [n for n in sys.modules if n.split(".")[0] in CHECKOUT_PACKAGES]:
        del sys.modules[name]
    if "torchvision.transforms.functional_tensor" not in sys.modules:
        # the checkouts' basicsr imports this module, removed in torchvision 0.17; what it took from
        # there (rgb_to_grayscale, used by training-data degradations) lives in functional
        import torchvision.transforms.functional

        sys.modules["torchvision.transforms.functional_tensor"] = torchvision.transforms.functional
    sys.path.insert(0, str(checkout))
    try:
        return {name: importlib.import_module(name) for name in ("sampler", "utils.util_common", "utils.util_net", "utils.util_image")}
    except Exception as error:  # noqa: BLE001 - any import-time failure of foreign code is a reason to report
        sys.path.remove(str(checkout))
        raise RunnerUnavailable(f"--upstream-src {checkout}: its code does not import here ({type(error).__name__}: {error}); "
                                f"it needs its requirements ({REQUIREMENTS})") from None


def ldm_state_dict(codec: nn.Module, official: nn.Module) -> dict[str, torch.Tensor]:
    """``codec``'s weights in the layout of the official ``VQModelTorch`` ``official`` (the inverse of
    :func:`~rsd_deploy.models.autoencoder.convert_ldm_vq_state_dict`, key by key)."""
    ours = codec.vq.state_dict()
    out = {}
    for key, value in official.state_dict().items():
        ((our_key, _),) = convert_ldm_vq_state_dict({key: value}).items()
        out[key] = ours[our_key].reshape(value.shape)
    return out


def add_noise_channels(unet: nn.Module, channels: int) -> None:
    """RSD's ``_add_noise``: the first convolution takes ``channels`` more input channels (after the
    latent and the LR image); the weights come from the checkpoint."""
    conv = unet.input_blocks[0][0]
    wider = nn.Conv2d(conv.in_channels + channels, conv.out_channels, conv.kernel_size, padding=conv.padding)
    unet.input_blocks[0][0] = wider.to(conv.weight.device)


class OfficialSampler(Runner):
    """The official sampler of the checkout in ``checkouts`` that runs ``pipe`` for ``steps`` steps,
    with ``pipe``'s weights, on ``device``; noise seeded by ``seed`` as the scripts' ``--seed``."""

    def __init__(self, checkouts: tuple[Path, ...], pipe: SRPipeline, steps: int, device: torch.device | str, seed: int = 0):
        pipe.check_steps(steps)
        if pipe.codec.kind != "vq":
            raise RunnerUnavailable(f"the official code runs the VQ-f4 autoencoder; this model's codec is {pipe.codec.kind}")
        self.script = script = official_script(pipe, steps)
        self.checkout = checkout = find_checkout(checkouts, script)
        if not (checkout / "models").is_dir():
            raise RunnerUnavailable(f"--upstream-src {checkout}: no models/ package (the public {script.method} repository ships without it; "
                                    "add it from the authors' full code)")
        self.device = torch.device(device)
        self.on_gpu = self.device.type == "cuda"
        self.modules = _import(checkout)
        try:
            self.sampler = self._build(pipe, seed)
        except RunnerUnavailable:
            self.close()
            raise
        except Exception as error:  # noqa: BLE001 - foreign code failing to build is a reason to report
            self.close()
            raise RunnerUnavailable(f"--upstream-src {checkout}: its {script.sampler} did not build ({type(error).__name__}: "
                                    f"{(str(error).splitlines() or [''])[0]})") from None
        self.context = (lambda: torch.autocast("cuda", dtype=torch.float16)) if script.precision == FP16_AUTOCAST and self.on_gpu \
            else nullcontext
        self.noise_channels = pipe.unet.noise_channels
        self.own_noise = True  # torch's global generator, as the scripts: its images are not compared
        self.name = "upstream"
        self.precision = script.precision if self.on_gpu else "fp32"
        self.stages = tuple(stage.name for stage in UPSTREAM_STAGES)
        self.notes = (f"official {script.method} code ({checkout}{_revision(checkout)}): {script.sampler} from {script.config}, run as "
                      f"{script.script}; {script.label(self.device)}; {steps} step{'s' if steps > 1 else ''}; its own noise")

    def _build(self, pipe: SRPipeline, seed: int):
        from omegaconf import OmegaConf

        script, device, on_gpu = self.script, self.device, self.on_gpu
        util_common, util_net = self.modules["utils.util_common"], self.modules["utils.util_net"]
        config_path = self.checkout / script.config
        configs = OmegaConf.load(config_path)
        for key, value in script.config_overrides:
            OmegaConf.update(configs, key, value)
        unet_state = pipe.unet.state_dict()

        def load(network: nn.Module, state: dict, what: str) -> None:
            try:
                util_net.reload_model(network, state)
            except (AssertionError, KeyError, RuntimeError) as error:
                raise RunnerUnavailable(f"{config_path}: its {what} is not this model's architecture "
                                        f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'a key is missing'})") from None

        class Built(getattr(self.modules["sampler"], script.sampler)):
            """The checkout's sampler, its networks built on ``device`` from the benchmarked weights."""

            def setup_dist(self, gpu_id=None):
                self.num_gpus, self.rank = 1, 0

            def build_model(self):
                self.base_diffusion = util_common.instantiate_from_config(self.configs.diffusion)
                model = util_common.instantiate_from_config(self.configs.model)
                if self.configs.model.get("add_noise", False):
                    add_noise_channels(model, self.configs.model.noise_channels)
                load(model, unet_state, "UNet")
                model = model.to(device)
                if script.precision == FP16_TORSO and on_gpu:  # build_model: use_fp16
                    model.dtype = torch.float16
                    model.convert_to_fp16()
                self.model = model.eval()
                autoencoder = util_common.instantiate_from_config(self.configs.autoencoder)
                try:
                    state = ldm_state_dict(pipe.codec, autoencoder)
                except (KeyError, RuntimeError) as error:
                    raise RunnerUnavailable(f"{config_path}: its autoencoder is not this model's ({type(error).__name__}: {error})") from None
                load(autoencoder, state, "autoencoder")
                autoencoder = autoencoder.to(device).eval()
                # SinSR / RSD build_model: a half autoencoder when the config says use_fp16
                self.autoencoder = autoencoder.half() if script.precision == FP16_TORSO and on_gpu and self.configs.autoencoder.use_fp16 \
                    else autoencoder

        return Built(configs, seed=seed, **dict(script.sampler_kwargs))

    # --- the procedure ---------------------------------------------------------------------------

    def _model_kwargs(self, lq: torch.Tensor) -> dict[str, torch.Tensor]:
        kwargs = {"lq": lq}
        if self.script is RSD:  # RSD's sample_func draws the noise map at LR size
            kwargs["noise_input"] = torch.randn(size=lq.shape[:1] + (self.noise_channels,) + lq.shape[2:], device=lq.device)
        return kwargs

    def _sample_loop(self, z_y: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        """``p_sample_loop_progressive`` after its encode: x_T from the prior, then ``p_sample``
        at t = T-1 .. 0 (only T-1, returning its x0 prediction, for one step)."""
        diffusion = self.sampler.base_diffusion
        sample = diffusion.prior_sample(z_y, torch.randn_like(z_y))
        kwargs = self._model_kwargs(lq)
        for step in reversed(range(diffusion.num_timesteps)):
            t = torch.tensor([step] * z_y.shape[0], device=z_y.device)
            out = diffusion.p_sample(self.sampler.model, sample, z_y, t, clip_denoised=False, denoised_fn=None, model_kwargs=kwargs,
                                     noise_repeat=False)
            if self.script.one_step:
                return out["pred_xstart"]
            sample = out["sample"]
        return sample

    @torch.no_grad()
    def run(self, stage: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        diffusion, autoencoder = self.sampler.base_diffusion, self.sampler.autoencoder
        feeds = {name: tensor.to(self.device) for name, tensor in feeds.items()}
        with self.context():
            if stage == SAMPLER.name:
                out = self._sample_loop(feeds["z_y"], feeds["lq"])
            elif stage == UPSTREAM_STAGES[0].name:
                out = diffusion.encode_first_stage(feeds["lq_up"], autoencoder, up_sample=False)
            else:
                out = diffusion.decode_first_stage(feeds["z"], autoencoder).clamp_(-1.0, 1.0)
        (name,) = next(s for s in UPSTREAM_STAGES if s.name == stage).outputs
        return {name: out.float()}

    def _sample_func(self, lq: torch.Tensor) -> torch.Tensor:
        if self.script.one_step:
            return self.sampler.sample_func(lq, noise_repeat=False, one_step=True, apply_decoder=True)
        return self.sampler.sample_func(lq, noise_repeat=False, mask=None)

    @torch.no_grad()
    def upscale(self, lr: torch.Tensor) -> torch.Tensor:
        """The scripts' ``_process_per_image`` for each LR image in [0, 1]: [0, 1] images x scale."""
        sampler, out = self.sampler, []
        for image in lr.to(self.device).split(1):
            lq = (image - 0.5) / 0.5
            if lq.shape[2] > sampler.chop_size or lq.shape[3] > sampler.chop_size:
                spliter = self.modules["utils.util_image"].ImageSpliterTh(lq, sampler.chop_size, stride=sampler.chop_stride, sf=sampler.sf,
                                                                          extra_bs=sampler.chop_bs)
                for patch, index in spliter:
                    with self.context():
                        spliter.update(self._sample_func(patch).detach(), index)
                result = spliter.gather()
            else:
                with self.context():
                    result = self._sample_func(lq)
            out.append(result.float() * 0.5 + 0.5)
        return torch.cat(out)

    def memory(self) -> dict[str, float]:
        if not self.on_gpu:
            return {}
        return {"peak_gpu_allocated_mib": torch.cuda.max_memory_allocated(self.device) / 2**20}

    def reset_memory(self) -> None:
        if self.on_gpu:
            torch.cuda.reset_peak_memory_stats(self.device)

    def close(self) -> None:
        if str(self.checkout) in sys.path:
            sys.path.remove(str(self.checkout))
