"""Training objectives: the ResShift teacher, RSD, and the sibling distillations TAD-SR and TSD-SR.

An objective owns its networks and says, for one training step, which network is updated in
which order (:meth:`phases`) and what each update's loss is (:meth:`loss`). The trainer owns
everything else (optimizers, precision, accumulation, DDP, EMA, checkpoints).

Notation (docs/distill.md derives it): ``z0`` the HR latent, ``z_y`` the latent of the bicubic-
upsampled LR image, ``lq`` the LR image in [-1, 1], ``f*`` the frozen teacher, ``f_phi`` the fake
ResShift model, ``G`` the student; every network predicts x0 from ``x_t`` at integer step ``t``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from rsd_deploy.metrics import LPIPS
from rsd_deploy.models.unet import UNetModelSwin
from rsd_deploy.schedule import ResShiftSchedule

from .config import ObjectiveConfig
from .discriminator import FakeScoreWithHead, TimeAwareDiscriminator


@dataclass
class Batch:
    hr: torch.Tensor  # HR pixels in [-1, 1]
    lq: torch.Tensor  # LR pixels in [-1, 1]
    z0: torch.Tensor  # latent of the HR image
    z_y: torch.Tensor  # latent of the bicubic x4 upsampled LR image

    @property
    def size(self) -> int:
        return self.hr.shape[0]


@torch.no_grad()
def encode_batch(codec: nn.Module, hr: torch.Tensor, lr: torch.Tensor) -> Batch:
    """(HR, LR) in [0, 1] -> latents, as the pipeline's encode stage computes z_y."""
    hr, lq = hr * 2 - 1, lr * 2 - 1
    z_y = codec.encode(F.interpolate(lq, scale_factor=codec.scale, mode="bicubic"))
    return Batch(hr=hr, lq=lq, z0=codec.encode(hr), z_y=z_y)


def add_noise_channel(teacher: UNetModelSwin, channels: int = 1) -> UNetModelSwin:
    """A copy of ``teacher`` with ``channels`` zero-initialised extra inputs on the first conv (the
    RSD student's noise map): the copy computes exactly what the teacher does at initialisation."""
    config = {**teacher.config, "noise_channels": teacher.noise_channels + channels}
    student = UNetModelSwin(**config)
    state = teacher.state_dict()
    weight = state["input_blocks.0.0.weight"]
    extra = weight.new_zeros(weight.shape[0], channels, *weight.shape[2:])
    state["input_blocks.0.0.weight"] = torch.cat([weight, extra], dim=1)
    student.load_state_dict(state, strict=True)
    return student


def _randn(shape, like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen, device=like.device, dtype=like.dtype)


def _randint(high: int, size: int, like: torch.Tensor, gen: torch.Generator, low: int = 0) -> torch.Tensor:
    return torch.randint(low, high, (size,), generator=gen, device=like.device)


def _call(net: nn.Module, schedule: ResShiftSchedule, x_t, t, lq, **kwargs):
    return net(schedule.scale_input(x_t, t), t, lq=lq, **kwargs)


class TeacherObjective:
    """ResShift training: t ~ U{0..T-1}, x_t = q(x_t | z0, z_y), MSE between f(x_t) and z0."""

    def __init__(self, unet: UNetModelSwin, schedule: ResShiftSchedule):
        self.schedule = schedule
        self.networks = {"unet": unet}
        self.exported = "unet"

    def phases(self) -> list[str]:
        return ["unet"]

    def loss(self, phase: str, net: nn.Module, batch: Batch, gen: torch.Generator):
        z0 = batch.z0
        t = _randint(self.schedule.steps, batch.size, z0, gen)
        x_t = self.schedule.q_sample(z0, batch.z_y, t, _randn(z0.shape, z0, gen))
        loss = F.mse_loss(_call(net, self.schedule, x_t, t, batch.lq).float(), z0.float())
        return loss, {"mse": loss.item()}


