"""Training configuration as data: dataclasses with the released RSD recipe's values, overridden by YAML/JSON.

Two named starting points: ``rsd-official`` (the RSD release: ``configs/RSD.yaml`` and
``trainer.py`` of Daniil-Selikhanovych/RSD, the real-world x4 UNet in the VQ-f4 latent space;
for the teacher stage ResShift's ``realsr_swinunet_realesrgan256.yaml``) and ``demo`` (the same
recipe on the ``demo-teacher`` preset's small pixel-space model, which trains on one CPU core, used
by ``proof.py``). A YAML/JSON file then overrides any field, e.g. ``{"optim": {"lr": 1e-5},
"objective": {"method": "tsdsr"}}``; ``model.unet`` and ``model.schedule`` entries are merged into
the base's. Every value is checked (type, range, UNet keys, crop size against the UNet) before any
model is built.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import yaml

from rsd_deploy.models.autoencoder import codec_kind
from rsd_deploy.models.unet import UNetModelSwin
from rsd_deploy.presets import PRESETS, REALSR_X4_UNET
from rsd_deploy.schedule import ResShiftSchedule

# Bundled photos (rsd_deploy.photos) for the CPU-scale runs. HELD_OUT_PHOTOS never appear in training
# (the proof reports on them, and the demo's settings were chosen on them); UNSEEN_PHOTOS are used by
# nothing but the proof's final whole-photo check of the demo student.
# (`cat` is `chelsea` again and the right motorcycle view nearly equals the left: both excluded.)
TRAIN_PHOTOS = ["astronaut", "immunohistochemistry", "hubble_deep_field", "stereo_motorcycle", "retina",
                "brick", "grass", "gravel", "moon", "coins", "clock", "colorwheel"]
HELD_OUT_PHOTOS = ["chelsea", "coffee", "rocket"]
UNSEEN_PHOTOS = ["camera", "grace_hopper"]

UNET_KEYS = frozenset(name for name, p in inspect.signature(UNetModelSwin.__init__).parameters.items()
                      if name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD)
SCHEDULE_KEYS = frozenset(f.name for f in fields(ResShiftSchedule))


@dataclass
class DataConfig:
    hr_dirs: list[str] = field(default_factory=list)  # HR image folders (recursive); empty: `photos`
    photos: list[str] = field(default_factory=lambda: list(TRAIN_PHOTOS))  # rsd_deploy.photos names
    val_dirs: list[str] = field(default_factory=list)
    val_photos: list[str] = field(default_factory=lambda: list(HELD_OUT_PHOTOS))
    crop: int = 256  # HR crop (gt_size); crop / 4 is the latent size, which the UNet's windows must tile
    val_crop: int = 256
    val_crops_per_image: int = 4
    degradation: str = "realesrgan"  # or "bicubic"
    hflip: bool = True  # use_hflip
    rot: bool = False  # use_rot: vertical flips and transposes too
    rescale_gt: bool = True  # the crop is a random square of the image's shorter side, area-resized to `crop`
    scale_range: tuple[float, float] = (1.0, 1.0)  # else: a crop / s square, s ~ U(lo, hi), area-resized
    shuffle_channels: bool = False  # RGB in a random order per crop
    pool_batches: int = 10  # Real-ESRGAN training-pair pool of pool_batches x a process's batch per step; 0: none
    workers: int = 4  # DataLoader worker processes (crop loading); degradation runs on the device


@dataclass
class ModelConfig:
    codec: dict = field(default_factory=dict)  # empty: the VQ-f4 VQModel config (weights from codec_checkpoint)
    codec_checkpoint: str = ""  # VQ-f4 weights (autoencoder_vq_f4.pth) when codec is a VQModel config
    unet: dict = field(default_factory=lambda: dict(REALSR_X4_UNET))
    schedule: dict = field(default_factory=lambda: {"steps": 15, "min_noise": 0.04, "kappa": 2.0})
    teacher: str = ""  # student stage: teacher checkpoint (directory from save_pipeline, or an official .pth)
    init: str = ""  # student stage: an official RSD training checkpoint model_N.pth to start student and fake from


@dataclass
class OptimConfig:
    steps: int = 3000  # optimizer steps of the trained network (the student in the student stage)
    batch: int = 64  # per optimizer step over all processes, before accumulation is split off
    grad_accum: int = 2  # micro-batches per process and step (RSD: 4 GPUs x 2 x micro-batch 8)
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    fake_lr: float = 5e-5
    grad_clip: float = 0.0  # max gradient norm; 0: no clipping (the RSD release clips nothing)
    ema_decay: float = 0.999  # constant from step 0, as the release
    warmup: int = 0  # linear learning-rate warm-up steps
    cosine: bool = False  # cosine decay of the learning rate to 0 over `steps`


@dataclass
class ObjectiveConfig:
    method: str = "rsd"  # "rsd", "tadsr" or "tsdsr"
    multistep: int = 4  # N student timesteps trained (diffusion num_steps); inference is one step at t = T-1
    multistep_x_true: bool = True  # inputs at the later timesteps: noised real HR latents (else the student's own)
    fake_updates: int = 5  # fake-model (and discriminator) updates per student update (n_fake_loop)
    rsd_weight: float = 1.0
    lpips_weight: float = 2.0
    gan_weight: float = 3e-3  # generator side
    gan_d_weight: float = 3e-3  # discriminator loss inside the fake model's update (the release: the same gan_loss_weight)
    mse_weight: float = 0.0  # latent MSE to the HR latent (TSD-SR uses one)
    # TAD-SR
    tad_max_t: int = 3  # "small t": the score distillation timesteps are 0 .. tad_max_t
    tad_hf_weight: float = 1.0  # extra weight of the high-frequency part
    # TSD-SR
    tsd_vsd_weight: float = 0.7
    tsd_target_weight: float = 0.3
    tsd_nearby: int = 2  # distribution-aware sampling: timesteps evaluated around the drawn one
    lpips_backbone: str = "auto"  # "auto": pretrained AlexNet if cached, else random (logged); "pretrained"; "random"


@dataclass
class RunConfig:
    out_dir: str = "runs/rsd"
    seed: int = 123456
    device: str = "auto"
    precision: str = "fp32"  # "fp32", "bf16" or "fp16" autocast
    attention: str = "reference"
    log_every: int = 1
    val_every: int = 1000  # 0: no validation
    ckpt_every: int = 1000
    keep_checkpoints: int = 2
    threads: int = 0  # torch CPU threads; 0: torch's default


@dataclass
class TrainConfig:
    stage: str = "student"  # "teacher" (ResShift x0 objective) or "student" (distillation)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def rsd_official_config(stage: str = "student") -> TrainConfig:
    """The released recipe: the dataclass defaults are RSD.yaml's values; the teacher stage takes
    ResShift's realsr_swinunet_realesrgan256.yaml (the 15-step v1/v2 teacher RSD distils)."""
    config = TrainConfig(stage=stage)
    if stage == "teacher":
        optim = config.optim
        optim.steps, optim.lr, optim.betas, optim.warmup = 300_000, 5e-5, (0.9, 0.999), 5000  # AdamW defaults
        config.run.precision = "fp16"  # use_amp: True
        config.run.val_every = config.run.ckpt_every = 10_000
        config.run.log_every = 200
    return config


