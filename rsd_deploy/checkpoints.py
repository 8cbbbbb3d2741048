"""Loading and saving weights: the official ``.pth`` files in, safetensors + JSON config out.

One obvious way in: :func:`load_unet`, :func:`load_codec` and :func:`load_pipeline`. Outside
checkpoints are untrusted (``weights_only=True``); ours are safetensors with a JSON config beside
them (``name.safetensors`` + ``name.json``). A layout's config is inferred beside its model
(:mod:`rsd_deploy.models.unet_layout`, :func:`rsd_deploy.models.autoencoder.infer_vq_config`).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
import yaml
from safetensors.torch import load_file, save_file

from .atomic import atomic_path
from .errors import one_line
from .models.autoencoder import VQAutoencoder, build_codec, codec_kind, diffusers_vq_state_dict, infer_vq_config
from .models.unet import UNetModelSwin
from .models.unet_layout import infer_unet_config
from .pipeline import SRPipeline
from .presets import PRESETS
from .schedule import TEACHER_4, TEACHER_15, ResShiftSchedule

BUNDLED_DIR = Path(__file__).parent / "weights"
DEMO_NAME = "demo-rsd"  # the demo-rsd preset's architecture, trained by distill/proof.py (docs/distill.md)

_WRAPPER_KEYS = ("state_dict", "model", "ema", "ema_model", "params_ema", "module")
_PREFIXES = ("module.", "_orig_mod.")
# An RSD training checkpoint (trainer.py save_ckpt, model_N.pth): {"state_dict": {"student": ..., "fake": ...}, ...}
TRAINING_PARTS = ("student", "fake")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file."""


# --- reading ---------------------------------------------------------------------------------


def _why_unreadable(path: Path, error: Exception) -> CheckpointError:
    """One line, without torch's advice (never: re-run with weights_only=False) or ANSI codes."""
    text = one_line(error)
    if "Weights only load failed" in text:
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", str(error))  # its own line, before the advice
        detail = one_line(found.group(1)) if found else "not a plain tensor pickle"
        if "Unsupported global" in detail:
            detail = re.sub(r" was not an allowed global.*", "", detail)
            return CheckpointError(f"{path}: refused: it pickles Python objects, not only tensors ({detail}); "
                                   "checkpoints are read as tensors only")
        return CheckpointError(f"{path}: not a readable checkpoint (not a torch or safetensors file: {detail})")
    first = re.split(r"(?<=\.)\s", text, maxsplit=1)[0].rstrip(".")
    return CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt? {first})")


def load_checkpoint_file(path: str | Path):
    """A ``.safetensors`` file's tensors or a torch file's content (``weights_only``), on the CPU;
    CheckpointError (one line naming the file) when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr, over several lines
            warnings.simplefilter("ignore")
            if path.suffix == ".safetensors":
                return load_file(str(path))
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt, truncated, pickled code objects...
        raise _why_unreadable(path, error) from None


def _unwrap(state):
    while isinstance(state, dict):
        wrapped = [k for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)]
        if not wrapped or any(isinstance(v, torch.Tensor) for v in state.values()):
            break
        state = state[wrapped[0]]
    return state


def _training_parts(state) -> dict | None:
    """The {"student", "fake"} dicts of an RSD training checkpoint, else None."""
    state = _unwrap(state)
    if isinstance(state, dict) and all(isinstance(state.get(k), dict) for k in TRAINING_PARTS):
        return {k: state[k] for k in TRAINING_PARTS}
    return None


def _tensors(state, path: Path) -> dict[str, torch.Tensor]:
    """Tensors only, ``module.`` / ``_orig_mod.`` prefixes stripped; NaN/Inf refused (it would
    give black images with exit status 0)."""
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    cleaned = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: tensor {key} holds NaN or Inf values; refusing to load it")
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    return cleaned


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped (``{"state_dict": ...}``, EMA wrappers; the student
    of an RSD training checkpoint) and with ``module.`` / ``_orig_mod.`` prefixes stripped."""
    path = Path(path)
    state = load_checkpoint_file(path)
    parts = _training_parts(state)
    return _tensors(parts["student"] if parts else _unwrap(state), path)


