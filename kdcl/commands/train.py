"""`kdcl train`: every sweep point checked before Hydra creates anything, then Hydra runs the task (one
run, or one job of a sweep). Top-level imports stay light: a bad option or key is refused before torch loads."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import sys
import time
from pathlib import Path

from kdcl.common.errors import KdclError, did_you_mean, exit_with, io_failure
from kdcl.common.gc_pause import frozen_imports, resume_after_start_up
from kdcl.common.timing import StartUp, load_frameworks
from kdcl.config.compose import all_keys, compose, config_dir, config_groups
from kdcl.config.upgrade import check_renamed

MAX_CHECKED_SWEEP_POINTS = 512  # composing one point takes ~0.15 s
STARTED = time.perf_counter()  # when `train` began: a job's start-up (imports, checks) counts from it
DRY_RUN = "--dry-run"
NO_DOWNLOAD = "data.download=false"  # what a dry run adds to every point
JOBS_RUN: list[Path] = []  # this process's jobs: the first one's timing includes the process's start-up
IMPORTS_S = 0.0  # of that start-up, the seconds spent loading torch, timm and Lightning


# what `resume=` may change: the remedies for a diverged stage, which apply from the stopped stage on
RESUME_MAY_CHANGE = ("optim.lr", "trainer.gradient_clip_val", "distill.temperature")


def precheck(overrides: list[str]) -> list[tuple[list[str], object]]:
    """Before Hydra creates anything: unknown options and keys, and bad values of every sweep point (up to
    MAX_CHECKED_SWEEP_POINTS). Returns each point's overrides and composed config."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise KdclError(f"cannot parse the overrides: {str(exc).splitlines()[0]}; write them as key=value") from None
    groups = config_groups()
    fixed, axes, group_overrides = [], [], []
    for o in parsed:
        key = o.key_or_group
        if key in ("hydra.run.dir", "hydra.sweep.dir"):
            from kdcl.run.lock import holder_of, in_use
            from kdcl.run.manifest import Manifest

            target = Path(o.get_value_element_as_str())
            if holder_of(target) is not None:
                raise in_use(target.resolve())
            if Manifest.exists(target) or any(target.glob("*/run.json")):
                raise KdclError(f"{key}={target} already holds kdcl runs; choose a new directory or resume={target}")
        if key == "hydra" or key.startswith("hydra."):
            continue
        if o.type == OverrideType.DEL:
            fixed.append(o.input_line)
            continue
        try:
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        except Exception:  # glob sweeps and the like: left to Hydra and the per-job check
            continue
        if key in groups:
            for v in group_options(o, values):
                if v not in groups[key] and v != "null":
                    raise KdclError(
                        f"{key}={v}: there is no '{v}' in the {key} group{did_you_mean(v, groups[key])}; "
                        f"options: {', '.join(groups[key])}"
                    )
        points = [f"{o.get_key_element()}={v}" for v in values] or [o.input_line]
        axes.append(points)
        if key in groups:
            group_overrides.append(points[0])
    # every point of a sweep is checked now, so a bad value cannot stop a sweep half-way; the torch-free
    # checks of every point come first, so a typo anywhere in a sweep is answered before torch loads
    from kdcl.run.validate import check_config, check_values_only

    combos = list(itertools.islice(itertools.product(*axes), MAX_CHECKED_SWEEP_POINTS))
    points = []
    for combo in combos:  # a bad point is answered as soon as it is composed
        points.append(compose_point(fixed + list(combo), group_overrides))
        check_values_only(points[-1])
    global IMPORTS_S
    with frozen_imports():
        IMPORTS_S += load_frameworks()  # torch, timm and Lightning: timed apart from the checks
    for cfg in points:
        check_config(cfg)
    return [(fixed + list(combo), cfg) for combo, cfg in zip(combos, points, strict=True)]


def group_options(override, values: list[str]) -> list[str]:
    """The options an override picks from a group: `logger=[tensorboard,mlflow]` picks two."""
    value = override.value()
    return [str(v) for v in value] if isinstance(value, list) else values