def student_timesteps(steps: int, n: int) -> list[int]:
    """N timesteps of the T-step schedule the multistep student is trained at, T-1 first."""
    return sorted({steps - 1 - (steps * k) // n for k in range(n)}, reverse=True)


def rsd_objective(x0_hat: torch.Tensor, f_teacher: torch.Tensor, f_fake: torch.Tensor) -> torch.Tensor:
    """Per-sample tractable RSD loss  ||f*||^2 - ||f_phi||^2 + 2 <f_phi - f*, x0_hat>  (means over
    elements), with f* and f_phi evaluated at x_t = q(x_t | x0_hat, z_y).

    This is -J(theta, phi), J being the fake model's x0-MSE objective on the student's samples
    up to terms free of phi. At phi = argmin J its gradient in theta equals the gradient of
    E||f_phi*(theta)(x_t) - f*(x_t)||^2 (envelope theorem): autograd through x0_hat and through
    x_t (into the frozen networks' inputs) is all it needs, never a derivative of the argmin.
    """
    x0, ft, ff = x0_hat.float(), f_teacher.float(), f_fake.float()
    return (ft.square() - ff.square() + 2 * (ff - ft) * x0).flatten(1).mean(dim=1)


def rsd_generator_loss(x0_hat: torch.Tensor, f_teacher: torch.Tensor, f_fake: torch.Tensor) -> torch.Tensor:
    """:func:`rsd_objective` per sample, divided by the detached mean |f* - x0_hat| (DMD's
    normalisation: equal step sizes for easy and hard samples)."""
    scale = (f_teacher.float() - x0_hat.float()).abs().flatten(1).mean(dim=1).detach().clamp_min(1e-6)
    return rsd_objective(x0_hat, f_teacher, f_fake) / scale


def _nonsaturating(logits: torch.Tensor, real: bool) -> torch.Tensor:
    return F.softplus(-logits if real else logits).mean()


class DistillationObjective:
    """Shared machinery of the one-step students: the multistep input chain, LPIPS, the fake model."""

    def __init__(self, teacher: UNetModelSwin, schedule: ResShiftSchedule, codec: nn.Module, lpips: LPIPS | None, config: ObjectiveConfig):
        self.schedule = schedule
        self.codec = codec
        self.lpips = lpips
        self.config = config
        self.teacher = teacher.eval().requires_grad_(False)
        self.timesteps = student_timesteps(schedule.steps, config.multistep)
        self.student = add_noise_channel(teacher).train().requires_grad_(True)
        self.exported = "student"

    def student_x0(self, student: nn.Module, batch: Batch, gen: torch.Generator, grad: bool) -> torch.Tensor:
        """G's x0 at one of the N training timesteps t_n, n ~ U{0..N-1}.

        At t_0 = T-1 the input is the prior sample x_T, as at inference. At a later t_n it is
        q(x_{t_n} | z0, z_y), the real HR latent noised (``multistep_x_true``, as the release), or
        else the student's own x0 re-noised step by step from x_T without gradient (DMD2's backward
        simulation). One noise map per micro-batch, shared by every student call (as the release)."""
        z_y = batch.z_y
        n = int(torch.randint(len(self.timesteps), (1,), generator=gen, device=gen.device))
        noise_map = _randn((batch.size, self.student.noise_channels, *z_y.shape[2:]), z_y, gen)
        x = self.schedule.prior_sample(z_y, _randn(z_y.shape, z_y, gen))
        if n and self.config.multistep_x_true:
            t_n = self.schedule.timesteps(batch.size, self.timesteps[n], z_y.device)
            x = self.schedule.q_sample(batch.z0, z_y, t_n, _randn(z_y.shape, z_y, gen))
        else:
            for k in range(n):
                t = self.schedule.timesteps(batch.size, self.timesteps[k], z_y.device)
                with torch.no_grad():
                    x0 = _call(self.student, self.schedule, x, t, batch.lq, noise=noise_map)
                t_next = self.schedule.timesteps(batch.size, self.timesteps[k + 1], z_y.device)
                x = self.schedule.q_sample(x0, z_y, t_next, _randn(z_y.shape, z_y, gen))
        t = self.schedule.timesteps(batch.size, self.timesteps[n], z_y.device)
        with torch.set_grad_enabled(grad):
            return _call(student, self.schedule, x, t, batch.lq, noise=noise_map)

    def supervised_terms(self, x0_hat: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, dict]:
        loss = x0_hat.new_zeros((), dtype=torch.float32)
        metrics = {}
        if self.config.lpips_weight and self.lpips is not None:
            distance = self.lpips(self.codec.decode(x0_hat), batch.hr).mean()
            loss = loss + self.config.lpips_weight * distance
            metrics["lpips"] = distance.item()
        if self.config.mse_weight:
            mse = F.mse_loss(x0_hat.float(), batch.z0.float())
            loss = loss + self.config.mse_weight * mse
            metrics["mse"] = mse.item()
        return loss, metrics


class FakeModelObjective(DistillationObjective):
    """Objectives with a fake ResShift model f_phi (and its GAN head), trained on the student's
    noised outputs for ``fake_updates`` steps before each student step."""

    def __init__(self, teacher, schedule, codec, lpips, config: ObjectiveConfig):
        super().__init__(teacher, schedule, codec, lpips, config)
        self.fake = FakeScoreWithHead(copy.deepcopy(teacher)).train().requires_grad_(True)
        self.networks = {"student": self.student, "fake": self.fake}

    def phases(self) -> list[str]:
        return ["fake"] * self.config.fake_updates + ["student"]

    def fake_loss(self, fake: nn.Module, batch: Batch, gen: torch.Generator):
        with torch.no_grad():
            x0 = self.student_x0(self.student, batch, gen, grad=False)
        b, z_y = batch.size, batch.z_y
        t = _randint(self.schedule.steps, b, z_y, gen)
        x_fake = self.schedule.q_sample(x0, z_y, t, _randn(x0.shape, x0, gen))
        x_real = self.schedule.q_sample(batch.z0, z_y, t, _randn(x0.shape, x0, gen))
        # one forward over [student samples; real samples] (DDP wants one forward per backward)
        tt = torch.cat([t, t])
        pred, logits = fake(self.schedule.scale_input(torch.cat([x_fake, x_real]), tt), tt, torch.cat([batch.lq, batch.lq]))
        mse = F.mse_loss(pred[:b].float(), x0.float())
        d_loss = _nonsaturating(logits[:b], real=False) + _nonsaturating(logits[b:], real=True)
        loss = mse + self.config.gan_d_weight * d_loss
        return loss, {"fake_mse": mse.item(), "d_loss": d_loss.item()}


class RSDObjective(FakeModelObjective):
    """RSD: the tractable fake-vs-teacher loss + LPIPS + latent GAN, multistep-trained student."""

    def loss(self, phase: str, net: nn.Module, batch: Batch, gen: torch.Generator):
        if phase == "fake":
            return self.fake_loss(net, batch, gen)
        x0_hat = self.student_x0(net, batch, gen, grad=True)
        t = _randint(self.schedule.steps, batch.size, x0_hat, gen)
        x_t = self.schedule.q_sample(x0_hat, batch.z_y, t, _randn(x0_hat.shape, x0_hat, gen))
        self.fake.requires_grad_(False)  # gradients reach x_t, never the fake model's weights
        try:
            f_teacher = _call(self.teacher, self.schedule, x_t, t, batch.lq)
            f_fake, logits = self.fake(self.schedule.scale_input(x_t, t), t, batch.lq)
        finally:
            self.fake.requires_grad_(True)
        rsd = rsd_generator_loss(x0_hat, f_teacher, f_fake).mean()
        gan = _nonsaturating(logits, real=True)
        extra, metrics = self.supervised_terms(x0_hat, batch)
        loss = self.config.rsd_weight * rsd + self.config.gan_weight * gan + extra
        return loss, {"rsd": rsd.item(), "g_gan": gan.item(), **metrics}


def high_pass(x: torch.Tensor) -> torch.Tensor:
    """x minus its 3x3 box blur (replicate borders): the detail TAD-SR's distillation stresses."""
    return x - F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


class TADSRObjective(DistillationObjective):
    """TAD-SR: high-frequency enhanced score distillation at small t + time-aware discriminator.

    The student's x0 is re-noised to a small t <= tad_max_t, the frozen teacher denoises it, and
    the student is pulled towards that estimate, its high-pass part weighted extra. The
    discriminator reuses the frozen teacher's encoder at the sampled t (explicit t conditioning).
    """

    def __init__(self, teacher, schedule, codec, lpips, config: ObjectiveConfig):
        super().__init__(teacher, schedule, codec, lpips, config)
        self.disc = TimeAwareDiscriminator(teacher).train()
        self.networks = {"student": self.student, "disc": self.disc}

    def phases(self) -> list[str]:
        return ["disc"] * self.config.fake_updates + ["student"]

    def _logits(self, disc: nn.Module, x0: torch.Tensor, batch: Batch, t: torch.Tensor, gen) -> torch.Tensor:
        x_t = self.schedule.q_sample(x0, batch.z_y, t, _randn(x0.shape, x0, gen))
        return disc(self.teacher, self.schedule.scale_input(x_t, t), t, batch.lq)

    def loss(self, phase: str, net: nn.Module, batch: Batch, gen: torch.Generator):
        t = _randint(self.schedule.steps, batch.size, batch.z0, gen)
        if phase == "disc":
            with torch.no_grad():
                x0 = self.student_x0(self.student, batch, gen, grad=False)
            # one forward over [student; real] so the DDP-wrapped heads see one pass per backward
            both = Batch(torch.cat([batch.hr] * 2), torch.cat([batch.lq] * 2), None, torch.cat([batch.z_y] * 2))
            logits = self._logits(net, torch.cat([x0, batch.z0]), both, torch.cat([t, t]), gen)
            d_loss = _nonsaturating(logits[: batch.size], real=False) + _nonsaturating(logits[batch.size :], real=True)
            return self.config.gan_d_weight * d_loss, {"d_loss": d_loss.item()}
        x0_hat = self.student_x0(net, batch, gen, grad=True)
        t_small = _randint(self.config.tad_max_t + 1, batch.size, x0_hat, gen)
        with torch.no_grad():
            x_small = self.schedule.q_sample(x0_hat, batch.z_y, t_small, _randn(x0_hat.shape, x0_hat, gen))
            target = _call(self.teacher, self.schedule, x_small, t_small, batch.lq)
        diff = (x0_hat - target).float()
        distill = diff.square().mean() + self.config.tad_hf_weight * high_pass(diff).square().mean()
        gan = _nonsaturating(self._logits(self.disc, x0_hat, batch, t, gen), real=True)
        extra, metrics = self.supervised_terms(x0_hat, batch)
        loss = self.config.rsd_weight * distill + self.config.gan_weight * gan + extra
        return loss, {"hf_sd": distill.item(), "g_gan": gan.item(), **metrics}


class TSDSRObjective(FakeModelObjective):
    """TSD-SR: target score distillation on the ResShift teacher.

    Gradient on x0_hat (x0-prediction form, per-sample normalised as in RSD):
    ``0.7 (f_phi - f*)(x_t) + 0.3 (f*(x_t) - f*(x_t^HR))`` with x_t = q(x0_hat) and x_t^HR = q(z0)
    sharing eps; distribution-aware sampling averages it over ``tsd_nearby`` adjacent timesteps.
    """

    @torch.no_grad()
    def target_score_gradient(self, x0_hat: torch.Tensor, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        cfg = self.config
        b = batch.size
        base = _randint(self.schedule.steps, b, x0_hat, gen)
        gradient = torch.zeros_like(x0_hat, dtype=torch.float32)
        scale = torch.zeros(b, device=x0_hat.device)
        for offset in range(cfg.tsd_nearby):
            t = (base - offset).clamp_min(0)
            eps = _randn(x0_hat.shape, x0_hat, gen)
            x_t = self.schedule.q_sample(x0_hat, batch.z_y, t, eps)
            x_hr = self.schedule.q_sample(batch.z0, batch.z_y, t, eps)
            f_teacher = _call(self.teacher, self.schedule, x_t, t, batch.lq).float()
            f_fake, _ = self.fake(self.schedule.scale_input(x_t, t), t, batch.lq)
            f_hr = _call(self.teacher, self.schedule, x_hr, t, batch.lq).float()
            gradient += cfg.tsd_vsd_weight * (f_fake.float() - f_teacher) + cfg.tsd_target_weight * (f_teacher - f_hr)
            scale += (f_teacher - x0_hat.float()).abs().flatten(1).mean(dim=1)
        return gradient / scale.clamp_min(1e-6).view(-1, *[1] * (x0_hat.dim() - 1))

    def loss(self, phase: str, net: nn.Module, batch: Batch, gen: torch.Generator):
        if phase == "fake":
            return self.fake_loss(net, batch, gen)
        x0_hat = self.student_x0(net, batch, gen, grad=True)
        gradient = self.target_score_gradient(x0_hat.detach(), batch, gen)
        # <x0_hat, sg(g)> has gradient g in x0_hat (DMD's surrogate, element mean as in RSD)
        tsd = (x0_hat.float() * gradient).flatten(1).mean(dim=1).mean()
        gan = x0_hat.new_zeros((), dtype=torch.float32)
        if self.config.gan_weight:
            t = _randint(self.schedule.steps, batch.size, x0_hat, gen)
            x_t = self.schedule.q_sample(x0_hat, batch.z_y, t, _randn(x0_hat.shape, x0_hat, gen))
            self.fake.requires_grad_(False)
            try:
                gan = _nonsaturating(self.fake(self.schedule.scale_input(x_t, t), t, batch.lq)[1], real=True)
            finally:
                self.fake.requires_grad_(True)
        extra, metrics = self.supervised_terms(x0_hat, batch)
        loss = self.config.rsd_weight * tsd + self.config.gan_weight * gan + extra
        return loss, {"tsd": tsd.item(), "g_gan": gan.item(), **metrics}


OBJECTIVES = {"rsd": RSDObjective, "tadsr": TADSRObjective, "tsdsr": TSDSRObjective}