def read_training_checkpoint(path: str | Path) -> dict:
    """An RSD training checkpoint (``model_N.pth``): ``{"student": tensors, "fake": tensors,
    "step": iters_start}``. The fake model is the official GAN wrapper around a UNet; its layout
    is not public, so it comes back as saved (see :func:`split_unet`)."""
    path = Path(path)
    state = load_checkpoint_file(path)
    parts = _training_parts(state)
    if parts is None:
        raise CheckpointError(f"{path}: not an RSD training checkpoint (expected state_dict with 'student' and 'fake')")
    step = state.get("iters_start", 0) if isinstance(state, dict) else 0
    return {**{k: _tensors(v, path) for k, v in parts.items()}, "step": int(step) if isinstance(step, int) else 0}


def split_unet(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the UNetModelSwin inside a wrapper's state dict, everything else): the UNet is found by
    the prefix of its first conv, ``<prefix>input_blocks.0.0.weight``."""
    first = [k for k in state if k.endswith("input_blocks.0.0.weight")]
    if len(first) != 1:
        raise KeyError("input_blocks.0.0.weight")
    prefix = first[0][: -len("input_blocks.0.0.weight")]
    unet = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return unet, {k: v for k, v in state.items() if not k.startswith(prefix)}


def _read_config(path: Path) -> dict | None:
    sidecar = path.with_suffix(".json")
    return json.loads(sidecar.read_text()) if sidecar.is_file() else None


def _resolve(value, data: dict):
    """``${a.b.c}`` interpolations of an official (OmegaConf) YAML, looked up in the same file."""
    match = re.fullmatch(r"\$\{([\w.]+)\}", value) if isinstance(value, str) else None
    if not match:
        return value
    for part in match.group(1).split("."):
        if not isinstance(data, dict) or part not in data:
            return value
        data = data[part]
    return data


def read_official_yaml(path: str | Path) -> tuple[dict, ResShiftSchedule | None, int | None]:
    """(UNet params, schedule, noise channels) of an official ResShift / SinSR / RSD YAML.

    The UNet params come in our convention (``in_channels`` = latent channels): SinSR's and RSD's
    UNetModelSwin has no ``lq_size`` and counts the concatenated LR image in ``in_channels``
    (their YAMLs say 6), ResShift's adds it itself (its YAMLs say 3). The schedule is the
    ``diffusion`` section's (15 steps in v1/v2, SinSR, RSD; 4 in the v3 journal config)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected an official ResShift/SinSR/RSD YAML (a mapping with model.params)")
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    params = model.get("params", data)
    if not isinstance(params, dict):
        raise CheckpointError(f"{path}: model.params is not a mapping")
    params = {k: _resolve(v, data) for k, v in params.items()}
    params = {k: v for k, v in params.items() if not (isinstance(v, str) and v.startswith("${"))}
    if params.get("cond_lq", True) and "lq_size" not in params and "in_channels" in params:
        params["in_channels"] -= 3  # SinSR / RSD convention: the LR image is counted in in_channels
        params["lq_size"] = params.get("image_size", 64)
    noise = model.get("noise_channels", 1) if model.get("add_noise") else None
    diffusion = data.get("diffusion", {}).get("params") if isinstance(data.get("diffusion"), dict) else None
    schedule = None
    if isinstance(diffusion, dict):
        if diffusion.get("schedule_name", "exponential") != "exponential":
            raise CheckpointError(f"{path}: diffusion.params.schedule_name {diffusion['schedule_name']!r} is not supported (only 'exponential')")
        try:
            schedule = ResShiftSchedule(
                steps=int(diffusion.get("steps", 15)), min_noise=float(diffusion.get("min_noise_level", 0.04)),
                kappa=float(diffusion.get("kappa", 2.0)), power=float((diffusion.get("schedule_kwargs") or {}).get("power", 0.3)),
                etas_end=float(diffusion.get("etas_end", 0.99)))
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: diffusion.params is not a ResShift schedule ({error})") from None
    return params, schedule, noise


def _load_strict(module: nn.Module, state: dict, path: Path, what: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        def listed(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f", ... ({len(keys)} in all)" if len(keys) > 3 else "")

        parts = [f"{len(missing)} missing ({listed(missing)})" if missing else "",
                 f"{len(unexpected)} unexpected ({listed(unexpected)})" if unexpected else "",
                 f"{len(mismatched)} with other shapes ({listed(mismatched)})" if mismatched else ""]
        raise CheckpointError(f"{path}: does not match the {what}: " + "; ".join(p for p in parts if p))
    module.load_state_dict(state, strict=True)


def load_unet(path: str | Path, config: dict | str | Path | None = None) -> UNetModelSwin:
    """A UNetModelSwin with the checkpoint's weights, loaded strictly.

    ``config``: a dict of UNet keys (our convention), an official YAML file, or None to use the
    JSON beside our safetensors files or, for official files, to infer it from the weights (6 vs
    7 input channels tells a SinSR/ResShift model from an RSD student).
    """
    path = Path(path)
    state = read_state_dict(path)
    source, noise = "the given config", None
    if isinstance(config, (str, Path)):
        source = Path(config).name
        config, _, noise = read_official_yaml(config)
    if config is None:
        saved = _read_config(path) if path.suffix == ".safetensors" else None
        config = saved["config"] if saved else None
    if config is None:
        try:
            config = infer_unet_config(state)
        except (KeyError, ValueError, ZeroDivisionError) as error:
            raise CheckpointError(f"{path}: not a ResShift UNetModelSwin checkpoint (no {error})") from None
    elif "noise_channels" not in config and "input_blocks.0.0.weight" in state:
        # the RSD student's noise map: the first conv's inputs beyond latent + LR image
        first_in = state["input_blocks.0.0.weight"].shape[1]
        latent = config.get("in_channels", 3)
        channels = first_in - latent - 3
        if channels < 0 or (noise is not None and channels != noise):
            expected = f"{latent} latent + 3 LR image" + (f" + {noise} noise" if noise is not None else "") + " channels"
            raise CheckpointError(f"{path}: its first conv takes {first_in} input channels, but {source} describes {expected}")
        config = {**config, "noise_channels": channels}
    model = UNetModelSwin(**config)
    _load_strict(model, state, path, "UNetModelSwin layout")
    return model.eval()


def load_codec(path: str | Path, config: dict | None = None) -> nn.Module:
    """The latent codec of a checkpoint: the official ``autoencoder_vq_f4.pth`` (LDM layout,
    converted), a diffusers ``VQModel`` state dict, or our safetensors + JSON."""
    path = Path(path)
    if config is None and path.suffix == ".safetensors":
        saved = _read_config(path)
        config = saved["config"] if saved else None
    if codec_kind(config) == "pixel_unshuffle":
        return build_codec(config)  # parameter-free: its safetensors file holds no tensors
    state = diffusers_vq_state_dict(read_state_dict(path))
    try:
        config = config or infer_vq_config(state)
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{path}: not a VQ autoencoder checkpoint (no {error})") from None
    codec = VQAutoencoder(config)
    _load_strict(codec.vq, state, path, "VQ-f4 autoencoder layout")
    return codec.eval()


# --- writing ---------------------------------------------------------------------------------


def save_module(module: nn.Module, path: str | Path, kind: str, config: dict, **extra) -> None:
    """``path`` (.safetensors) + the JSON config beside it, both written atomically."""
    path = Path(path).with_suffix(".safetensors")
    tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"kind": kind})
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({"kind": kind, "config": config, **extra}, indent=2) + "\n")


