"""`kdcl` entry point: subcommand dispatch to kdcl/commands/ (one module per command). `train` hands its
arguments to Hydra untouched."""

from __future__ import annotations

import importlib
import sys
import textwrap

from kdcl import __version__
from kdcl.commands import COMMANDS
from kdcl.common.errors import KdclError, did_you_mean, exit_with
from kdcl.common.gc_pause import pause_for_start_up

USAGE = f"""kdcl {__version__}: knowledge distillation with curriculum learning

usage:
{textwrap.indent(chr(10).join(c.usage for c in COMMANDS.values()), "  ")}
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


def main(argv: list[str] | None = None) -> None:
    fresh_process = argv is None  # the `kdcl` command itself; tests call main(argv) inside their own process
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if argv[0] == "--version":
        print(f"kdcl {__version__}")
        return
    name, rest = argv[0], argv[1:]
    if fresh_process and name == "train":
        pause_for_start_up()
    try:
        if name not in COMMANDS:
            raise KdclError(f"unknown command '{name}'{did_you_mean(name, COMMANDS)}; commands: {', '.join(COMMANDS)}")
        command = COMMANDS[name]
        # imported only when it runs: `kdcl train` with a bad key never loads torch
        run = getattr(importlib.import_module(f"kdcl.commands.{command.module}"), command.function)
        run(rest)
    except KdclError as err:
        exit_with(err)


if __name__ == "__main__":
    main()