def demo_config(stage: str = "student") -> TrainConfig:
    """The CPU-scale run of proof.py: the released recipe on a small pixel-space model, 64 px HR
    crops (16 px LR) of bicubic pairs, one thread. Each difference from rsd-official is a scale
    choice, listed with its reason in docs/distill.md."""
    config = TrainConfig(stage=stage)
    demo = PRESETS["demo-teacher"]  # the student adds its noise-map channel to the teacher's (demo-rsd)
    config.model.codec, config.model.unet = dict(demo.codec), dict(demo.unet)
    data = config.data
    data.crop, data.val_crop = 64, 256
    data.degradation = "bicubic"  # the demo is measured against bicubic on bicubic-downsampled photos
    # 12 photos: all orientations, scales 0.5-1, channels in any order (docs/distill.md)
    data.rescale_gt, data.rot, data.scale_range, data.shuffle_channels = False, True, (0.5, 1.0), True
    data.workers = 0
    config.optim.batch, config.optim.grad_accum = 16, 1
    config.run.seed, config.run.threads = 0, 1  # on a shared 2-core machine one thread is 10x faster than two fighting
    config.run.ckpt_every, config.run.log_every = 250, 10
    if stage == "teacher":
        config.optim.steps, config.optim.lr, config.optim.betas = 6000, 2e-3, (0.9, 0.99)
        config.optim.warmup, config.optim.cosine, config.optim.ema_decay = 20, True, 0.99
        config.run.val_every = 1000  # the 15-step chain on 12 held-out crops
    else:
        # 50 student steps: on the held-out crops the student's PSNR and LPIPS were best at step 50 of
        # a 200-step run (then PSNR fell, -0.13 dB by step 100: the perception-distortion trade-off)
        config.optim.steps, config.optim.lr, config.optim.fake_lr, config.optim.ema_decay = 50, 1e-4, 5e-4, 0.95
        config.run.val_every, config.run.ckpt_every = 25, 25
    return config


