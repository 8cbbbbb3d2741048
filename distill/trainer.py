"""The training loop shared by the teacher and every distillation objective.

One step = the objective's phases in order (RSD: 5 fake-model updates, then one student update),
each phase an optimizer step over ``grad_accum`` micro-batches of fresh data. Single process or
``torchrun`` (DDP, one process per GPU, gloo on CPUs). Checkpoints are directories written file
by file with atomic renames and published by rewriting ``latest.json`` last, so a kill at any
moment leaves the previous checkpoint intact; every random number is derived from (seed, step),
so a resumed run continues exactly as if it had never stopped. A run folder damaged some other
way (an empty ``latest.json``, a truncated file, a checkpoint of another stage) resumes from the
newest checkpoint that is complete, and says which it skipped; nothing is ever deleted for it.
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
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from rsd_deploy.atomic import atomic_path
from rsd_deploy.checkpoints import (CheckpointError, load_checkpoint_file, load_codec, load_pipeline, load_unet, read_state_dict,
                                    read_training_checkpoint, save_pipeline, split_unet)
from rsd_deploy.metrics import LPIPS, image_metrics
from rsd_deploy.models.autoencoder import build_codec, codec_kind
from rsd_deploy.models.unet import UNetModelSwin
from rsd_deploy.pipeline import SRPipeline
from rsd_deploy.schedule import ResShiftSchedule

from .config import TrainConfig, check_unet
from .data import HRCrops, StepSampler, load_sources, make_lr, step_seed, validation_pairs
from .objectives import OBJECTIVES, Batch, TeacherObjective, encode_batch

log = logging.getLogger("rsd_deploy.distill")

NOISE_STREAM, DEGRADE_STREAM, POOL_STREAM = 1, 2, 3


class EMA:
    """Exponential moving average of a network's parameters with a constant decay from step 0, as
    the RSD and ResShift trainers keep it (so a short run exports mostly its starting point: pick
    the decay for the run's length). Buffers (``relative_position_index``, masks) are copied, never
    averaged."""

    def __init__(self, net: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        for ema, live in zip(self.model.parameters(), net.parameters()):
            ema.lerp_(live.detach(), 1 - self.decay)
        for ema, live in zip(self.model.buffers(), net.buffers()):
            ema.copy_(live)


class PairPool:
    """Real-ESRGAN's training-pair pool (ResShift's ``_dequeue_and_enqueue``): the degradation
    draws one resize factor and noise kind per batch, so (HR, LR) pairs are kept in a pool of
    ``size`` and, once it is full, each batch is swapped for a random draw from it. Its content
    goes into every checkpoint, so a resumed run continues exactly."""

    def __init__(self, size: int):
        self.size = size
        self.hr: torch.Tensor | None = None
        self.lr: torch.Tensor | None = None
        self.filled = 0

    def swap(self, hr: torch.Tensor, lr: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        b = hr.shape[0]
        if self.hr is None:
            if self.size % b:
                raise ValueError(f"pair pool size {self.size} is not a multiple of the micro-batch {b}")
            self.hr, self.lr = hr.new_zeros(self.size, *hr.shape[1:]), lr.new_zeros(self.size, *lr.shape[1:])
        if self.filled < self.size:
            self.hr[self.filled : self.filled + b], self.lr[self.filled : self.filled + b] = hr, lr
            self.filled += b
            return hr, lr
        order = torch.randperm(self.size, generator=gen).to(hr.device)
        self.hr, self.lr = self.hr[order], self.lr[order]
        out = self.hr[:b].clone(), self.lr[:b].clone()
        self.hr[:b], self.lr[:b] = hr, lr
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.hr is None:
            return {}
        return {"hr": self.hr, "lr": self.lr, "filled": torch.tensor(self.filled)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            self.hr, self.lr, self.filled = state["hr"], state["lr"], int(state["filled"])


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


def _read(file: Path):
    """A checkpoint file's content; CheckpointError naming the file (not its folder) when unreadable."""
    try:
        return load_checkpoint_file(file)
    except CheckpointError as error:
        raise CheckpointError(f"{file.name} unreadable ({str(error).removeprefix(f'{file}: ')})") from None


