"""How this process was launched: one of several ranks (torchrun, SLURM's srun, Lightning's DDP launcher),
a job of a parallel sweep (joblib), a submitit job that may be requeued. Read from the environment the
launchers set; kdcl starts no process itself (Lightning, torchrun, Hydra's launchers and submitit do).
"""

from __future__ import annotations

import os

from kdcl.common.errors import KdclError
from kdcl.common.ranks import launched_world_size, process_rank

RUN_DIR_KEY = "kdcl/run_dir"  # the key rank 0 publishes its run directory under, in torchrun's store
STORE_TIMEOUT_S = 300


def shared_run_dir(overrides: list[str], compose) -> list[str]:
    """The overrides every rank of a multi-process launch runs with: the same run directory for all.

    `hydra.run.dir` holds the start time, which ranks started a second apart would resolve differently;
    rank 0 resolves it and hands it to the others through torchrun's own store (what torch.distributed's
    rendezvous uses). Under another launcher (srun alone) the user names the directory. Returns the
    overrides unchanged when there is one process, or the directory is given already (as Lightning's
    own DDP launcher gives it to the workers it starts).
    """
    explicit = any(o.split("=", 1)[0] in ("hydra.run.dir", "resume") for o in overrides)
    if launched_world_size() <= 1 or explicit:
        return overrides
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        raise KdclError(
            f"{launched_world_size()} processes were started without torchrun: give them one run directory, "
            "e.g. hydra.run.dir=outputs/train/$SLURM_JOB_ID (or launch them with torchrun or hydra/launcher=slurm)"
        )
    from datetime import timedelta

    from torch.distributed import TCPStore

    store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                     timeout=timedelta(seconds=STORE_TIMEOUT_S))  # fmt: skip
    key = f"{RUN_DIR_KEY}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if process_rank() == 0:
        run_dir = str(compose(overrides, return_hydra_config=True).hydra.run.dir)
        store.set(key, run_dir)
    else:
        run_dir = store.get(key).decode()
    return [*overrides, f"hydra.run.dir={run_dir}"]


def parallel_jobs() -> int:
    """How many sweep jobs run at once on this machine: the joblib launcher's n_jobs, else 1."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return 1
    launcher = HydraConfig.get().launcher
    if "Joblib" not in str(launcher.get("_target_", "")):
        return 1
    n_jobs = int(launcher.get("n_jobs") or 1)
    return os.cpu_count() or 1 if n_jobs < 0 else n_jobs


def set_threads(threads: int | None) -> int:
    """speed.threads, or this job's share of the cores under a parallel launcher (joblib): n jobs with all
    cores each would fight over them (docs/benchmarks.md measures how much). Returns the thread count."""
    import torch

    share = threads or max(1, (os.cpu_count() or 1) // parallel_jobs())
    if threads or parallel_jobs() > 1:
        torch.set_num_threads(share)
    return torch.get_num_threads()
