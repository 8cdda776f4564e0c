"""`kdcl` entry point: subcommand dispatch to kdcl/commands/ (one module per command). `train` hands its
arguments to Hydra untouched."""

from __future__ import annotations

import sys

from kdcl import __version__
from kdcl.common.errors import KdclError, did_you_mean, exit_with

USAGE = f"""kdcl {__version__}: knowledge distillation with curriculum learning

usage:
  kdcl train [GROUP=OPTION ...] [KEY=VALUE ...]   train the pipeline (Hydra: -m to sweep, --cfg job, --help)
  kdcl eval RUN_DIR|CHECKPOINT [stage=NAME] [data=...] [KEY=VALUE ...]
                                                  test a run's final model (or stage NAME) again
  kdcl eval RUN_DIR cascade=true [cascade.max_drop=0.01]
                                                  the student answers, the teacher takes what it is unsure of
  kdcl export RUN_DIR|CHECKPOINT [stage=NAME] [format=safetensors|onnx] [out=DIR] [quantize=int8] [overwrite=true]
                                                  the final model (or stage NAME) alone, for timm or ONNX Runtime
  kdcl models [PATTERN] [--cost [data=...]]       timm model names and kdcl's aliases; --cost: params, MACs, latency
  kdcl report DIR [baseline=KEY=VALUE]            compare the runs under DIR (a sweep): mean ± std, 95 % CI per
                                                  setting; paired tests against the baseline setting
  kdcl cache list|clear [DIR]                     the stores shared by runs (teacher views, teachers' tests) in
                                                  DIR (paths.cache_dir, default outputs/cache): show or free them
  kdcl --version

examples:
  kdcl train
  kdcl train teacher=resnet50 student=mobilenet
  kdcl train -m distill.temperature=2,4,8 seed=0,1,2
  kdcl eval outputs/train/2026-11-22/17-40-12
  kdcl export outputs/train/2026-11-22/17-40-12 format=onnx quantize=int8
  kdcl models 'mobilenet*' --cost
  kdcl report outputs/multirun/2026-11-22/18-02-11
"""
COMMANDS = ("train", "eval", "export", "models", "report", "cache")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if argv[0] == "--version":
        print(f"kdcl {__version__}")
        return
    command, rest = argv[0], argv[1:]
    try:  # each command's module is imported only when it runs: `kdcl train` with a bad key never loads torch
        if command == "train":
            from kdcl.commands.train import train

            train(rest)
        elif command == "eval":
            from kdcl.commands.eval import eval_command

            eval_command(rest)
        elif command == "export":
            from kdcl.commands.export import export_command

            export_command(rest)
        elif command == "models":
            from kdcl.commands.models import models

            models(rest)
        elif command == "cache":
            from kdcl.commands.cache import cache_command

            cache_command(rest)
        elif command == "report":
            from kdcl.commands.report import report_command

            report_command(rest)
        else:
            raise KdclError(
                f"unknown command '{command}'{did_you_mean(command, COMMANDS)}; commands: {', '.join(COMMANDS)}"
            )
    except KdclError as err:
        exit_with(err)


if __name__ == "__main__":
    main()
