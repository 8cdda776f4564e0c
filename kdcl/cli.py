"""`kdcl` entry point: subcommand dispatch. `train` hands its arguments to Hydra untouched."""

from __future__ import annotations

import contextlib
import fnmatch
import io
import itertools
import re
import sys
from pathlib import Path

from kdcl import __version__
from kdcl.common.errors import KdclError, did_you_mean, exit_with, io_failure
from kdcl.config.compose import config_dir

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
MAX_CHECKED_SWEEP_POINTS = 512  # composing one point takes ~20 ms
# what `resume=` may change: the remedies for a diverged stage, which apply from the stopped stage on
RESUME_MAY_CHANGE = ("optim.lr", "trainer.gradient_clip_val", "distill.temperature")


def config_groups() -> dict[str, list[str]]:
    root = config_dir()
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(root.iterdir())
        if d.is_dir() and d.name != "hydra"
    }


def all_keys(node, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    keys = []
    for k in node.keys():
        full = f"{prefix}{k}"
        keys.append(full)
        try:
            child = node._get_node(k)
        except Exception:
            continue
        if isinstance(child, DictConfig):
            keys += all_keys(child, full + ".")
    return keys


def compose(overrides: list[str], return_hydra_config: bool = False):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="train"):
        return hydra_compose(config_name="train", overrides=overrides, return_hydra_config=return_hydra_config)


def precheck(overrides: list[str]) -> None:
    """Before Hydra creates anything: unknown options and keys, and bad values of the first sweep point."""
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
    # every point of a sweep is checked now, so a bad value cannot stop a sweep half-way
    combos = list(itertools.islice(itertools.product(*axes), MAX_CHECKED_SWEEP_POINTS))
    for combo in combos:
        check_point(fixed + list(combo), group_overrides)


def group_options(override, values: list[str]) -> list[str]:
    """The options an override picks from a group: `logger=[tensorboard,mlflow]` picks two."""
    value = override.value()
    return [str(v) for v in value] if isinstance(value, list) else values


def check_point(overrides: list[str], group_overrides: list[str]) -> None:
    from hydra.errors import HydraException

    from kdcl.config.checks import check_config

    try:
        cfg = compose(overrides)
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
    check_config(cfg)


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
    return rest + [f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]


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
    from kdcl.run.launch import process_rank

    return process_rank() == 0


def train(rest: list[str]) -> None:
    from hydra._internal.utils import _run_hydra, get_args_parser

    from kdcl.run.launch import shared_run_dir
    from kdcl.run.sweep import check_extras, sweep_outcome

    parser = get_args_parser()
    args = parser.parse_args(rest)
    try:
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
    _run_hydra(args=parser.parse_args(rest), args_parser=parser, task_function=train_task,
               config_path=str(config_dir()), config_name="train")  # fmt: skip
    failed = sweep_outcome()
    if failed is not None:
        exit_with(failed)


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

    from kdcl.run.launch import requeued_run, set_threads
    from kdcl.run.lock import release_run_dir
    from kdcl.training.trainer import quiet_libraries

    quiet_libraries()
    run_dir = Path(cfg.resume) if cfg.get("resume") else Path(HydraConfig.get().runtime.output_dir)
    leader = training_process_leader()
    set_threads(OmegaConf.select(cfg, "speed.threads"))
    try:
        from omegaconf.errors import ValidationError

        from kdcl.config.checks import check_config, schema_error, upgrade_saved
        from kdcl.config.schema import TrainConfig
        from kdcl.run.lock import lock_run_dir
        from kdcl.run.manifest import Manifest
        from kdcl.run.runner import run_pipeline

        if leader:
            lock_run_dir(run_dir)
        changes = {}
        requeued = leader and not cfg.get("resume") and requeued_run(run_dir)  # other ranks: the same config
        if cfg.get("resume") or requeued:
            saved = upgrade_saved(OmegaConf.load(run_dir / "config.yaml"))
            changes = resume_changes(HydraConfig.get().overrides.task, cfg, saved) if not requeued else {}
            try:
                cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), saved, OmegaConf.from_dotlist(
                    [f"{k}={new}" for k, (_, new) in changes.items()]))  # fmt: skip
            except ValidationError as exc:
                raise schema_error(exc) from None
            print(
                f"{'requeued: continuing' if requeued else 'resuming'} {run_dir}"
                + "".join(f", {k}: {old} → {new}" for k, (old, new) in changes.items()),
                flush=True,
            )
        elif leader and Manifest.exists(run_dir):  # e.g. two runs started in the same second: never mix them
            raise KdclError(
                f"{run_dir} already holds a kdcl run; continue it with resume={run_dir} or set hydra.run.dir"
            )
        with contextlib.redirect_stdout(sys.stdout if leader else io.StringIO()):  # the first rank speaks for all
            summary = run_pipeline(check_config(cfg), run_dir, changes)
    except OSError as exc:  # a write no kdcl code wraps (Hydra's, a library's): one line all the same
        raise io_failure(exc, "write the run's files") from None
    finally:
        release_run_dir(run_dir)
    if leader:
        print(f"run directory: {run_dir}", flush=True)
    from kdcl.run.sweep import objective

    return objective(summary)