def compose_point(overrides: list[str], group_overrides: list[str]):
    """One sweep point's config, or one line naming what Hydra refused."""
    from hydra.errors import HydraException

    try:
        return compose(overrides)
    except HydraException as exc:
        from kdcl.config.checks import schema_error

        typed = schema_error(exc)
        if typed is not None:
            raise typed from None
        msg = str(exc)
        m = re.search(r"Could not override '([^']+)'", msg)
        if m:
            key = m.group(1)
            try:
                known = all_keys(compose(group_overrides))
            except HydraException:
                known = []
            if key not in known:
                raise KdclError(
                    f"unknown config key '{key}'{did_you_mean(key, known)} "
                    "(kdcl train --cfg job shows every key; prefix with + to add a new one)"
                ) from None
        cause = f" ({str(exc.__cause__).splitlines()[0]})" if exc.__cause__ else ""
        raise KdclError(f"bad override: {msg.splitlines()[0]}{cause}") from None
    except (ValueError, TypeError) as exc:  # e.g. `logger=null`
        raise KdclError(f"bad override in {' '.join(overrides)}: {str(exc).splitlines()[0]}") from None


def resume_argv(rest: list[str], overrides: list[str]) -> list[str] | None:
    """`resume=RUN_DIR` continues that run in its own directory with its own saved config."""
    values = [o.split("=", 1)[1] for o in overrides if o.startswith("resume=")]
    if not values or values[0] in ("", "null"):
        return None
    from kdcl.run.manifest import Manifest

    run_dir = Path(values[0])
    if not (Manifest.exists(run_dir) and (run_dir / "config.yaml").is_file()):
        raise KdclError(
            f"resume '{run_dir}' is not a kdcl run directory (no run.json); give a directory that kdcl train printed"
        )
    others = [o for o in overrides if not o.startswith(("resume=", "hydra.", "hydra/"))]
    refused = [o for o in others if o.split("=", 1)[0] not in RESUME_MAY_CHANGE]
    if refused:
        raise KdclError(
            f"resume takes no other overrides than {', '.join(RESUME_MAY_CHANGE)} (got {' '.join(refused)}): "
            "a run continues with its own config; start a new run to change anything else"
        )
    if any(o.startswith("hydra.run.dir=") for o in overrides):  # a worker Lightning's DDP launcher started
        return rest
    # absolute: the resumed run reads its relative paths from where it started (run_training), and the extra
    # ranks DDP starts from there must find it too
    rest = [f"resume={run_dir.resolve()}" if a.startswith("resume=") else a for a in rest]
    return rest + [f"hydra.run.dir={run_dir.resolve()}", "hydra.output_subdir=null"]