def _check_layout(net: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """The same keys and shapes as ``net``, or CheckpointError in one line."""
    own = net.state_dict()
    if set(own) != set(state):
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise CheckpointError(f"{where}: other networks ({len(missing)} keys missing, e.g. {missing[:1]}; "
                              f"{len(unexpected)} unexpected, e.g. {unexpected[:1]})")
    wrong = [k for k in own if own[k].shape != state[k].shape]
    if wrong:
        raise CheckpointError(f"{where}: {len(wrong)} tensors of other shapes, e.g. {wrong[0]} {tuple(state[wrong[0]].shape)} "
                              f"instead of {tuple(own[wrong[0]].shape)}")


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
        self.micro = config.optim.batch // (self.world * config.optim.grad_accum)
        if self.micro < 1:
            raise ValueError(f"config.optim.batch {config.optim.batch} is smaller than processes x grad_accum ({self.world} x {config.optim.grad_accum})")
        self.codec, self.schedule, teacher = self._build_models()
        self.codec.to(self.device).eval().requires_grad_(False)
        need_lpips = config.stage == "student" and config.objective.lpips_weight > 0
        self.lpips = LPIPS(config.objective.lpips_backbone).to(self.device)
        self.objective = self._build_objective(teacher, self.lpips if need_lpips else None)
        for net in self.objective.networks.values():
            net.to(self.device)
        teacher.to(self.device)  # frozen in the student stage; the trained network in the teacher stage
        self.optimizers = {name: self._optimizer(name, net) for name, net in self.objective.networks.items()}
        self.scalers = {name: torch.amp.GradScaler(self.device.type, enabled=config.run.precision == "fp16") for name in self.optimizers}
        self.wrapped = {name: self._wrap(net) for name, net in self.objective.networks.items()}
        self.ema = EMA(self.objective.networks[self.objective.exported], config.optim.ema_decay)
        use_pool = config.data.degradation == "realesrgan" and config.data.pool_batches > 0
        # ResShift's queue holds 10 of a process's batches (16 pairs each for RSD's 64 on 4 GPUs)
        self.pool = PairPool(config.data.pool_batches * self.micro * config.optim.grad_accum) if use_pool else None
        if config.stage == "student" and config.model.init:
            self._init_from_release(Path(config.model.init))
        self.writer = None
        self._restore()  # before any training, so a damaged run folder is reported in one line

    # --- construction ---------------------------------------------------------------------------

    def _build_models(self) -> tuple[nn.Module, ResShiftSchedule, UNetModelSwin]:
        cfg = self.config.model
        if self.config.stage == "teacher":
            codec = self._codec()
            torch.manual_seed(self.config.run.seed)
            return codec, ResShiftSchedule(**cfg.schedule), UNetModelSwin(**cfg.unet)
        if not cfg.teacher:
            raise ValueError("config.model.teacher: the student stage needs a teacher checkpoint (a save_pipeline directory or an official .pth)")
        teacher_path = Path(cfg.teacher)
        if teacher_path.is_dir():
            pipe = load_pipeline(teacher_path)  # the teacher's own codec and schedule
            check_unet(self.config, pipe.unet.config, pipe.codec.latent_channels, f"teacher {teacher_path}")
            return pipe.codec, pipe.schedule, pipe.unet
        codec, teacher = self._codec(), load_unet(teacher_path)  # an official .pth: its config inferred from the weights
        check_unet(self.config, teacher.config, codec.latent_channels, f"teacher {teacher_path}")
        return codec, ResShiftSchedule(**cfg.schedule), teacher

    def _codec(self) -> nn.Module:
        cfg = self.config.model
        if codec_kind(cfg.codec) == "pixel_unshuffle":
            return build_codec(cfg.codec)
        if not cfg.codec_checkpoint:
            raise ValueError("config.model.codec_checkpoint: a VQ-f4 autoencoder checkpoint (autoencoder_vq_f4.pth) is required")
        return load_codec(cfg.codec_checkpoint, cfg.codec or None)

    def _build_objective(self, teacher: UNetModelSwin, lpips: LPIPS | None):
        teacher.set_attention_backend(self.config.run.attention)
        if self.config.stage == "teacher":
            return TeacherObjective(teacher.train(), self.schedule)
        torch.manual_seed(self.config.run.seed)  # the discriminator heads' initialisation
        cls = OBJECTIVES[self.config.objective.method]
        return cls(teacher, self.schedule, self.codec, lpips, self.config.objective)

    def _init_from_release(self, path: Path) -> None:
        """Student, fake UNet and step from an RSD training checkpoint (``model_N.pth``), and the
        EMA from its ``../ema_ckpts/ema_model_N.pth`` when that is there (the release's layout).
        The release's GAN head layout is not public, so the head starts from its seed; the Adam
        moments start from zero."""
        release = read_training_checkpoint(path)
        objective = self.objective
        try:
            fake_unet, head = split_unet(release["fake"])
        except KeyError:
            raise CheckpointError(f"{path}: its fake model holds no UNetModelSwin (no input_blocks.0.0.weight)") from None
        for net, state, what in [(objective.student, release["student"], "student"), (objective.fake.unet, fake_unet, "fake")]:
            _check_layout(net, state, f"{path} ({what})")
            net.load_state_dict(state, strict=True)
        ema_path = path.parent.parent / "ema_ckpts" / f"ema_{path.name}"
        if ema_path.is_file():
            ema_state = read_state_dict(ema_path)
            _check_layout(self.ema.model, ema_state, str(ema_path))
            self.ema.model.load_state_dict(ema_state, strict=True)
        else:
            self.ema.model.load_state_dict(objective.student.state_dict())
        self.step = release["step"]
        self._log(f"initialised student and fake UNet from {path} at step {self.step}"
                  + (f", EMA from {ema_path}" if ema_path.is_file() else ", EMA from the student (no ema_ckpts file)")
                  + (f"; its GAN head ({len(head)} tensors) is not public, ours starts from its seed" if head else ""))

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
        dataset = HRCrops(self.train_sources, cfg.crop, seed=self.config.run.seed, hflip=cfg.hflip, rot=cfg.rot,
                          rescale_gt=cfg.rescale_gt, scale_range=cfg.scale_range, shuffle_channels=cfg.shuffle_channels)
        per_step = len(self.objective.phases()) * self.config.optim.grad_accum
        sampler = StepSampler(self.step * per_step, self.micro, self.rank, self.world)
        loader = DataLoader(dataset, batch_size=self.micro, sampler=sampler, num_workers=cfg.workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=cfg.workers > 0)
        return iter(loader)

    def _batch(self, hr: torch.Tensor, micro_index: int) -> Batch:
        hr = hr.to(self.device, non_blocking=True)
        seed = step_seed(self.config.run.seed, micro_index, self.rank, DEGRADE_STREAM)
        lr = make_lr(hr, self.config.data.degradation, seed)
        if self.pool is not None:
            gen = torch.Generator().manual_seed(step_seed(self.config.run.seed, micro_index, self.rank, POOL_STREAM))
            hr, lr = self.pool.swap(hr, lr, gen)
        return encode_batch(self.codec, hr, lr)

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
            # grad_clip 0 (the release): no clipping, the norm is still logged
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip or float("inf"))
            metrics.setdefault(f"{phase}/grad_norm", []).append(float(norm))
            scaler.step(optimizer)
            scaler.update()
        self.ema.update(self.objective.networks[self.objective.exported])
        self.step += 1
        return {k: float(np.mean(v)) for k, v in metrics.items()}

    # --- checkpoints ------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Write checkpoints/step_N/ file by file (atomic renames), then point latest.json at it."""
        folder = self.ckpt_dir / f"step_{self.step:07d}"
        if self.pool is not None:  # every process's own pool, before rank 0 publishes the folder
            _save_tensors(self.pool.state_dict(), folder / f"pool_rank{self.rank}.safetensors")
            if self.world > 1:
                dist.barrier()
        if self.rank != 0:
            return folder
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

    def _checkpoint_folders(self) -> list[Path]:
        """This run's checkpoint folders, newest first (``latest.json`` only names the newest
        published one; every file is renamed into place complete, so a folder with all its files
        is complete whether or not the pointer reached it)."""
        folders = [p for p in self.ckpt_dir.glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
        return sorted(folders, key=lambda p: int(p.name[5:]), reverse=True)

    def _read_checkpoint(self, folder: Path) -> dict:
        """Everything a resume needs from ``folder``, read and checked against this run before
        anything is changed; CheckpointError (one line) when it cannot be used."""
        names = list(self.objective.networks)
        needed = [f"{n}.safetensors" for n in names] + ["ema.safetensors", "trainer_state.pt", "config.json"]
        if self.pool is not None:
            needed.append(f"pool_rank{self.rank}.safetensors")
        missing = [f for f in needed if not (folder / f).is_file()]
        if "config.json" in missing:
            raise CheckpointError(f"{', '.join(missing)} missing")
        try:
            saved = json.loads((folder / "config.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"config.json unreadable ({error})") from None
        stage = saved.get("stage") if isinstance(saved, dict) else None
        method = (saved.get("objective") or {}).get("method") if isinstance(saved, dict) else None
        if stage != self.config.stage or (stage == "student" and method != self.config.objective.method):
            theirs = f"{stage} stage" + (f", {method}" if stage == "student" else "")
            ours = f"{self.config.stage} stage" + (f", {self.config.objective.method}" if self.config.stage == "student" else "")
            raise CheckpointError(f"a checkpoint of a {theirs} run, this run is {ours}")
        if missing:
            raise CheckpointError(f"{', '.join(missing)} missing")
        tensors = {}
        for name in names + ["ema"] + (["pool"] if self.pool is not None else []):
            file = folder / (f"pool_rank{self.rank}.safetensors" if name == "pool" else f"{name}.safetensors")
            tensors[name] = _read(file)
            if name != "pool":
                _check_layout(self.objective.networks.get(name, self.ema.model), tensors[name], file.name)
        state = _read(folder / "trainer_state.pt")
        if not isinstance(state, dict) or not {"step", "optimizers", "scalers", "torch_rng"} <= set(state) \
                or set(state["optimizers"]) != set(self.optimizers):
            raise CheckpointError("trainer_state.pt does not hold this run's optimizer state")
        return {"tensors": tensors, "state": state}

    def _restore(self) -> None:
        """Resume from the newest usable checkpoint; say which newer ones were skipped and why.
        Checkpoints that exist but none of which fits: refuse in one line (nothing is deleted)."""
        folders = self._checkpoint_folders()
        pointer = self.ckpt_dir / "latest.json"
        if not folders:
            if pointer.is_file():
                raise ValueError(f"{pointer}: names a checkpoint, but {self.ckpt_dir} holds no step_* folder; "
                                 "use another run.out_dir (--out) or move this one away")
            return
        skipped = []
        for folder in folders:
            try:
                checkpoint = self._read_checkpoint(folder)
            except CheckpointError as error:
                skipped.append(f"{folder.name}: {error}")
                continue
            self._apply(checkpoint)
            note = f" (skipped {'; '.join(skipped)})" if skipped else ""
            if self.rank == 0 and skipped:
                log.warning("resuming from %s at step %d, the newest usable checkpoint%s", folder, self.step, note)
            else:
                self._log(f"resumed from {folder} at step {self.step}")
            return
        raise ValueError(f"{self.ckpt_dir}: no usable checkpoint to resume from ({'; '.join(skipped)}); "
                         "use another run.out_dir (--out) or move these away")

    def _apply(self, checkpoint: dict) -> None:
        tensors, state = checkpoint["tensors"], checkpoint["state"]
        for name, net in self.objective.networks.items():
            net.load_state_dict(tensors[name], strict=True)
        self.ema.model.load_state_dict(tensors["ema"], strict=True)
        if self.pool is not None:
            self.pool.load_state_dict(tensors["pool"])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        for name, scaler in self.scalers.items():
            scaler.load_state_dict(state["scalers"][name])
        torch.set_rng_state(state["torch_rng"].cpu())
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        self.step = int(state["step"])

    # --- validation and export ----------------------------------------------------------------------

    def pipeline(self, description: str = "") -> SRPipeline:
        """The EMA network as a one-step (student) or T-step (teacher) pipeline, on CPU copies."""
        unet = copy.deepcopy(self.ema.model).float().cpu().eval()  # its recorded config comes along
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
        """Train to ``optim.steps`` (or ``stop_after`` more steps) from where the constructor resumed."""
        cfg = self.config
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

