"""The precisions ``rsd-export`` writes, as one table: adding one touches this file only.

Each row says how its graph is made from the fp32 one (``convert``: fp32 path, output path,
calibration inputs, the export's options -> a summary of what the converter did; none for fp32
itself), how far a TensorRT engine may stray from ONNX Runtime running the same graph, and the
builder optimization level its engines are built at.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .precision import convert_fp16, quantize_qdq

Converter = Callable[[Path, Path, dict[str, np.ndarray], object], dict]


@dataclass(frozen=True)
class Precision:
    name: str
    summary: str
    convert: Converter | None  # None: the exported fp32 graph itself
    engine_tolerance: float  # engine vs ONNX Runtime on the same graph (median excess error)
    opt_level: int  # TensorRT builder optimization level
    calibrated: bool = False  # needs calibration images (and reports quality on held-out ones)
    compute_capabilities: tuple[str, ...] | None = None  # TensorRT-RTX ahead-of-time targets, when not every GPU has the types


def _fp16(fp32: Path, out: Path, calibration: dict[str, np.ndarray], options) -> dict:
    # AutoCast runs the fp32 graph once to find values that overflow fp16: one batch is enough
    return convert_fp16(fp32, out, {name: array[:1] for name, array in calibration.items()})


def _int8(fp32: Path, out: Path, calibration: dict[str, np.ndarray], options) -> dict:
    return quantize_qdq(fp32, out, calibration, "int8", options.int8_method, options.int8_high_precision)


def _fp8(fp32: Path, out: Path, calibration: dict[str, np.ndarray], options) -> dict:
    # FP8's range is set by the largest value (max calibration), as ModelOpt and TensorRT do for E4M3
    return quantize_qdq(fp32, out, calibration, "fp8", "max", options.int8_high_precision)


PRECISIONS = {
    precision.name: precision
    for precision in (
        Precision("fp32", "float32, as exported", None, engine_tolerance=1e-3, opt_level=3),
        Precision("fp16", "fp16 with fp32 islands (ModelOpt AutoCast)", _fp16, engine_tolerance=2e-2, opt_level=3, calibrated=True),
        # NVIDIA's diffusion demo builds INT8 engines at optimization level 4
        Precision("int8", "INT8 Q/DQ, calibrated (ModelOpt)", _int8, engine_tolerance=1e-1, opt_level=4, calibrated=True),
        # FP8 tensor cores: Ada (sm89), Hopper (TensorRT 10/11) and Blackwell; TensorRT-RTX refuses
        # sm86 ("the model contains HW-specific datatypes: fp8_e4m3")
        Precision("fp8", "FP8 E4M3 Q/DQ, calibrated (ModelOpt)", _fp8, engine_tolerance=2e-1, opt_level=4, calibrated=True,
                  compute_capabilities=("sm89", "sm120")),
    )
}
