"""``rsd-distill``: train a ResShift teacher or distill a one-step student.

    rsd-distill teacher --base demo --out runs/teacher
    rsd-distill student --base demo --teacher runs/teacher/final --out runs/rsd
    rsd-distill student --base rsd-official --config my.yaml        # the released recipe, one GPU
    torchrun --nproc_per_node 4 -m rsd_deploy.distill.cli student --base rsd-official --config my.yaml
    rsd-distill student --base rsd-official --config my.yaml --init logs/RSD/ckpts/model_1000.pth

A killed run resumes from its newest complete checkpoint when started again with the same
``--out``. The finished network (EMA weights) is written as a pipeline directory to ``<out>/final``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .config import BASES, build_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rsd-distill", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["teacher", "student"], help="train the ResShift teacher or distill the student")
    parser.add_argument("--base", choices=sorted(BASES), default="demo", help="starting config: the released recipe or its CPU-scale demo (default: demo)")
    parser.add_argument("--config", help="YAML/JSON file overriding the base config")
    parser.add_argument("--out", help="run directory (config run.out_dir)")
    parser.add_argument("--teacher", help="teacher checkpoint for the student stage (config model.teacher)")
    parser.add_argument("--init", help="an RSD training checkpoint model_N.pth to continue from (config model.init)")
    parser.add_argument("--method", choices=["rsd", "tadsr", "tsdsr"], help="distillation objective (config objective.method)")
    parser.add_argument("--steps", type=int, help="optimizer steps (config optim.steps)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="autocast precision (config run.precision)")
    parser.add_argument("--description", default="", help="description stored with the exported pipeline")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.steps is not None and args.steps < 1:
        print(f"rsd-distill: --steps must be at least 1, got {args.steps}", file=sys.stderr)
        return 2
    overrides: dict = {}
    for value, section, key in [(args.out, "run", "out_dir"), (args.teacher, "model", "teacher"), (args.init, "model", "init"),
                                (args.method, "objective", "method"), (args.steps, "optim", "steps"), (args.precision, "run", "precision")]:
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    try:
        config = build_config(args.base, args.stage, args.config, overrides)
    except ValueError as error:
        print(f"rsd-distill: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        import json

        print(json.dumps(config.to_dict(), indent=2))
        return 0
    from .trainer import Trainer

    try:
        trainer = Trainer(config)  # checks the teacher, codec and image folders before any training
    except (ValueError, RuntimeError) as error:
        print(f"rsd-distill: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    trainer.fit()
    if trainer.rank == 0:
        what = "ResShift teacher" if args.stage == "teacher" else f"{config.objective.method.upper()} one-step student"
        trainer.export(f"{config.run.out_dir}/final", args.description or f"{what} trained by rsd-distill ({args.base} base config)")
        logging.info("wrote %s/final", config.run.out_dir)
    trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
