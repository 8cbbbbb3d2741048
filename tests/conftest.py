"""Shared fixtures: tiny pipelines with seeded weights, built once per test session."""

from __future__ import annotations

import pytest
import torch

from rsd_deploy.checkpoints import build_pipeline


@pytest.fixture(scope="session")
def tiny_rsd():
    """The tiny RSD student (7-channel first conv) with the tiny VQ codec, seeded weights."""
    return build_pipeline("tiny-rsd", seed=0)


@pytest.fixture(scope="session")
def tiny_teacher():
    """The tiny 15-step teacher (6-channel first conv), seeded weights."""
    return build_pipeline("tiny", seed=1)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


def pytest_collection_modifyitems(config, items):
    """Tests marked slow (minutes on a 2-core CPU) run only with RSD_RUN_SLOW=1."""
    import os

    if os.environ.get("RSD_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow on a 2-core CPU; set RSD_RUN_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
