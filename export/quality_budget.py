"""Accuracy-budgeted INT8: keep the fewest layer groups in high precision until the whole chain
meets a PSNR budget against the fp32 PyTorch pipeline (``rsd-export --quality-budget-psnr DB``).

The search never calibrates again: the graphs are calibrated once (the plain INT8 export), and a
group is put back in high precision by removing the Q/DQ pairs in front of its compute nodes in
the calibrated graph (the fp32 weights are still there, behind their own Q/DQ).

1. **Groups** are the quantized compute nodes of one module block, read from their names: a UNet
   level block (``unet/input_blocks.4``, ``unet/middle_block``, ``unet/output_blocks.7``...), a VQ
   encoder / decoder block (``decoder/up_blocks.1``, ``encoder/mid_block``...), the latent
   projections.
2. **Sensitivity:** for each group, the chain's PSNR on the held-out crops with only that group
   back in high precision. Only the stages from the group's stage on are run again; earlier
   stages' outputs are reused, so a decoder group costs one decoder run.
3. **Selection:** groups in order of PSNR gain; the shortest prefix that meets the target, found
   by bisection over the prefix length (fewer kept groups never score higher in practice; the
   chosen prefix is measured, so the result is what was measured).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import onnx
import torch

from rsd_deploy import chain
from rsd_deploy.metrics import psnr

from .runners.onnxruntime_runner import onnxruntime_session_for_model

ROOTS = ("unet", "encoder", "decoder", "quant_conv", "post_quant_conv")  # module roots in exported node names


def group_of(node_name: str) -> str | None:
    """``/unet/input_blocks.4/input_blocks.4.0/in_layers/...`` -> ``unet/input_blocks.4``;
    ``/unet/Concat_2`` (between blocks) -> ``unet``."""
    parts = [p for p in node_name.split("/") if p]
    for index, part in enumerate(parts):
        if part in ROOTS:
            # a block under the root (its name is followed by more path), else the root's own glue
            in_block = not part.endswith("quant_conv") and index + 2 < len(parts)
            return "/".join(parts[index : index + (2 if in_block else 1)])
    return None


def _qdq_source(model_producers: dict, tensor: str) -> str | None:
    """The float tensor behind ``tensor`` when it is DequantizeLinear(QuantizeLinear(x)), else None."""
    dq = model_producers.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = model_producers.get(dq.input[0])
    return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None


def quantized_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Group name -> the names of its compute nodes that read a Q/DQ pair."""
    producers = {out: node for node in model.graph.node for out in node.output}
    groups: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if any(_qdq_source(producers, name) for name in node.input):
            group = group_of(node.name)
            if group is not None:
                groups.setdefault(group, []).append(node.name)
    return groups


