"""The environment collector every report records."""

from __future__ import annotations

import platform

import torch

from rsd_deploy.environment import PACKAGES, environment, versions


def test_versions_of_installed_packages_only():
    found = versions()
    assert found["python"] == platform.python_version() and torch.__version__.startswith(found["torch"].split("+")[0])
    assert set(found) <= {"python", *PACKAGES}
    assert versions(("no-such-distribution-here",)) == {"python": platform.python_version()}


def test_cpu_environment_says_device_threads_and_load():
    info = environment("cpu")
    assert info["device"].startswith("CPU (") and f"{info['cpu_count']} cores" in info["device"]
    assert info["torch_threads"] == torch.get_num_threads() and len(info["load_average"]) == 3
    assert "gpu" not in info and info["versions"]["torch"]
