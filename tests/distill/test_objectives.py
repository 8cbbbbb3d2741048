"""The tractable RSD generator loss has the gradient of the intractable one (envelope theorem).

Toy problem, float64: student x0 = tanh(y W) + b, x_t built with the ResShift forward process,
a nonlinear teacher f*(x) = sin(x A), and an affine fake model whose x0-MSE optimum phi*(theta) is
solved exactly by least squares. The RSD loss as model-spec.md writes it,
L(theta) = -min_phi mean[ -||f*||^2 + ||f_phi||^2 - 2 <f_phi - f*, x0> ], is differentiated by finite
differences (re-solving the argmin each time); the trainer's loss is differentiated by autograd at
phi = phi*(theta) held fixed. (When f_phi* is the exact conditional mean E[x0 | x_t], L equals
E||f_phi* - f*||^2; docs/distill.md has the two-line proof.)
"""

from __future__ import annotations

import math

import torch

from rsd_deploy.distill.objectives import rsd_generator_loss, rsd_objective

D, M, ETA, KAPPA = 4, 64, 0.3, 2.0


def _problem():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(M, D, generator=g, dtype=torch.float64)
    eps = torch.randn(M, D, generator=g, dtype=torch.float64)
    A = torch.randn(D, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    W = torch.randn(D, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    b = 0.1 * torch.randn(D, generator=g, dtype=torch.float64)
    return y, eps, A, W, b


def _x0_and_xt(W, b, y, eps):
    x0 = torch.tanh(y @ W) + b
    x_t = x0 + ETA * (y - x0) + KAPPA * math.sqrt(ETA) * eps
    return x0, x_t


def _augment(x):
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)


def _fake_optimum(x_t, x0):
    """argmin_phi mean ||[x_t, 1] phi - x0||^2: the fake model trained to convergence."""
    return torch.linalg.lstsq(_augment(x_t), x0).solution


def _rsd_loss(W, b, y, eps, A):
    """-min_phi J(theta, phi), the argmin solved exactly."""
    x0, x_t = _x0_and_xt(W, b, y, eps)
    f_fake, f_teacher = _augment(x_t) @ _fake_optimum(x_t, x0), torch.sin(x_t @ A)
    return -(-(f_teacher**2) + f_fake**2 - 2 * (f_fake - f_teacher) * x0).mean()


def _finite_difference(W, b, y, eps, A, h=1e-6):
    grads = []
    for param in (W, b):
        grad = torch.zeros_like(param)
        for index in range(param.numel()):
            delta = torch.zeros_like(param).flatten()
            delta[index] = h
            delta = delta.view_as(param)
            args_plus = (W + delta, b) if param is W else (W, b + delta)
            args_minus = (W - delta, b) if param is W else (W, b - delta)
            grad.view(-1)[index] = (_rsd_loss(*args_plus, y, eps, A) - _rsd_loss(*args_minus, y, eps, A)) / (2 * h)
        grads.append(grad)
    return grads


def test_generator_gradient_equals_finite_difference_through_the_argmin():
    y, eps, A, W, b = _problem()
    W.requires_grad_(True)
    b.requires_grad_(True)
    x0, x_t = _x0_and_xt(W, b, y, eps)
    phi = _fake_optimum(x_t.detach(), x0.detach())  # phi*(theta), then held fixed
    tractable = rsd_objective(x0, torch.sin(x_t @ A), _augment(x_t) @ phi).mean()
    grad_w, grad_b = torch.autograd.grad(tractable, (W, b), retain_graph=True)
    fd_w, fd_b = _finite_difference(W.detach(), b.detach(), y, eps, A)
    assert torch.allclose(grad_w, fd_w, rtol=1e-5, atol=1e-9)
    assert torch.allclose(grad_b, fd_b, rtol=1e-5, atol=1e-9)
    # the check can fail: differentiating ||f_phi - f*||^2 with phi frozen gives another gradient
    naive = ((_augment(x_t) @ phi - torch.sin(x_t @ A)) ** 2).mean()
    naive_w, _ = torch.autograd.grad(naive, (W, b))
    assert not torch.allclose(naive_w, fd_w, rtol=1e-2)


def test_normalisation_rescales_each_sample_without_adding_gradient():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    f_teacher, f_fake = torch.randn(2, 3, 2, 4, 4, generator=g, dtype=torch.float64)
    normalised = torch.autograd.grad(rsd_generator_loss(x0, f_teacher, f_fake).sum(), x0)[0]
    raw = torch.autograd.grad(rsd_objective(x0, f_teacher, f_fake).sum(), x0)[0]
    scale = (f_teacher - x0.detach()).abs().flatten(1).mean(dim=1).view(3, 1, 1, 1)
    assert torch.allclose(normalised, raw / scale)
    assert torch.allclose(raw, 2 * (f_fake - f_teacher) / x0[0].numel())  # networks constant here