BASES = {"rsd-official": rsd_official_config, "demo": demo_config}


# --- reading ---------------------------------------------------------------------------------


def _number(value, where: str, integer: bool):
    """An int / float field's value; YAML 1.1 reads ``5e-5`` (no dot) as a string, so numeric
    strings are accepted for floats."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if integer:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _typed(value, current, where: str):
    """``value`` checked (and converted) against the type of the field's current value."""
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(current, (int, float)):
        return _number(value, where, integer=isinstance(current, int))
    if isinstance(current, str):
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(current):
            raise ValueError(f"{where}: expected a list of {len(current)} numbers, got {value!r}")
        return tuple(_number(v, f"{where}[{i}]", integer=False) for i, v in enumerate(value))
    if isinstance(current, list):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{where}: expected a list of strings, got {value!r}")
        return list(value)
    if isinstance(current, dict):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}")
        return value
    raise TypeError(f"{where}: unsupported field type {type(current).__name__}")


_MERGED_DICTS = {("model", "unet"): UNET_KEYS, ("model", "schedule"): SCHEDULE_KEYS}


def _merge(target, overrides, where: str, section: str = ""):
    if not isinstance(overrides, dict):
        raise ValueError(f"{where}: expected a mapping of config sections, got {type(overrides).__name__}")
    names = {f.name for f in fields(target)}
    for key, value in overrides.items():
        if key not in names:
            raise ValueError(f"{where}: unknown key {key!r} (expected one of {', '.join(sorted(names))})")
        current = getattr(target, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{where}.{key}: expected a mapping, got {type(value).__name__}")
            _merge(current, value, f"{where}.{key}", key)
            continue
        value = _typed(value, current, f"{where}.{key}")
        allowed = _MERGED_DICTS.get((section, key))
        if allowed is not None:  # a partial UNet / schedule refines the base's, never replaces it
            unknown = sorted(set(value) - allowed)
            if unknown:
                raise ValueError(f"{where}.{key}: unknown key {unknown[0]!r} (expected some of {', '.join(sorted(allowed))})")
            value = {**current, **value}
        setattr(target, key, value)


def build_config(base: str = "demo", stage: str = "student", path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """A named base config, then a YAML/JSON file's values, then ``overrides`` on top; validated."""
    if base not in BASES:
        raise ValueError(f"unknown base config {base!r} (expected one of {', '.join(BASES)})")
    config = BASES[base](stage)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such config file")
        try:
            data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
        except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({str(error).splitlines()[0]})") from None
        _merge(config, {} if data is None else data, str(path))
    _merge(config, copy.deepcopy(overrides or {}), "overrides")
    validate(config)
    return config


# --- checking ----------------------------------------------------------------------------------


def codec_latent_channels(codec: dict) -> int:
    if codec_kind(codec) == "pixel_unshuffle":
        return 3 * 4**2
    return int(codec.get("vq_embed_dim", codec.get("latent_channels", 3)))


def latent_multiple(unet: dict) -> int:
    """Latent sizes the UNet accepts: its Swin windows must tile the map at every level."""
    levels = len(unet.get("channel_mult", REALSR_X4_UNET["channel_mult"]))
    return int(unet.get("window_size", 8)) * 2 ** (levels - 1)


def check_crops(config: TrainConfig, unet: dict) -> None:
    """HR crops whose latent (crop / 4) the UNet can tile, one line naming the field."""
    multiple = latent_multiple(unet)
    for name in ("crop", "val_crop"):
        crop = getattr(config.data, name)
        if crop <= 0 or crop % 4:
            raise ValueError(f"config.data.{name}: expected a positive multiple of 4 (the x4 scale), got {crop}")
        if (crop // 4) % multiple:
            raise ValueError(f"config.data.{name}: {crop} gives a {crop // 4} px latent, but this UNet (window "
                             f"{unet.get('window_size', 8)}, {len(unet.get('channel_mult', []))} levels) needs a multiple of "
                             f"{multiple}: use a multiple of {4 * multiple}")


def _at_least(value, low, where: str) -> None:
    if value < low:
        raise ValueError(f"{where}: expected >= {low}, got {value}")


def validate(config: TrainConfig) -> None:
    """Every check that needs no model, each failing with one line naming the field."""
    if config.stage not in ("teacher", "student"):
        raise ValueError(f"config.stage: expected 'teacher' or 'student', got {config.stage!r}")
    objective, optim, run, data = config.objective, config.optim, config.run, config.data
    choices = [("objective.method", objective.method, ("rsd", "tadsr", "tsdsr")),
               ("objective.lpips_backbone", objective.lpips_backbone, ("auto", "pretrained", "random")),
               ("run.precision", run.precision, ("fp32", "bf16", "fp16")),
               ("data.degradation", data.degradation, ("realesrgan", "bicubic"))]
    for where, value, allowed in choices:
        if value not in allowed:
            raise ValueError(f"config.{where}: expected one of {', '.join(allowed)}, got {value!r}")
    for where, value, low in [("optim.steps", optim.steps, 1), ("optim.batch", optim.batch, 1),
                              ("optim.grad_accum", optim.grad_accum, 1), ("optim.warmup", optim.warmup, 0),
                              ("optim.weight_decay", optim.weight_decay, 0), ("optim.grad_clip", optim.grad_clip, 0),
                              ("run.log_every", run.log_every, 1), ("run.ckpt_every", run.ckpt_every, 1),
                              ("run.val_every", run.val_every, 0), ("run.keep_checkpoints", run.keep_checkpoints, 1),
                              ("run.threads", run.threads, 0), ("data.workers", data.workers, 0),
                              ("data.val_crops_per_image", data.val_crops_per_image, 1), ("data.pool_batches", data.pool_batches, 0),
                              ("objective.fake_updates", objective.fake_updates, 1), ("objective.tsd_nearby", objective.tsd_nearby, 1),
                              ("objective.tad_max_t", objective.tad_max_t, 0)]:
        _at_least(value, low, f"config.{where}")
    for where, value in [("optim.lr", optim.lr), ("optim.fake_lr", optim.fake_lr)]:
        if value <= 0:
            raise ValueError(f"config.{where}: expected a positive learning rate, got {value}")
    for where, value in [("optim.ema_decay", optim.ema_decay), ("optim.betas[0]", optim.betas[0]), ("optim.betas[1]", optim.betas[1])]:
        if not 0 <= value < 1:
            raise ValueError(f"config.{where}: expected a value in [0, 1), got {value}")
    for name in ("rsd_weight", "lpips_weight", "gan_weight", "gan_d_weight", "mse_weight", "tad_hf_weight", "tsd_vsd_weight", "tsd_target_weight"):
        _at_least(getattr(objective, name), 0, f"config.objective.{name}")
    lo, hi = data.scale_range
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"config.data.scale_range: expected 0 < low <= high <= 1, got {list(data.scale_range)}")
    if data.rescale_gt and data.scale_range != (1.0, 1.0):
        raise ValueError("config.data: rescale_gt and scale_range both choose the crop's scale; set one of them")
    if optim.batch % optim.grad_accum:
        raise ValueError(f"config.optim.batch ({optim.batch}) must be divisible by grad_accum ({optim.grad_accum})")
    schedule = config.model.schedule
    if not isinstance(schedule.get("steps"), int) or schedule["steps"] < 1:
        raise ValueError(f"config.model.schedule.steps: expected a positive integer, got {schedule.get('steps')!r}")
    if not 1 <= objective.multistep <= schedule["steps"]:
        raise ValueError(f"config.objective.multistep must be in 1 .. schedule steps ({schedule['steps']}), got {objective.multistep}")
    if objective.tad_max_t >= schedule["steps"]:
        raise ValueError(f"config.objective.tad_max_t must be below the schedule's {schedule['steps']} steps, got {objective.tad_max_t}")
    if config.stage == "student" and config.model.teacher and Path(config.model.teacher).is_dir():
        return  # the UNet and codec come from the teacher's folder; the trainer checks them there
    check_unet(config, config.model.unet, codec_latent_channels(config.model.codec), "config.model.unet")


def check_unet(config: TrainConfig, unet: dict, latent: int, where: str) -> None:
    """A UNet config against its codec's latent channels and the crops, before it is built."""
    for key in ("in_channels", "out_channels"):
        if unet.get(key, 3) != latent:
            raise ValueError(f"{where}: {key} is {unet.get(key, 3)}, but the codec's latent has {latent} channels "
                             f"(config.model.codec: {config.model.codec or 'the VQ-f4 autoencoder'})")
    check_crops(config, unet)
