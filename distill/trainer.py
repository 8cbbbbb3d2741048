"""The training loop shared by the teacher and every distillation objective.

One step = the objective's phases in order (RSD: 5 fake-model updates, then one student update),
each phase an optimizer step over ``grad_accum`` micro-batches of fresh data. Single process or
``torchrun`` (DDP, one process per GPU, gloo on CPUs). Checkpoints are directories written file
by file with atomic renames and published by rewriting ``latest.json`` last, so a kill at any
moment leaves the previous checkpoint intact; every random number is derived from (seed, step),
so a resumed run continues exactly as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from rsd_deploy.atomic import atomic_path
from rsd_deploy.checkpoints import load_codec, load_pipeline, load_unet, save_pipeline
from rsd_deploy.models.autoencoder import build_codec
from rsd_deploy.models.unet import UNetModelSwin
from rsd_deploy.pipeline import SRPipeline
from rsd_deploy.schedule import ResShiftSchedule

from .config import TrainConfig
from .data import HRCrops, StepSampler, load_sources, make_lr, step_seed, validation_pairs
from .losses import LPIPSLoss
from .metrics import image_metrics
from .objectives import OBJECTIVES, Batch, TeacherObjective, encode_batch

log = logging.getLogger("rsd_deploy.distill")

NOISE_STREAM, DEGRADE_STREAM = 1, 2


class EMA:
    """Exponential moving average of a network's parameters, with the usual warm-up
    ``min(decay, (1 + step) / (10 + step))`` so short runs are not dominated by the start point.
    Buffers (``relative_position_index``, masks) are copied, never averaged."""

    def __init__(self, net: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema, live in zip(self.model.parameters(), net.parameters()):
            ema.lerp_(live.detach(), 1 - decay)
        for ema, live in zip(self.model.buffers(), net.buffers()):
            ema.copy_(live)


def _distributed() -> tuple[int, int, int]:
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


def _device(name: str, local_rank: int) -> torch.device:
    if name != "auto":
        return torch.device(name)
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def _save_tensors(state: dict[str, torch.Tensor], path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))


class Trainer:
    def __init__(self, config: TrainConfig):
        self.config = config
        self.rank, self.world, local_rank = _distributed()
        self.device = _device(config.run.device, local_rank)
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        self.out_dir = Path(config.run.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.step = 0

        # resolve the image folders now, so a bad path fails before any training, not hours in
        self.train_sources = load_sources(config.data.hr_dirs, config.data.photos)
        self.val_pairs = validation_pairs(load_sources(config.data.val_dirs, config.data.val_photos), config.data.val_crop,
                                          config.data.val_crops_per_image, config.data.degradation)
        self.codec, self.schedule, teacher = self._build_models()
        self.codec.to(self.device).eval().requires_grad_(False)
        need_lpips = config.stage == "student" and config.objective.lpips_weight > 0
        self.lpips = LPIPSLoss(config.objective.lpips_backbone).to(self.device)
        self.objective = self._build_objective(teacher, self.lpips if need_lpips else None)
        for net in self.objective.networks.values():
            net.to(self.device)
        teacher.to(self.device)  # frozen in the student stage; the trained network in the teacher stage
        self.optimizers = {name: self._optimizer(name, net) for name, net in self.objective.networks.items()}
        self.scalers = {name: torch.amp.GradScaler(self.device.type, enabled=config.run.precision == "fp16") for name in self.optimizers}
        self.wrapped = {name: self._wrap(net) for name, net in self.objective.networks.items()}
        self.ema = EMA(self.objective.networks[self.objective.exported], config.optim.ema_decay)
        self.micro = config.optim.batch // (self.world * config.optim.grad_accum)
        if self.micro < 1:
            raise ValueError(f"config.optim.batch {config.optim.batch} is smaller than processes x grad_accum ({self.world} x {config.optim.grad_accum})")
        self.writer = None

    # --- construction ---------------------------------------------------------------------------

    def _build_models(self) -> tuple[nn.Module, ResShiftSchedule, UNetModelSwin]:
        cfg = self.config.model
        if self.config.stage == "teacher":
            codec = self._codec()
            torch.manual_seed(self.config.run.seed)
            unet = UNetModelSwin(**cfg.unet)
            unet.config = dict(cfg.unet)
            return codec, ResShiftSchedule(**cfg.schedule), unet
        if not cfg.teacher:
            raise ValueError("config.model.teacher: the student stage needs a teacher checkpoint (a save_pipeline directory or an official .pth)")
        teacher_path = Path(cfg.teacher)
        if teacher_path.is_dir():
            pipe = load_pipeline(teacher_path)  # the teacher's own codec and schedule
            return pipe.codec, pipe.schedule, pipe.unet
        return self._codec(), ResShiftSchedule(**cfg.schedule), load_unet(teacher_path)

    def _codec(self) -> nn.Module:
        cfg = self.config.model
        if cfg.codec.get("kind") == "pixel_unshuffle":
            return build_codec(cfg.codec)
        if not cfg.codec_checkpoint:
            raise ValueError("config.model.codec_checkpoint: a VQ-f4 autoencoder checkpoint (autoencoder_vq_f4.pth) is required")
        return load_codec(cfg.codec_checkpoint, cfg.codec or None)

    def _build_objective(self, teacher: UNetModelSwin, lpips: LPIPSLoss | None):
        teacher.set_attention_backend(self.config.run.attention)
        if self.config.stage == "teacher":
            return TeacherObjective(teacher.train(), self.schedule)
        torch.manual_seed(self.config.run.seed)  # the discriminator heads' initialisation
        cls = OBJECTIVES[self.config.objective.method]
        return cls(teacher, self.schedule, self.codec, lpips, self.config.objective)

    def _optimizer(self, name: str, net: nn.Module) -> torch.optim.Optimizer:
        cfg = self.config.optim
        lr = cfg.lr if name == self.objective.exported else cfg.fake_lr
        params = [p for p in net.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)

    def _wrap(self, net: nn.Module) -> nn.Module:
        if self.world == 1:
            return net
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=ids)

    # --- data -------------------------------------------------------------------------------------

    def _loader(self) -> Iterator[torch.Tensor]:
        cfg = self.config.data
        dataset = HRCrops(self.train_sources, cfg.crop, seed=self.config.run.seed)
        per_step = len(self.objective.phases()) * self.config.optim.grad_accum
        sampler = StepSampler(self.step * per_step, self.micro, self.rank, self.world)
        loader = DataLoader(dataset, batch_size=self.micro, sampler=sampler, num_workers=cfg.workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=cfg.workers > 0)
        return iter(loader)

    def _batch(self, hr: torch.Tensor, micro_index: int) -> Batch:
        hr = hr.to(self.device, non_blocking=True)
        seed = step_seed(self.config.run.seed, micro_index, self.rank, DEGRADE_STREAM)
        return encode_batch(self.codec, hr, make_lr(hr, self.config.data.degradation, seed))

    # --- one step ---------------------------------------------------------------------------------

    def _autocast(self):
        precision = self.config.run.precision
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)

    def _learning_rate(self, base: float) -> float:
        cfg = self.config.optim
        factor = min(1.0, (self.step + 1) / cfg.warmup) if cfg.warmup else 1.0
        if cfg.cosine:
            factor *= 0.5 * (1 + math.cos(math.pi * self.step / cfg.steps))
        return base * factor

    def train_step(self, data) -> dict[str, float]:
        cfg = self.config
        metrics: dict[str, list[float]] = {}
        accum = cfg.optim.grad_accum
        per_step = len(self.objective.phases()) * accum
        for p, phase in enumerate(self.objective.phases()):
            net, optimizer, scaler = self.wrapped[phase], self.optimizers[phase], self.scalers[phase]
            base = cfg.optim.lr if phase == self.objective.exported else cfg.optim.fake_lr
            for group in optimizer.param_groups:
                group["lr"] = self._learning_rate(base)
            optimizer.zero_grad(set_to_none=True)
            for a in range(accum):
                micro_index = self.step * per_step + p * accum + a
                batch = self._batch(next(data), micro_index)
                gen = torch.Generator(self.device).manual_seed(step_seed(cfg.run.seed, micro_index, self.rank, NOISE_STREAM))
                sync = a == accum - 1 or self.world == 1
                with (contextlib.nullcontext() if sync else net.no_sync()), self._autocast():
                    loss, values = self.objective.loss(phase, net, batch, gen)
                scaler.scale(loss / accum).backward()
                for key, value in {"loss": loss.item(), **values}.items():
                    metrics.setdefault(f"{phase}/{key}", []).append(value)
            scaler.unscale_(optimizer)
            params = [q for group in optimizer.param_groups for q in group["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip) if cfg.optim.grad_clip else None
            if norm is not None:
                metrics.setdefault(f"{phase}/grad_norm", []).append(float(norm))
            scaler.step(optimizer)
            scaler.update()
        self.ema.update(self.objective.networks[self.objective.exported], self.step)
        self.step += 1
        return {k: float(np.mean(v)) for k, v in metrics.items()}

    # --- checkpoints ------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Write checkpoints/step_N/ file by file (atomic renames), then point latest.json at it."""
        if self.rank != 0:
            return self.ckpt_dir
        folder = self.ckpt_dir / f"step_{self.step:07d}"
        for name, net in self.objective.networks.items():
            _save_tensors(net.state_dict(), folder / f"{name}.safetensors")
        _save_tensors(self.ema.model.state_dict(), folder / "ema.safetensors")
        state = {
            "step": self.step,
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "scalers": {k: s.state_dict() for k, s in self.scalers.items()},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        with atomic_path(folder / "trainer_state.pt") as tmp:
            torch.save(state, tmp)
        with atomic_path(folder / "config.json") as tmp:
            tmp.write_text(json.dumps(self.config.to_dict(), indent=2))
        with atomic_path(self.ckpt_dir / "latest.json") as tmp:
            tmp.write_text(json.dumps({"step": self.step, "folder": folder.name}) + "\n")
        kept = sorted(p for p in self.ckpt_dir.glob("step_*") if p.is_dir())
        for old in kept[: -self.config.run.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return folder

    def latest_checkpoint(self) -> Path | None:
        pointer = self.ckpt_dir / "latest.json"
        if not pointer.is_file():
            return None
        folder = self.ckpt_dir / json.loads(pointer.read_text())["folder"]
        if not (folder / "trainer_state.pt").is_file():
            raise ValueError(f"{pointer}: points at {folder}, which has no trainer_state.pt")
        return folder

    def resume(self, folder: Path) -> None:
        for name, net in self.objective.networks.items():
            net.load_state_dict(load_file(str(folder / f"{name}.safetensors"), device=str(self.device)), strict=True)
        self.ema.model.load_state_dict(load_file(str(folder / "ema.safetensors"), device=str(self.device)), strict=True)
        state = torch.load(folder / "trainer_state.pt", map_location=self.device, weights_only=True)
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        for name, scaler in self.scalers.items():
            scaler.load_state_dict(state["scalers"][name])
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        self.step = int(state["step"])
        self._log(f"resumed from {folder} at step {self.step}")

    # --- validation and export ----------------------------------------------------------------------

    def pipeline(self, description: str = "") -> SRPipeline:
        """The EMA network as a one-step (student) or T-step (teacher) pipeline, on CPU copies."""
        unet = copy.deepcopy(self.ema.model).float().cpu().eval()
        unet.config = dict(self.objective.networks[self.objective.exported].config)
        return SRPipeline(unet, copy.deepcopy(self.codec).cpu(), self.schedule, description)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        hr, lr = self.val_pairs
        pipe = self.pipeline().to(self.device)
        steps = 1 if self.config.stage == "student" else self.schedule.steps
        sr = pipe(lr.to(self.device), steps=steps, seed=0).cpu()
        values = image_metrics(sr, hr, self.lpips)
        self._write_grid(lr, sr, hr)
        return values

    def _write_grid(self, lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor) -> None:
        from torchvision.utils import make_grid, save_image

        up = torch.nn.functional.interpolate(lr, size=hr.shape[-2:], mode="bicubic").clamp(0, 1)
        rows = torch.stack([up, sr, hr], dim=1).flatten(0, 1)[:24]
        grid = make_grid(rows, nrow=3, padding=2)
        with atomic_path(self.out_dir / "val" / f"step_{self.step:07d}.png") as tmp:
            save_image(grid, tmp)
        if self.writer is not None:
            self.writer.add_image("val/bicubic_output_hr", grid, self.step)

    def export(self, directory: str | Path, description: str) -> None:
        save_pipeline(self.pipeline(description), directory)

    # --- the loop -----------------------------------------------------------------------------------

    def _log(self, message: str) -> None:
        if self.rank == 0:
            log.info(message)

    def fit(self, stop_after: int | None = None) -> None:
        """Train to ``optim.steps`` (or ``stop_after`` more steps), resuming from the latest checkpoint."""
        cfg = self.config
        folder = self.latest_checkpoint()
        if folder is not None:
            self.resume(folder)
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / "tb"))
            self._log(f"{cfg.stage} ({cfg.objective.method if cfg.stage == 'student' else 'resshift'}) on {self.device}, "
                      f"{self.world} process(es), LPIPS: {self.lpips.kind}, step {self.step}/{cfg.optim.steps}")
        target = cfg.optim.steps if stop_after is None else min(cfg.optim.steps, self.step + stop_after)
        data = self._loader()
        started, first = time.time(), self.step
        while self.step < target:
            values = self.train_step(data)
            if self.rank == 0 and (self.step % cfg.run.log_every == 0 or self.step == target):
                rate = (time.time() - started) / (self.step - first)
                for key, value in values.items():
                    self.writer.add_scalar(key, value, self.step)
                shown = "  ".join(f"{k} {v:.4g}" for k, v in values.items() if not k.endswith("grad_norm"))
                self._log(f"step {self.step}/{cfg.optim.steps}  {shown}  ({rate:.2f} s/step)")
            if self.step % cfg.run.ckpt_every == 0 or self.step == target:
                self.save_checkpoint()
            if self.rank == 0 and cfg.run.val_every and (self.step % cfg.run.val_every == 0 or self.step == cfg.optim.steps):
                values = self.validate()
                for key, value in values.items():
                    self.writer.add_scalar(f"val/{key}", value, self.step)
                self._log(f"validation at step {self.step}: " + "  ".join(f"{k} {v:.4f}" for k, v in values.items()))
        if self.writer is not None:
            self.writer.flush()
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

