"""One module per `kdcl` command: it parses the command's arguments and calls the layers below.

Adding a command: its module here, and one `Command` line in COMMANDS (kdcl/cli.py dispatches and builds
`kdcl --help` from this table). A command's module is imported only when it runs, so `kdcl train` with a
bad key never loads torch; keep this file free of imports from kdcl's other packages.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    module: str  # kdcl.commands.<module>
    function: str  # called with the command's arguments (argv after the command's name)
    usage: str  # its lines in `kdcl --help`


# fmt: off
COMMANDS = {
    "train": Command("train", "train",
                     "kdcl train [GROUP=OPTION ...] [KEY=VALUE ...]   train the pipeline (Hydra: -m to sweep, --cfg job, --help)\n"
                     "kdcl train ... --dry-run                        its stages, teacher stores, time and disk; nothing written"),
    "eval": Command("eval", "eval_command",
                    "kdcl eval RUN_DIR|CHECKPOINT [stage=NAME] [data=...] [KEY=VALUE ...]\n"
                    "                                                test a run's final model (or stage NAME) again\n"
                    "kdcl eval RUN_DIR cascade=true [cascade.max_drop=0.01]\n"
                    "                                                the student answers, the teacher takes what it is unsure of"),
    "export": Command("export", "export_command",
                      "kdcl export RUN_DIR|CHECKPOINT [stage=NAME] [format=safetensors|onnx] [out=DIR] [quantize=int8] [overwrite=true]\n"
                      "                                                the final model (or stage NAME) alone, for timm or ONNX Runtime"),
    "models": Command("models", "models",
                      "kdcl models [PATTERN] [--cost [data=...]]       timm model names and kdcl's aliases; --cost: params, MACs, latency"),
    "report": Command("report", "report_command",
                      "kdcl report DIR [baseline=KEY=VALUE]            compare the runs under DIR (a sweep): mean ± std, 95 % CI per\n"
                      "                                                setting; paired tests against the baseline setting"),
    "data": Command("data", "data_command",
                    "kdcl data prepare FOLDER OUT_DIR [size=256] [format=raw|jpeg] [workers=2] [overwrite=true]\n"
                    "                                                a streamable copy of an image folder (kdcl[stream]),\n"
                    "                                                decoded once: kdcl train data=prepared data.root=OUT_DIR"),
    "cache": Command("cache", "cache_command",
                     "kdcl cache list|clear [DIR]                     the stores shared by runs (teacher views, teachers' tests) in\n"
                     "                                                DIR (paths.cache_dir, default outputs/cache): show or free them"),
}
# fmt: on
