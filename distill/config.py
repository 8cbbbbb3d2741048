"""Training configuration as data: dataclasses with the paper's defaults, overridden by YAML/JSON.

Two named starting points: ``paper`` (the RSD recipe at full scale: the real-world x4 UNet in the
VQ-f4 latent space, batch 64, 3000 student iterations) and ``demo`` (a small pixel-space model
that trains on two CPU cores in minutes, used by ``proof.py``). A YAML/JSON file then overrides
any field, e.g. ``{"optim": {"lr": 1e-5}, "objective": {"method": "tsdsr"}}``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import yaml

from rsd_deploy.presets import REALSR_X4_UNET, TINY_UNET

# scikit-image photos for the CPU-scale runs; held-out photos never appear in training.
# (`cat` is `chelsea` again and the right motorcycle view nearly equals the left: both excluded.)
TRAIN_PHOTOS = ["astronaut", "immunohistochemistry", "hubble_deep_field", "stereo_motorcycle", "retina",
                "camera", "brick", "grass", "gravel", "moon", "coins", "clock", "colorwheel"]
HELD_OUT_PHOTOS = ["chelsea", "coffee", "rocket"]

# The demo denoiser: UNetModelSwin on the 48-channel pixel-unshuffle latent, two levels, Swin at both.
# 8 norm groups (4 channels each at width 32, as the real model's 160 / 32): with the official 32
# groups every GroupNorm at width 32 is a per-channel instance norm, and the output head
# (GroupNorm -> SiLU -> conv) cannot pass a per-image colour to the output (on the held-out crops
# the 1-step teacher stayed at 16-17 dB after 200-800 steps with 32 groups; with 8 it reached 27.7 dB
# after 1000; docs/distill.md).
DEMO_UNET = {**TINY_UNET, "in_channels": 48, "out_channels": 48, "norm_groups": 8}


@dataclass
class DataConfig:
    hr_dirs: list[str] = field(default_factory=list)  # HR image folders (recursive); empty: `photos`
    photos: list[str] = field(default_factory=lambda: list(TRAIN_PHOTOS))  # skimage.data names
    val_dirs: list[str] = field(default_factory=list)
    val_photos: list[str] = field(default_factory=lambda: list(HELD_OUT_PHOTOS))
    crop: int = 256  # HR crop size; LR = crop / 4 must be a multiple of 16 for the small UNet, 64 for the real one
    val_crop: int = 256
    val_crops_per_image: int = 4
    degradation: str = "realesrgan"  # or "bicubic"
    workers: int = 0  # DataLoader worker processes (crop loading); degradation runs on the device


@dataclass
class ModelConfig:
    codec: dict = field(default_factory=lambda: {"kind": "pixel_unshuffle", "factor": 4})
    codec_checkpoint: str = ""  # VQ-f4 weights (autoencoder_vq_f4.pth) when codec is a VQModel config
    unet: dict = field(default_factory=lambda: dict(DEMO_UNET))
    schedule: dict = field(default_factory=lambda: {"steps": 15, "min_noise": 0.04, "kappa": 2.0})
    teacher: str = ""  # student stage: teacher checkpoint (directory from save_pipeline, or an official .pth)


@dataclass
class OptimConfig:
    steps: int = 3000  # optimizer steps of the trained network (the student in the student stage)
    batch: int = 64  # per optimizer step over all processes, before accumulation is split off
    grad_accum: int = 1
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    fake_lr: float = 5e-5
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    warmup: int = 0  # linear learning-rate warm-up steps
    cosine: bool = False  # cosine decay of the learning rate to 0 over `steps`


@dataclass
class ObjectiveConfig:
    method: str = "rsd"  # "rsd", "tadsr" or "tsdsr"
    multistep: int = 4  # N student timesteps trained; inference is one step at t = T-1
    fake_updates: int = 5  # fake-model (and discriminator) updates per student update
    rsd_weight: float = 1.0
    lpips_weight: float = 2.0
    gan_weight: float = 3e-3  # generator side
    gan_d_weight: float = 1.0  # discriminator loss weight inside the fake model's update
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
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # "fp32", "bf16" or "fp16" autocast
    attention: str = "reference"
    log_every: int = 10
    val_every: int = 500
    ckpt_every: int = 250
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


def paper_config(stage: str = "student") -> TrainConfig:
    """The RSD recipe: real-world x4 UNet, VQ-f4 latent, 256 crops, batch 64, 3000 iterations."""
    config = TrainConfig(stage=stage)
    config.model.codec = {}  # empty: the VQ-f4 VQModel config (weights from codec_checkpoint)
    config.model.unet = dict(REALSR_X4_UNET)
    config.data.workers = 8
    config.run.precision = "bf16"
    return config


def demo_config(stage: str = "student") -> TrainConfig:
    """The CPU-scale run of proof.py: small pixel-space model, 64 px HR crops (16 px LR)."""
    config = TrainConfig(stage=stage)
    config.data.crop = 64
    config.data.degradation = "bicubic"  # 16 px Real-ESRGAN LR crops leave a 0.8M model too little to learn in minutes
    config.optim.batch = 16
    config.run.threads = 1  # on a shared 2-core machine one thread is 10x faster than two fighting
    config.optim.ema_decay = 0.99
    config.run.val_every = 200
    config.run.ckpt_every = 50
    config.run.log_every = 5
    if stage == "teacher":
        config.optim.steps, config.optim.lr, config.optim.betas = 2000, 2e-3, (0.9, 0.99)
        config.optim.warmup, config.optim.cosine = 20, True
    else:
        config.optim.steps, config.optim.lr, config.optim.fake_lr = 100, 1e-4, 5e-4
    return config


BASES = {"paper": paper_config, "demo": demo_config}


def _merge(target, overrides: dict, where: str):
    names = {f.name: f for f in fields(target)}
    for key, value in overrides.items():
        if key not in names:
            raise ValueError(f"{where}: unknown key {key!r} (expected one of {', '.join(names)})")
        current = getattr(target, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{where}.{key}: expected a mapping, got {type(value).__name__}")
            _merge(current, value, f"{where}.{key}")
        else:
            setattr(target, key, tuple(value) if isinstance(current, tuple) else value)


def build_config(base: str = "demo", stage: str = "student", path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """A named base config, then a YAML/JSON file's values, then ``overrides`` on top."""
    if base not in BASES:
        raise ValueError(f"unknown base config {base!r} (expected one of {', '.join(BASES)})")
    config = BASES[base](stage)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such config file")
        try:
            data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
        except (json.JSONDecodeError, yaml.YAMLError) as error:
            raise ValueError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({str(error).splitlines()[0]})") from None
        _merge(config, data or {}, str(path))
    _merge(config, copy.deepcopy(overrides or {}), "overrides")
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    if config.stage not in ("teacher", "student"):
        raise ValueError(f"config.stage: expected 'teacher' or 'student', got {config.stage!r}")
    if config.objective.method not in ("rsd", "tadsr", "tsdsr"):
        raise ValueError(f"config.objective.method: expected rsd, tadsr or tsdsr, got {config.objective.method!r}")
    if config.run.precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"config.run.precision: expected fp32, bf16 or fp16, got {config.run.precision!r}")
    if config.data.degradation not in ("realesrgan", "bicubic"):
        raise ValueError(f"config.data.degradation: expected realesrgan or bicubic, got {config.data.degradation!r}")
    if config.data.crop % 4 or config.data.val_crop % 4:
        raise ValueError(f"config.data.crop / val_crop must be multiples of 4, got {config.data.crop} / {config.data.val_crop}")
    if config.optim.batch % config.optim.grad_accum:
        raise ValueError(f"config.optim.batch ({config.optim.batch}) must be divisible by grad_accum ({config.optim.grad_accum})")
    if not 1 <= config.objective.multistep <= config.model.schedule.get("steps", 15):
        raise ValueError(f"config.objective.multistep must be in 1 .. schedule steps, got {config.objective.multistep}")