def save_pipeline(pipe: SRPipeline, directory: str | Path) -> None:
    """``unet.safetensors`` / ``unet.json`` (+ ``codec.*``) in a directory."""
    directory = Path(directory)
    save_module(pipe.unet, directory / "unet", "unet", pipe.unet.config, schedule=asdict(pipe.schedule), description=pipe.description)
    codec_state = pipe.codec.vq if pipe.codec.kind == "vq" else pipe.codec
    save_module(codec_state, directory / "codec", "codec", pipe.codec.config)


OFFICIAL_SCHEDULES = {15: TEACHER_15, 4: TEACHER_4}  # v1/v2, SinSR, RSD: 15 steps; ResShift v3 (journal): 4


def _official_schedule(unet_path: Path, steps: int | None) -> ResShiftSchedule:
    """The schedule of an official checkpoint that does not say which it has: the weights of the
    15-step and 4-step models look alike, so the steps the caller will run decide (4: ResShift v3)."""
    if steps in (None, 1):
        return TEACHER_15
    if steps not in OFFICIAL_SCHEDULES:
        raise CheckpointError(f"{unet_path}: --steps {steps}: the official schedules have 15 steps (ResShift v1/v2, SinSR, "
                              "RSD) or 4 (ResShift v3); run 1 (one step), 15 or 4, or give the model's YAML with --config")
    return OFFICIAL_SCHEDULES[steps]