def continued_config(cfg, run_dir: Path, requeued: bool, here: Path):
    """(the saved config of the run being continued, with the changes resume= allows; those changes), in the
    directory the run started from: its relative paths (teacher.checkpoint=, data.root=, outputs/) mean what
    they meant then."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf
    from omegaconf.errors import ValidationError

    from kdcl.config.checks import schema_error
    from kdcl.config.schema import TrainConfig
    from kdcl.config.upgrade import upgrade_saved
    from kdcl.run.manifest import started_in

    saved = upgrade_saved(OmegaConf.load(run_dir / "config.yaml"))
    changes = resume_changes(HydraConfig.get().overrides.task, cfg, saved) if not requeued else {}
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), saved, OmegaConf.from_dotlist(
            [f"{k}={new}" for k, (_, new) in changes.items()]))  # fmt: skip
    except ValidationError as exc:
        raise schema_error(exc) from None
    origin = started_in(run_dir) or here
    os.chdir(origin)  # run_training returns to `here` when the run ends
    print(
        f"{'requeued: continuing' if requeued else 'resuming'} {run_dir}"
        + "".join(f", {k}: {old} → {new}" for k, (old, new) in changes.items())
        + (f" (from {origin}, where it started: its relative paths are read there)" if origin != here else ""),
        flush=True,
    )
    return cfg, changes


def resume_changes(task_overrides: list[str], given, saved) -> dict[str, tuple]:
    """{key: (saved value, new value)} for the RESUME_MAY_CHANGE keys given with `resume=` that differ."""
    from omegaconf import OmegaConf

    keys = [o.split("=", 1)[0] for o in task_overrides if o.split("=", 1)[0] in RESUME_MAY_CHANGE]
    pairs = {k: (OmegaConf.select(saved, k), OmegaConf.select(given, k)) for k in keys}
    return {k: (old, new) for k, (old, new) in pairs.items() if old != new}


def run_dir_of_resume(overrides: list[str]) -> Path:
    return Path(next(o for o in overrides if o.startswith("resume=")).split("=", 1)[1])


def training_process_leader() -> bool:
    """Whether this process leads its run: not one of the extra ranks that torchrun, SLURM or Lightning's
    DDP launcher start with the same command line (they work in the leader's run directory)."""
    from kdcl.common.ranks import process_rank

    return process_rank() == 0


def train(rest: list[str]) -> None:
    global STARTED, IMPORTS_S
    STARTED, IMPORTS_S = time.perf_counter(), 0.0
    JOBS_RUN.clear()
    from hydra._internal.utils import _run_hydra, get_args_parser

    from kdcl.run.launch import shared_run_dir
    from kdcl.run.sweep import check_extras, sweep_outcome

    parser = get_args_parser()
    dry_run = DRY_RUN in rest
    rest = [a for a in rest if a != DRY_RUN]
    args = parser.parse_args(rest)
    try:
        if dry_run:
            return dry_run_preview(args)
        check_renamed(args.overrides)  # before resume=, --cfg and the sweep's checks: one line, exit 2
        resumed = resume_argv(rest, args.overrides)
        informational = args.help or args.hydra_help or args.info or args.shell_completion or args.cfg
        custom = args.config_dir or args.config_name or args.config_path
        check_extras(args.overrides)
        if args.multirun and informational:
            raise KdclError(
                "-m cannot be combined with --cfg, --info or --help; drop -m to see what a sweep job composes"
            )
        if resumed is not None:
            rest = resumed
            if training_process_leader():
                from kdcl.run.lock import lock_run_dir

                lock_run_dir(run_dir_of_resume(args.overrides))  # before Hydra writes its log into the run
        elif not (informational or custom) and training_process_leader():  # other ranks: the leader checked
            precheck(args.overrides)
        if not (args.multirun or informational or custom):
            rest = [*rest, *shared_run_dir(args.overrides, compose)[len(args.overrides) :]]
    except KdclError as err:
        exit_with(err)

    # Lightning's DDP launcher starts each extra rank as `sys.argv` + the run directory: keep the command
    # (`kdcl train ...`, `python -m kdcl train ...`) that it re-runs
    sys.argv = [sys.argv[0], "train", *rest]
    resume_after_start_up()
    _run_hydra(args=parser.parse_args(rest), args_parser=parser, task_function=train_task,
               config_path=str(config_dir()), config_name="train")  # fmt: skip
    failed = sweep_outcome()
    if failed is not None:
        exit_with(failed)


def dry_run_preview(args) -> None:
    """`kdcl train … --dry-run`: every job's stages, teacher outputs, passes, time and disk; nothing written."""
    informational = args.help or args.hydra_help or args.info or args.shell_completion or args.cfg
    if informational or args.config_dir or args.config_name or args.config_path:
        raise KdclError(f"{DRY_RUN} previews a run of conf/; drop --cfg, --info, --help and --config-* options")
    check_renamed(args.overrides)
    if any(o.startswith("resume=") and o.split("=", 1)[1] not in ("", "null") for o in args.overrides):
        raise KdclError(f"{DRY_RUN} previews a new run, not resume=; drop resume= (kdcl report shows a run's state)")
    from kdcl.run.sweep import check_extras

    check_extras(args.overrides)
    try:
        preview_points(args)
    except KdclError as err:
        if "download" not in str(err):
            raise
        raise KdclError(f"{err} (a dry run downloads nothing: run once without {DRY_RUN} to fetch the data)") from None


def preview_points(args) -> None:
    """Compose and check every point, then preview them; the data is read to count it, never downloaded."""
    points = precheck([*args.overrides, NO_DOWNLOAD])
    if len(points) > 1 and not args.multirun:
        raise KdclError(f"these overrides make {len(points)} jobs: add -m to preview the sweep")
    from kdcl.run.preview import preview
    from kdcl.run.validate import check_config

    if any(o.split("=", 1)[0] in ("hparams_search", "hydra/sweeper") for o in args.overrides):
        print("a search sweeper chooses its trials as it goes: each trial is previewed as the job below")
    if len(points) == MAX_CHECKED_SWEEP_POINTS:
        print(
            f"the sweep has {MAX_CHECKED_SWEEP_POINTS} points or more: the first {MAX_CHECKED_SWEEP_POINTS} are previewed"
        )
    labels = [" ".join(o for o in combo if not o.startswith(("hydra", "data.download="))) or "(defaults)"
              for combo, _ in points]  # fmt: skip
    preview([check_config(cfg) for _, cfg in points], labels, time.perf_counter() - STARTED)


def process_start_up() -> StartUp:
    """This process's time before its first job: loading the frameworks (here, after a resume, which skips
    the checks that load them earlier), and the rest."""
    global IMPORTS_S
    IMPORTS_S += load_frameworks()
    return StartUp(IMPORTS_S, time.perf_counter() - STARTED - IMPORTS_S)


def train_task(cfg) -> float | None:
    """One run (or one sweep job). A sweep job's failure is recorded in its directory and the job returns
    NaN, so the other jobs run on (kdcl/run/sweep.py); a single run exits with the error's status."""
    from kdcl.run.sweep import in_sweep_job, record_failure

    if not in_sweep_job():
        try:
            return run_training(cfg)
        except KdclError as err:
            exit_with(err)
    try:
        return run_training(cfg)
    except Exception as exc:  # noqa: BLE001 — any failure of one job (bad data, NaN loss, out of memory)
        return record_failure(exc)


def run_training(cfg) -> float | None:
    """Train the run (or continue it: resume=, or a requeued submitit job); returns the objective a
    sweeper optimises: the final model's best validation accuracy (never the test set's)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from kdcl.run.launch import set_threads
    from kdcl.run.lock import release_run_dir
    from kdcl.run.manifest import requeued_run
    from kdcl.training.trainer import quiet_libraries

    quiet_libraries()
    run_dir = Path(cfg.resume).resolve() if cfg.get("resume") else Path(HydraConfig.get().runtime.output_dir)
    here = Path.cwd()
    leader = training_process_leader()
    set_threads(OmegaConf.select(cfg, "speed.threads"))
    try:
        from kdcl.run.lock import lock_run_dir
        from kdcl.run.manifest import Manifest
        from kdcl.run.runner import run_pipeline
        from kdcl.run.validate import check_config

        if leader:
            lock_run_dir(run_dir)
        changes = {}
        requeued = leader and not cfg.get("resume") and requeued_run(run_dir)  # other ranks: the same config
        if cfg.get("resume") or requeued:
            cfg, changes = continued_config(cfg, run_dir, requeued, here)
        elif leader and Manifest.exists(run_dir):  # e.g. two runs started in the same second: never mix them
            raise KdclError(
                f"{run_dir} already holds a kdcl run; continue it with resume={run_dir} or set hydra.run.dir"
            )
        with contextlib.redirect_stdout(sys.stdout if leader else io.StringIO()):  # the first rank speaks for all
            start_up = StartUp(0.0, 0.0) if JOBS_RUN else process_start_up()  # a sweep job after the first: none
            JOBS_RUN.append(run_dir)
            summary = run_pipeline(check_config(cfg), run_dir, changes, start_up)
    except OSError as exc:  # a write no kdcl code wraps (Hydra's, a library's): one line all the same
        raise io_failure(exc, "write the run's files") from None
    finally:
        release_run_dir(run_dir)
        os.chdir(here)
    if leader:
        print(f"run directory: {run_dir}", flush=True)
    from kdcl.reporting.jobs import objective

    return objective(summary)