def models(rest: list[str]) -> None:
    import timm
    from omegaconf import OmegaConf

    cost = "--cost" in rest
    args = [a for a in rest if a != "--cost"]
    overrides = [a for a in args if "=" in a]
    if overrides and not cost:
        raise KdclError(f"kdcl models takes {' '.join(overrides)} only with --cost (the data to measure at)")
    pattern = next((a for a in args if "=" not in a), "*")
    aliases = []
    for group in ("teacher", "student"):
        for f in sorted((config_dir() / group).glob("*.yaml")):
            name = OmegaConf.load(f).name
            if fnmatch.fnmatch(f.stem, pattern) or fnmatch.fnmatch(name, pattern):
                aliases.append(f"  {group}={f.stem:<12} → {name}")
    names = timm.list_models(pattern)
    if not names and not aliases:
        raise KdclError(f"no timm model matches '{pattern}'; try a pattern with * such as 'resnet*'")
    if aliases:
        print("kdcl aliases:")
        print("\n".join(aliases))
    if cost:
        return model_costs(pattern, overrides)
    print(f"timm models matching '{pattern}' ({len(names)}; use any as teacher.name=... or student.name=...):")
    width = max((len(n) for n in names), default=0) + 2
    per_line = max(1, 100 // max(width, 1))
    for i in range(0, len(names), per_line):
        print("  " + "".join(n.ljust(width) for n in names[i : i + per_line]).rstrip())


def model_costs(pattern: str, overrides: list[str]) -> None:
    """`kdcl models PATTERN --cost`: each matching model measured at the data's size, one line at a time."""
    from kdcl.common.tables import print_table
    from kdcl.models.catalog import cost_table, input_shape, matching, measure

    names, shape = matching(pattern), input_shape(overrides)
    print(f"measuring {len(names)} models at {shape.in_chans}×{shape.image_size}×{shape.image_size}, "
          f"{shape.num_classes} classes (data={shape.data}), batches {shape.batches}:", flush=True)  # fmt: skip
    costs = []
    for name in names:
        costs.append(measure(name, shape))
        print(f"  {name}: {costs[-1].error or 'measured'}", flush=True)
    headers, rows = cost_table(costs, shape)
    print_table(headers, rows, f"what each model costs on the CPU (data={shape.data})", left=("model",))
    notes = {lat.note for c in costs if c.cost for lat in c.cost.latency.values() if lat.note}
    for note in sorted(notes):
        print(f"note: {note}")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if argv[0] == "--version":
        print(f"kdcl {__version__}")
        return
    command, rest = argv[0], argv[1:]
    try:
        if command == "train":
            train(rest)
        elif command == "eval":
            from kdcl.deploy.locate import eval_command
            from kdcl.training.trainer import quiet_libraries

            quiet_libraries()
            eval_command(rest)
        elif command == "export":
            from kdcl.deploy.export import export_command
            from kdcl.training.trainer import quiet_libraries

            quiet_libraries()
            export_command(rest)
        elif command == "models":
            models(rest)
        elif command == "cache":
            from kdcl.common.cache import cache_command

            cache_command(rest)
        elif command == "report":
            from kdcl.reporting.compare import write_report

            extra = [a for a in rest[1:] if not a.startswith("baseline=")]
            if not rest or rest[0].startswith("baseline=") or extra:
                raise KdclError("report takes one directory and optionally a baseline: kdcl report "
                                "outputs/multirun/<date>/<time> [baseline=KEY=VALUE]")  # fmt: skip
            baselines = [a.split("=", 1)[1] for a in rest[1:]]
            write_report(Path(rest[0]), baselines[-1] if baselines else None)
        else:
            raise KdclError(
                f"unknown command '{command}'{did_you_mean(command, COMMANDS)}; commands: {', '.join(COMMANDS)}"
            )
    except KdclError as err:
        exit_with(err)


if __name__ == "__main__":
    main()
