"""What a measurement ran on: device, package versions, threads and load. One collector for every
report that records it (``rsd-bench``, the kernel benchmark, ``rsd-export``'s report)."""

from __future__ import annotations

import os
import platform
from importlib import metadata

import torch

# Distributions whose versions change a number we report; listed when installed. Both ONNX
# Runtime wheels are named: either can provide `import onnxruntime`.
PACKAGES = ("torch", "numpy", "triton", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "onnxslim", "nvidia-modelopt",
            "polygraphy", "tensorrt", "tensorrt-rtx", "openvino")


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Python and every installed distribution of ``packages`` (read from their metadata,
    nothing is imported)."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu(device: torch.device) -> dict:
    """Name, compute capability, SM count and memory of a CUDA device."""
    props = torch.cuda.get_device_properties(device)
    return {"name": props.name, "sm": f"sm{props.major}{props.minor}", "sms": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1), "cuda_runtime": torch.version.cuda}


def describe_device(device: torch.device) -> str:
    """One line: the GPU's name, or the CPU's model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({cpu_name()}, {os.cpu_count()} cores)"


def environment(device: torch.device | str) -> dict:
    """Device, versions, platform, CPU threads and the load average when it was called (other
    processes on a shared machine change CPU timings)."""
    device = torch.device(device)
    info = {
        "device": describe_device(device),
        "versions": versions(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = gpu(device)
    return info
