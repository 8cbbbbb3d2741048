"""What every command line shares: the model options, range parsing, help that shows defaults,
and the one-line error with exit code 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from ..checkpoints import CheckpointError, build_pipeline, default_pipeline, load_pipeline
from ..errors import one_line
from ..pipeline import SRPipeline
from ..presets import PRESETS

USAGE_ERROR = 2


class UsageError(ValueError):
    """A bad option or path, found before any work; printed as one line, exit code 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help shows every default (unless the help already names it) and keeps the description's
    line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``prog: error: message (see --help)``) with
    exit code 2, and whose --help shows every default (:class:`HelpFormatter`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {one_line(message)} (see --help)\n")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint``, ``--vae``, ``--config``, ``--preset``: one name per thing, for every command."""
    group = parser.add_argument_group("model (default: the embedded demo model, see rsd_deploy.checkpoints.default_pipeline)")
    group.add_argument("--checkpoint", type=Path, help="UNet checkpoint (official .pth, our .safetensors) or a saved pipeline folder")
    group.add_argument("--vae", type=Path, help="VQ-f4 autoencoder checkpoint (official autoencoder_vq_f4.pth), with an official UNet file")
    group.add_argument("--config", type=Path, help="official ResShift / SinSR / RSD YAML, when the weights alone are ambiguous")
    group.add_argument("--preset", choices=sorted(PRESETS), help="an architecture with seeded random weights (tests, demos)")


def load_model(args: argparse.Namespace, seed: int = 0) -> SRPipeline:
    """The pipeline the model options name (see :func:`add_model_arguments`)."""
    if args.checkpoint and args.preset:
        raise UsageError("--checkpoint and --preset are exclusive")
    if args.preset:
        if args.vae or args.config:
            raise UsageError("--vae / --config go with --checkpoint, not --preset")
        return build_pipeline(args.preset, seed=seed)
    if args.checkpoint:
        # a command's --steps picks the official schedule of a bare .pth (4: ResShift v3)
        return load_pipeline(args.checkpoint, args.vae, unet_config=args.config, steps=getattr(args, "steps", None))
    if args.vae or args.config:
        raise UsageError("--vae / --config need --checkpoint (the UNet) too")
    return default_pipeline()


def parse_range(text: str, option: str) -> tuple[int, int, int]:
    """``N`` or ``MIN,OPT,MAX`` -> (min, opt, max) integers."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{option}: expected N or MIN,OPT,MAX integers, got {text!r}") from None
    if len(values) == 1:
        return values[0], values[0], values[0]
    if len(values) != 3:
        raise UsageError(f"{option}: expected N or MIN,OPT,MAX, got {text!r}")
    return values[0], values[1], values[2]


def positive_ints(text: str) -> list[int]:
    """argparse type: comma-separated positive integers."""
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def run_command(prog: str, main: Callable[[], int], errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``main``; a usage or input error becomes ``prog: error: <one line>`` and exit code 2."""
    try:
        return main()
    except (UsageError, CheckpointError, *errors) as error:
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        return USAGE_ERROR