def keep_in_high_precision(model: onnx.ModelProto, groups: set[str]) -> onnx.ModelProto:
    """A copy of the calibrated ``model`` whose nodes in ``groups`` read their float inputs
    directly; Q/DQ pairs nothing reads any more are dropped."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") and group_of(node.name) in groups:
            for index, name in enumerate(node.input):
                source = _qdq_source(producers, name)
                if source is not None:
                    node.input[index] = source
    _drop_dead_nodes(model)
    return model


def _drop_dead_nodes(model: onnx.ModelProto) -> None:
    graph = model.graph
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(node.input)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    used = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)


@dataclass
class BudgetResult:
    target_psnr_db: float
    achieved_psnr_db: float
    plain_psnr_db: float  # every group quantized
    kept: list[str]  # groups in high precision, most sensitive first
    quantized: int  # groups still INT8
    groups: int
    evaluations: int
    seconds: float
    sensitivity: dict[str, float] = field(default_factory=dict)  # group -> chain PSNR with it alone kept

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


class ChainScorer:
    """PSNR of the chain over ONNX Runtime sessions of (variant) stage graphs against a fixed
    reference, reusing the outputs of stages that did not change."""

    def __init__(self, models: dict[str, onnx.ModelProto], lr: torch.Tensor, eps: torch.Tensor, noise_map: torch.Tensor | None,
                 prior_scale: float, scale: int, reference: torch.Tensor):
        self.lr, self.eps, self.noise_map = lr, eps, noise_map
        self.prior_scale, self.scale, self.reference = prior_scale, scale, reference
        self.evaluations = 0
        self.base = {stage: self._session(model) for stage, model in models.items()}
        self.base_tensors = self._tensors(self.base)

    @staticmethod
    def _session(model: onnx.ModelProto):
        return onnxruntime_session_for_model(model, threads=torch.get_num_threads())

    def _tensors(self, sessions: dict, reuse: dict[str, torch.Tensor] | None = None, first: str = chain.ENCODER.name) -> dict[str, torch.Tensor]:
        def stage(name: str, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
            if reuse is not None and chain.STAGE_NAMES.index(name) < chain.STAGE_NAMES.index(first):
                return reuse[chain.STAGES[chain.STAGE_NAMES.index(name)].outputs[0]]
            session = sessions[name]
            arrays = {i.name: feeds[i.name].numpy() for i in session.get_inputs()}
            return torch.from_numpy(session.run(None, arrays)[0])

        lq = chain.pad_to(chain.to_model_range(self.lr), self.eps.shape[-2], self.eps.shape[-1])
        self.evaluations += 1
        return chain.run(stage, lq, self.eps, self.noise_map, self.prior_scale, self.scale)

    def _psnr(self, tensors: dict[str, torch.Tensor]) -> float:
        height, width = self.lr.shape[-2:]
        return psnr(chain.to_image_range(chain.crop(tensors["hr"], height, width, self.scale)), self.reference)

    def base_psnr(self) -> float:
        return self._psnr(self.base_tensors)

    def psnr_with(self, variants: dict[str, onnx.ModelProto]) -> float:
        """The chain's PSNR with some stages' graphs replaced."""
        first = min(variants, key=chain.STAGE_NAMES.index)
        sessions = {**self.base, **{stage: self._session(model) for stage, model in variants.items()}}
        return self._psnr(self._tensors(sessions, self.base_tensors, first))


def search(models: dict[str, onnx.ModelProto], scorer: ChainScorer, target_db: float, log: Callable[[str], None] = print) -> tuple[BudgetResult, dict[str, onnx.ModelProto]]:
    """The budgeted graphs (stage -> model) and what the search found (see the module docstring)."""
    started = time.perf_counter()
    stage_groups = {stage: quantized_groups(model) for stage, model in models.items()}
    owner = {group: stage for stage, groups in stage_groups.items() for group in groups}
    plain = scorer.base_psnr()
    log(f"  quality budget: every group quantized {plain:.2f} dB vs fp32, target {target_db:.2f} dB; {len(owner)} layer groups")

    def variants(kept: set[str]) -> dict[str, onnx.ModelProto]:
        stages = {owner[g] for g in kept}
        return {stage: keep_in_high_precision(models[stage], kept) for stage in stages}

    if plain >= target_db:
        result = BudgetResult(target_db, plain, plain, [], len(owner), len(owner), scorer.evaluations, time.perf_counter() - started)
        return result, dict(models)
    sensitivity = {}
    for index, group in enumerate(sorted(owner, key=lambda g: (chain.STAGE_NAMES.index(owner[g]), g)), 1):
        sensitivity[group] = scorer.psnr_with(variants({group}))
        log(f"    [{index}/{len(owner)}] {group}: {sensitivity[group]:.2f} dB with it in high precision")
    order = sorted(sensitivity, key=lambda g: -sensitivity[g])
    scores = {0: plain}

    def score(count: int) -> float:
        if count not in scores:
            scores[count] = scorer.psnr_with(variants(set(order[:count])))
            log(f"    {count} group(s) in high precision: {scores[count]:.2f} dB")
        return scores[count]

    low, high = 0, len(order)  # score(low) misses the target; score(high) is the float graph's
    while high - low > 1:
        middle = (low + high) // 2
        if score(middle) >= target_db:
            high = middle
        else:
            low = middle
    kept = order[:high]
    achieved = score(high)
    result = BudgetResult(target_db, achieved, plain, kept, len(owner) - len(kept), len(owner), scorer.evaluations,
                          time.perf_counter() - started, sensitivity)
    return result, {stage: variants(set(kept)).get(stage, model) for stage, model in models.items()}
