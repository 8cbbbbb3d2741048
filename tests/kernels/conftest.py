"""Kernel tests run the Triton kernels for real on a GPU and under Triton's CPU interpreter
elsewhere (CI). The interpreter is chosen when a kernel module is decorated, so the variable is
set here, before any test module imports rsd_deploy.kernels."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def kernel_device() -> torch.device:
    from rsd_deploy.kernels import window_attention as wa

    if wa.INTERPRET:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device and the kernel module was imported without TRITON_INTERPRET=1")
    return torch.device("cuda")


@pytest.fixture(scope="session")
def on_gpu(kernel_device) -> bool:
    return kernel_device.type == "cuda"


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm()).item()


@pytest.fixture(scope="session")
def rel():
    return rel_err