def load_pipeline(
    unet_path: str | Path,
    codec_path: str | Path | None = None,
    schedule: ResShiftSchedule | None = None,
    unet_config: dict | str | Path | None = None,
    steps: int | None = None,
) -> SRPipeline:
    """A pipeline from a UNet checkpoint (file, or a directory written by :func:`save_pipeline`)
    and a codec checkpoint (defaults to the directory's ``codec.safetensors``).

    The schedule, unless given: our JSON's; else the official YAML's (``unet_config``, e.g.
    ``realsr_swinunet_realesrgan256_journal.yaml`` has 4 steps); else the official one with
    ``steps`` steps (4: ResShift v3; 1, 15 or None: the 15-step schedule)."""
    unet_path = Path(unet_path)
    if unet_path.is_dir():
        codec_path = codec_path or unet_path / "codec.safetensors"
        unet_path = unet_path / "unet.safetensors"
    if codec_path is None:
        raise CheckpointError(f"{unet_path}: a VQ autoencoder checkpoint is needed too (e.g. autoencoder_vq_f4.pth)")
    unet = load_unet(unet_path, unet_config)
    saved = _read_config(unet_path) if unet_path.suffix == ".safetensors" else None
    if schedule is None and saved and "schedule" in saved:
        schedule = ResShiftSchedule(**saved["schedule"])
    if schedule is None and isinstance(unet_config, (str, Path)):
        schedule = read_official_yaml(unet_config)[1]
    if schedule is None:
        schedule = _official_schedule(unet_path, steps)
    codec = load_codec(codec_path)
    if unet.in_channels != codec.latent_channels or unet.out_channels != codec.latent_channels:
        raise CheckpointError(f"{unet_path}: the UNet works on {unet.out_channels}-channel latents but the codec "
                              f"{Path(codec_path)} makes {codec.latent_channels}-channel latents; they are not one model")
    description = (saved or {}).get("description") or f"{unet_path.name} + {Path(codec_path).name}"
    return SRPipeline(unet, codec, schedule, description)


def build_pipeline(preset: str, seed: int = 0) -> SRPipeline:
    """A pipeline of a preset's architecture with seeded random weights (untrained)."""
    spec = PRESETS[preset]
    torch.manual_seed(seed)
    unet = UNetModelSwin(**spec.unet)
    codec = build_codec(spec.codec)
    if codec.kind == "vq":
        # A fresh VQ codebook is uniform in +-1/codes, so nearly every code is equally near and the
        # nearest-code search flips under float reassociation (ONNX vs PyTorch). N(0, 1) codes
        # are as far apart as trained ones are: random-weight models then export reproducibly.
        with torch.no_grad():
            codec.vq.quantize.embedding.weight.normal_()
    description = f"UNTRAINED: {spec.summary} architecture ({preset}) with random weights, seed {seed}"
    return SRPipeline(unet.eval(), codec.eval(), spec.schedule, description)


def default_pipeline() -> SRPipeline:
    """The embedded default: the bundled trained demo model (``rsd_deploy/weights/demo-rsd``, the
    ``demo-rsd`` preset's architecture) when present, else the official RSD x4 architecture with
    seeded random weights. ``.description`` says which."""
    if (BUNDLED_DIR / DEMO_NAME / "unet.safetensors").is_file():
        return load_pipeline(BUNDLED_DIR / DEMO_NAME)
    return build_pipeline("rsd-x4")
