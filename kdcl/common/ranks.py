"""Which process of a multi-process launch this is (torchrun, SLURM's srun, Lightning's DDP launcher): the one
reader of the rank and the launched world size for all of kdcl, from the environment the launchers set."""

from __future__ import annotations

import os
import sys

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")  # what Lightning's rank reads


def process_rank() -> int:
    """This process's global rank as Lightning reads it from the environment (0 when launched alone).
    Before Lightning is imported and with no launcher's rank variable set, the rank is 0: the answer
    without importing Lightning (seconds), so a bad-input error at start-up stays quick."""
    if "lightning_fabric" not in sys.modules and not any(os.environ.get(v) for v in RANK_VARIABLES):
        return 0
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    return int(rank_zero_only.rank)


def launched_world_size() -> int:
    """How many processes an outside launcher started with this command line (torchrun, srun)."""
    for name in ("WORLD_SIZE", "SLURM_NTASKS"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1
