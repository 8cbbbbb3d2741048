"""What exported artifacts say about themselves, read without their weights.

An ``rsd-export`` graph carries everything a consumer needs besides its weights: the tensors
(names, channels, types, dim names ``[batch, C, 4*height, 4*width]``) and the ``rsd_deploy.*``
metadata (stage, precision, scale, prior scale ``kappa sqrt(eta_T)``, shape range, source
model, attention mode). This module reads that for one graph (:func:`read_stage_graph`), checks
that graphs belong together (:class:`GraphSet`: one export, and wired as :mod:`rsd_deploy.chain`
runs them) and reads a complete ``rsd-export`` folder into the graphs of one precision
(:func:`read_export`). Consumers: the Triton repository writer, ``rsd-upscale --artifacts``,
``rsd-bench --onnx-dir``::

    exported = read_export("rsd-export/", "fp16")       # INCOMPLETE marker / report.json checked
    exported.graphs.paths()                               # {"encoder": Path(...encoder.fp16.onnx), ...}
    exported.graphs.scale, exported.graphs.prior_scale    # what chain.upscale needs besides the graphs
    exported.graphs.check_fits(ShapeRange(...), "--tile 256")   # one line when the tiles do not fit
    exported.graphs.check_model(pipe)                     # one line when they are another model's
    exported.engine_files("tensorrt")                     # that precision's TensorRT 10/11 engines

Every problem is an :class:`ArtifactError` with one line naming the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rsd_deploy import chain
from rsd_deploy.chain import SIZE_MULTIPLE
from rsd_deploy.pipeline import SRPipeline

from .stages import CHAINED_STAGES, STAGE_NAMES, ShapeRange, StageSpec, TensorSpec, describe_stages

# ONNX TensorProto element types of stage tensors (they are floating point)
_ONNX_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16"}


class ArtifactError(ValueError):
    """An exported artifact that cannot be used as asked; one line naming the file."""


# --- one graph ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageGraph:
    """One exported stage graph: its tensors as :class:`TensorSpec` (read back from the dims
    rsd-export names), its ``rsd_deploy.*`` metadata and its external-data files."""

    path: Path
    stage: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    metadata: dict = field(compare=False)
    weight_files: tuple[Path, ...] = ()

    def recorded(self, key: str):
        """A metadata value rsd-export writes; graphs from before it did are refused."""
        if key not in self.metadata:
            raise ArtifactError(f"{self.path}: no rsd_deploy.{key} metadata (exported by an older rsd-export?); export the graphs again")
        return self.metadata[key]

    @property
    def precision(self) -> str:
        return self.recorded("precision")

    @property
    def scale(self) -> int:
        return int(self.recorded("scale"))

    @property
    def prior_scale(self) -> float:
        return float(self.recorded("prior_scale"))

    @property
    def attention(self) -> str:
        return self.metadata.get("attention", "reference")  # "plugin": TensorRT plugin nodes, TensorRT only

    @property
    def shape_range(self) -> ShapeRange:
        recorded = self.recorded("shape_range")
        try:
            return ShapeRange.from_json(recorded)
        except (KeyError, TypeError, ValueError) as error:
            raise ArtifactError(f"{self.path}: unreadable rsd_deploy.shape_range metadata {recorded} ({error})") from None

    def spec(self) -> StageSpec:
        """The stage description the graph was exported from (no torch module: it is served or run, not exported)."""
        return StageSpec(self.stage, f"read from {self.path.name}", self.inputs, self.outputs, builder=None)


def _tensor_spec(path: Path, value) -> TensorSpec:
    """The :class:`TensorSpec` a graph tensor was exported from: (batch, C, s*height, s*width)
    with the dim names :meth:`TensorSpec.symbolic_shape` wrote."""
    tensor_type = value.type.tensor_type
    if tensor_type.elem_type not in _ONNX_DTYPES:
        raise ArtifactError(f"{path}: tensor {value.name!r} has ONNX element type {tensor_type.elem_type}; stage tensors are floating point")
    dims = [d.dim_param or d.dim_value for d in tensor_type.shape.dim]
    if len(dims) != 4 or not isinstance(dims[1], int) or dims[1] <= 0 or not all(isinstance(d, str) for d in dims[2:]):
        raise ArtifactError(f"{path}: tensor {value.name!r} has dims {dims}; expected [batch, channels, height, width] as rsd-export writes them")
    scale = int(dims[2].split("*")[0]) if "*" in dims[2] and dims[2].split("*")[0].isdigit() else 1
    spec = TensorSpec(value.name, dims[1], scale, aligned=not dims[2].endswith("_lr"), dtype=_ONNX_DTYPES[tensor_type.elem_type])
    if spec.symbolic_shape() != dims:
        raise ArtifactError(f"{path}: tensor {value.name!r} has dims {dims}, not as rsd-export names them ({spec.symbolic_shape()})")
    return spec


def _check_chain_tensors(path: Path, stage: chain.Stage, inputs: list[str], outputs: list[str]) -> None:
    required = [name for name in stage.inputs if name not in stage.optional]
    if outputs != list(stage.outputs) or inputs not in (required, list(stage.inputs)):
        raise ArtifactError(f"{path}: expected the {stage.name} stage's tensors {[*stage.inputs, *stage.outputs]}, found {[*inputs, *outputs]}")


def read_stage_graph(path: str | Path, stage: str) -> StageGraph:
    """Read ``path`` (given for ``stage``), checking that it is that stage's graph from
    ``rsd-export`` (a chain stage with the chain's tensors) and that its weights files exist."""
    import onnx

    from .onnx_export import read_metadata

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file (the {stage} graph)")
    try:
        model = onnx.load(str(path), load_external_data=False)  # read once: a full-size generator is ~0.5 GB
    except Exception as error:
        raise ArtifactError(f"{path}: not a readable ONNX file ({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
    try:
        metadata = read_metadata(model)
    except ValueError as error:
        raise ArtifactError(f"{path}: unreadable rsd_deploy metadata ({error})") from None
    if metadata.get("stage") != stage:
        found = f"the {metadata['stage']} stage's graph" if "stage" in metadata else "not a graph written by rsd-export (no rsd_deploy.stage metadata)"
        raise ArtifactError(f"{path}: given for the {stage} stage, but it is {found}")
    chain_stage = next((s for s in chain.STAGES if s.name == stage), None)
    if chain_stage is not None:
        _check_chain_tensors(path, chain_stage, [v.name for v in model.graph.input], [v.name for v in model.graph.output])
    locations = {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    weight_files = tuple(path.parent / location for location in sorted(locations))
    missing = [p for p in weight_files if not p.is_file()]
    if missing:
        raise ArtifactError(f"{path}: its weights file {missing[0]} is missing")
    inputs = tuple(_tensor_spec(path, v) for v in model.graph.input)
    outputs = tuple(_tensor_spec(path, v) for v in model.graph.output)
    return StageGraph(path, stage, inputs, outputs, metadata, weight_files)


# --- graphs that belong together ----------------------------------------------------------------


@dataclass(frozen=True)
class GraphSet:
    """Graphs of one export (same model, precision, scale, prior scale and shape range) that
    wire together as the chain runs them. Make it with :meth:`of` (it checks)."""

    graphs: dict[str, StageGraph]  # stage -> graph

    _SAME = ("source", "precision", "scale", "prior_scale", "shape_range")

    @classmethod
    def of(cls, graphs: dict[str, StageGraph]) -> "GraphSet":
        if not graphs:
            raise ArtifactError("no graphs given")
        first = next(iter(graphs.values()))
        for key in cls._SAME:
            first.recorded(key)
            for graph in graphs.values():
                if graph.recorded(key) != first.metadata[key]:
                    raise ArtifactError(f"{graph.path}: rsd_deploy.{key} {graph.metadata[key]!r} differs from {first.path.name}'s "
                                        f"{first.metadata[key]!r}; give graphs of one export")
        ordered = {name: graphs[name] for name in STAGE_NAMES if name in graphs}
        ordered.update(graphs)  # stages this module does not know keep their place after
        graph_set = cls(ordered)
        if all(name in graphs for name in CHAINED_STAGES):
            graph_set._check_wiring()
        return graph_set

    @classmethod
    def read(cls, files: dict[str, str | Path]) -> "GraphSet":
        """:func:`read_stage_graph` of every ``stage -> .onnx`` file, then :meth:`of`."""
        return cls.of({stage: read_stage_graph(path, stage) for stage, path in files.items()})

    @property
    def first(self) -> StageGraph:
        return next(iter(self.graphs.values()))

    @property
    def precision(self) -> str:
        return self.first.precision

    @property
    def source(self) -> str:
        return self.first.recorded("source")

    @property
    def scale(self) -> int:
        return self.first.scale

    @property
    def prior_scale(self) -> float:
        return self.first.prior_scale

    @property
    def shape_range(self) -> ShapeRange:
        return self.first.shape_range

    def paths(self) -> dict[str, Path]:
        return {stage: graph.path for stage, graph in self.graphs.items()}

    def specs(self) -> dict[str, StageSpec]:
        return {stage: graph.spec() for stage, graph in self.graphs.items()}

    def _check_wiring(self) -> None:
        """Run :func:`rsd_deploy.chain.run` on shapes only (meta tensors, no arithmetic): every
        feed the chain makes must be what the graph it goes to declares, and the result the
        recorded scale."""
        size = SIZE_MULTIPLE
        generator = self.graphs[chain.GENERATOR.name]
        optional = {t.name: t for t in generator.inputs if t.name in chain.GENERATOR.optional}

        def stage(name: str, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
            graph = self.graphs[name]
            for spec in graph.inputs:
                want = tuple(spec.shape(1, size, size))
                if tuple(feeds[spec.name].shape) != want:
                    given = tuple(feeds[spec.name].shape)
                    raise ArtifactError(f"{graph.path}: the chain feeds {spec.name!r} {given[1]} channels at {given[2] // size}x the LR size "
                                        f"(from the other graphs of {self.first.path.parent}), the graph takes {want[1]} at {want[2] // size}x; "
                                        "give graphs of one export")
            (output,) = graph.outputs
            return torch.empty(output.shape(1, size, size), device="meta")

        lq = torch.empty(1, 3, size, size, device="meta")
        (z_y,) = self.graphs[chain.ENCODER.name].outputs
        eps = torch.empty(z_y.shape(1, size, size), device="meta")
        noise_map = torch.empty(next(iter(optional.values())).shape(1, size, size), device="meta") if optional else None
        tensors = chain.run(stage, lq, eps, noise_map, self.prior_scale, self.scale)
        (result,) = chain.STAGES[-1].outputs
        if tensors[result].shape[-1] != size * self.scale:
            last = self.graphs[chain.STAGES[-1].name]
            raise ArtifactError(f"{last.path}: {result!r} is {tensors[result].shape[-1] // size}x the LR size, the recorded scale is x{self.scale}")

    def check_fits(self, shape_range: ShapeRange, what: str) -> None:
        """One line unless every shape of ``shape_range`` (``what`` asks for it) is inside the
        range the graphs were exported for."""
        recorded = self.shape_range
        if not recorded.covers(shape_range):
            raise ArtifactError(f"{self.first.path}: exported for {recorded}; {what} ({shape_range}) must lie inside it")

    def check_model(self, pipe: SRPipeline) -> None:
        """One line unless these graphs are ``pipe``'s (its stage descriptions, scale and prior scale)."""
        self.check_stages(describe_stages(pipe), pipe.codec.scale, pipe.schedule.prior_scale)

    def check_stages(self, stages: dict[str, StageSpec], scale: int, prior_scale: float) -> None:
        """One line unless every graph has the tensors (name, channels, scale) of its stage in
        ``stages`` and the graphs have this scale and prior scale."""
        for name, graph in self.graphs.items():
            ours = [(t.name, t.channels, t.scale) for t in (*stages[name].inputs, *stages[name].outputs)]
            theirs = [(t.name, t.channels, t.scale) for t in (*graph.inputs, *graph.outputs)]
            if ours != theirs:
                raise ArtifactError(f"{graph.path}: the {name} graph's tensors (name, channels, scale) {theirs} differ from the model's {ours}")
        if self.scale != scale:
            raise ArtifactError(f"{self.first.path}: a x{self.scale} graph, the model is x{scale}")
        if not math.isclose(self.prior_scale, prior_scale, rel_tol=1e-6):
            raise ArtifactError(f"{self.first.path}: exported with prior scale {self.prior_scale:.6g}, the model's schedule has {prior_scale:.6g}")


# --- an rsd-export folder -----------------------------------------------------------------------


@dataclass(frozen=True)
class ExportedArtifacts:
    """The graphs of one precision from a complete ``rsd-export`` folder, and the engines its
    run built from them (report.json's records)."""

    folder: Path
    report: dict
    graphs: GraphSet
    engines: dict[str, dict]  # stage -> report.json engine record ("engine": path, "target": label, ...)

    def engine_files(self, flavour: str) -> dict[str, Path]:
        """Engines of one flavour (``tensorrt``, ``tensorrt-rtx``: :data:`.tensorrt.FLAVOURS`) by stage."""
        return {stage: Path(record["engine"]) for stage, record in self.engines.items() if record.get("flavour") == flavour}


def read_export(folder: str | Path, precision: str | None = None, stages: tuple[str, ...] | None = None) -> ExportedArtifacts:
    """The graphs of ``precision`` (default: the precision the run exported; ``fp32`` is always
    there too) in the complete ``rsd-export`` folder ``folder``: ``stages`` (default every stage
    the run exported), read, checked to be of one export and wired as the chain runs them."""
    from .workflow import OptionError, check_complete

    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: not a folder (expected an rsd-export output folder)")
    try:
        check_complete(folder)
    except OptionError as error:
        raise ArtifactError(str(error)) from None
    try:
        report = json.loads((folder / "report.json").read_text())
        listed = [(a["stage"], a["precision"], a["file"]) for a in report["artifacts"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ArtifactError(f"{folder / 'report.json'}: unreadable rsd-export report ({type(error).__name__}: {error})") from None
    precision = precision or report.get("precision", "fp32")
    files = {stage: folder / name for stage, graph_precision, name in listed if graph_precision == precision}
    if not files:
        have = sorted({p for _, p, _ in listed})
        raise ArtifactError(f"{folder}: no {precision} graphs (report.json lists {', '.join(have) or 'none'}); run rsd-export --precision {precision}")
    if stages is not None:
        missing = [s for s in stages if s not in files]
        if missing:
            raise ArtifactError(f"{folder}: no {precision} graph of the {', '.join(missing)} stage (it has {', '.join(files)}); "
                                f"run rsd-export --stages {','.join(stages)}")
        files = {stage: files[stage] for stage in stages}
    graphs = GraphSet.read(files)
    engines = {}
    for record in report.get("tensorrt", {}).get("engines", []):
        if record.get("precision") == precision and record.get("stage") in files and not record.get("error") and record.get("engine"):
            if Path(record["engine"]).is_file():
                engines[record["stage"]] = record
    return ExportedArtifacts(folder, report, graphs, engines)
