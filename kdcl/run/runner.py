"""Run a plan stage by stage: skip what the manifest says is done, hand checkpoints on, summarise."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from kdcl import __version__
from kdcl.common.errors import Diverged, EnvironmentFailure, KdclError, StageFailed, io_failure
from kdcl.common.io import atomic_write_json, atomic_write_text, read_json
from kdcl.common.ranks import process_rank
from kdcl.common.timing import PartTimer, StartUp, seconds_text
from kdcl.data import KdclDataModule
from kdcl.reporting.summary import write_summary
from kdcl.reporting.trackers import publish
from kdcl.run.cards import stage_cards
from kdcl.run.manifest import Manifest
from kdcl.run.mutual import run_mutual
from kdcl.run.plan import Plan, Stage, mutual_stage
from kdcl.run.presets import task_classes
from kdcl.run.stage import StageContext, StageResult, run_stage
from kdcl.training.checkpoints import keep_weights_only


def environment() -> dict:
    import hydra
    import pytorch_lightning as pl
    import timm
    import torchvision

    return {
        "kdcl": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pytorch_lightning": pl.__version__,
        "timm": timm.__version__,
        "hydra": hydra.__version__,
        "device": torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"cpu ({platform.processor() or platform.machine()})",
        "cpu_threads": torch.get_num_threads(),
        "argv": sys.argv,
        "cwd": os.getcwd(),  # what the run's relative paths are relative to (a resume returns here)
    }


def check_models_fit(stages: list[Stage], ctx: StageContext) -> None:
    """Build every model once and run a tiny forward: a wrong name, file or input size fails now, not mid-run.
    Stages with the same model (generations, anchors, tasks, folds) are checked once. (The checked models are
    not handed on: each stage builds its own after seeding, so that a resumed stage starts identically.)"""
    size, data = int(ctx.cfg.data.image_size), ctx.data
    checked: set[str] = set()
    for stage in stages:
        if stage.task:
            task_classes(stage.task, data.num_classes)  # a bad class split fails now, not after earlier stages
        same = json.dumps(stage.model, sort_keys=True, default=str)
        if same in checked:
            continue
        checked.add(same)
        model = ctx.build_model(stage.model, stage.model_key).eval()
        try:
            with torch.no_grad():
                out = model(torch.zeros(2, data.in_chans, size, size))
        except Exception as exc:
            raise KdclError(
                f"{stage.model_key}.name={stage.model['name']} cannot take {size}x{size} images "
                f"({str(exc)[:120]}); set data.image_size to 32 or more"
            ) from None
        if out.shape != (2, data.num_classes):
            raise KdclError(
                f"{stage.model_key}.name={stage.model['name']} gives outputs {tuple(out.shape)}, not (N, {data.num_classes})"
            )


def keep_finished(cfg: DictConfig, stage_dir: Path, name: str) -> None:
    """checkpoint.keep=weights: a stage just recorded done keeps its checkpoints' weights only (it never
    resumes); a stage still running keeps everything exact resume needs."""
    if str(OmegaConf.select(cfg, "checkpoint.keep", default="weights")) != "weights":
        return
    freed = sum(keep_weights_only(stage_dir / "checkpoints" / f) for f in ("best.ckpt", "last.ckpt"))
    if freed:
        print(f"[{name}] checkpoints kept as weights: {freed / 2**20:.1f} MB of optimizer state freed", flush=True)


def finished(plan: Plan, run_dir: Path) -> dict | None:
    """The summary of a run whose stages are all done (printed again), else None."""
    manifest = Manifest(run_dir)
    if not (all(manifest.is_done(s.name) for s in plan.stages) and (run_dir / "summary.json").is_file()):
        return None
    print(f"{run_dir} is already complete ({len(plan.stages)} stages done); nothing to do, nothing changed", flush=True)
    print((run_dir / "summary.md").read_text() if (run_dir / "summary.md").is_file() else "", flush=True)
    return read_json(run_dir / "summary.json")


def claim(cfg: DictConfig, run_dir: Path, changes: dict) -> Manifest:
    """Create the run directory and its records; a resume keeps the original config (with the `changes`
    it was resumed with, each recorded in run.json) and adds its environment."""
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(run_dir)
    manifest.save()  # claims the directory first: a second run started into it is refused
    resumed = (run_dir / "config.yaml").is_file()
    for stale in run_dir.rglob(".*.tmp"):  # atomic writes a killed process left unfinished (the lock is ours)
        stale.unlink(missing_ok=True)
    if not resumed or changes:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if changes:
        manifest.record_changes(changes)
    if not resumed:
        atomic_write_json(run_dir / "environment.json", environment())
    else:
        atomic_write_json(run_dir / f"environment-resume-{time.strftime('%Y%m%d-%H%M%S')}.json", environment())
    return manifest


def run_unit(ctx: StageContext, unit: tuple[Stage, ...]) -> list[StageResult]:
    """One stage, or a mutual group's peers trained together (each recorded as its own stage)."""
    return run_mutual(ctx, unit) if unit[0].mutual else [run_stage(ctx, unit[0])]


def run_recorded(ctx: StageContext, unit: tuple[Stage, ...], manifest: Manifest) -> list[StageResult]:
    """run_unit; a stage that diverged, could not start from earlier stages or could not write is marked failed in
    run.json with the reason."""
    name = unit[0].mutual or unit[0].name
    try:
        return run_unit(ctx, unit)
    except OSError as exc:  # a write kdcl does not make itself (a logger, a library): still one line
        err: KdclError = io_failure(exc, f"run stage {name}")
    except (Diverged, StageFailed, EnvironmentFailure) as exc:
        err = exc
    try:
        for stage in unit:
            manifest.mark_failed(stage.name, str(err))
    except EnvironmentFailure:
        pass  # the disk that failed the stage may refuse the record too: the error itself says why
    if isinstance(err, StageFailed):  # the fix is in the line itself: say what is kept
        raise StageFailed(f"{err} (the stages before it are kept: kdcl train resume={ctx.run_dir} ...)") from None
    raise type(err)(f"{err}; then continue with kdcl train resume={ctx.run_dir}") from None


def run_pipeline(plan: Plan, run_dir: Path, changes: dict | None = None, start_up: StartUp | None = None) -> dict:
    """Run every stage not done yet, in order, and write the run's summary. `changes`: the settings a
    resume changed (cli.RESUME_MAY_CHANGE), applied from the stopped stage on; `start_up`: the process's
    time before (imports, composition and checks), for the timing."""
    run_dir = Path(run_dir)
    done = finished(plan, run_dir) if process_rank() == 0 else None
    if done is not None:
        return done
    leader = process_rank() == 0  # under DDP every rank runs the stages; the first one writes the records
    manifest = claim(plan.cfg, run_dir, changes or {}) if leader else Manifest(run_dir)
    timer = PartTimer()
    if start_up is not None:
        timer.seconds["imports"], timer.seconds["checks"] = start_up.imports_s, start_up.checks_s
    with timer.part("data"):
        data = KdclDataModule(plan.cfg.data, seed=plan.cfg.seed, augment=plan.cfg.get("augment"))
        data.setup()
    if data.noise_record() is not None:  # data.label_noise: which training labels are wrong
        atomic_write_json(run_dir / "label_noise.json", data.noise_record())
    ctx = StageContext(plan, data, run_dir, {})
    with timer.part("model check"):
        check_models_fit([s for s in plan.stages if not manifest.is_done(s.name)], ctx)
    with timer.part("stages"):
        run_stages(plan, ctx, manifest, leader)
    if not leader:
        return {"stages": [ctx.handed[s.name].to_json() for s in plan.stages if s.in_summary]}
    in_summary = [s for s in plan.stages if s.in_summary]
    with timer.part("report card"):
        cards = [card.to_json() for card in stage_cards(ctx, in_summary)]
    with timer.part("summary"):
        summary = write_summary(plan.cfg, run_dir, [ctx.handed[s.name].to_json() for s in in_summary], cards)
        publish(plan.cfg, run_dir, summary)
    summary["timing"] = timing(timer, [ctx.handed[s.name] for s in plan.stages])
    atomic_write_json(run_dir / "summary.json", summary)
    print(timing_line(summary["timing"]), flush=True)
    return summary


def timing(timer: PartTimer, results: list[StageResult]) -> dict:
    """summary.json's `timing`: the job's parts, each stage's parts (stages done by an earlier process
    keep the time they took then; the peers of a mutual group, trained at once, are their group's one entry),
    and the total of this process."""
    parts = timer.rounded()
    return {"total": round(sum(parts.values()), 2), "parts": parts,
            "stages": {r.mutual or r.name: {"seconds": r.seconds, **r.timing} for r in results}}  # fmt: skip


def timing_line(t: dict) -> str:
    """One line: where the job's time went."""

    def stage(name: str, s: dict) -> str:
        parts = ", ".join(f"{k} {seconds_text(v)}" for k, v in s.items() if k != "seconds" and v >= 0.5)
        return f"{name} {seconds_text(s['seconds'])}" + (f" ({parts})" if parts else "")

    stages = " · ".join(stage(name, s) for name, s in t["stages"].items())
    others = " · ".join(f"{k} {seconds_text(v)}" for k, v in t["parts"].items() if k != "stages")
    return f"time {seconds_text(t['total'])}: {others} · stages {seconds_text(t['parts']['stages'])}: {stages}"


def announce(unit: tuple[Stage, ...]) -> None:
    """What the unit about to run trains (or tests), from what, for how long."""
    stage = unit[0]
    if stage.mutual:  # the peers of a mutual group train together
        models = " + ".join(s.model["name"] for s in unit)
        print(f"[{stage.mutual}] training {models} together ({', '.join(stage.peers)}: mutual learning) for "
              f"{stage.epochs} epochs", flush=True)  # fmt: skip
        return
    if not stage.trains:
        kept = (
            f" (its run kept epochs {', '.join(str(e) for e, _ in stage.given_epochs)})" if stage.given_epochs else ""
        )
        print(f"[{stage.name}] testing {stage.model['name']} given as {stage.model['checkpoint']}{kept}", flush=True)
        return
    teachers = f" from {', '.join(stage.teachers)}" if stage.teachers else ""
    init = f", starting from {stage.init}" if stage.init else ""
    print(f"[{stage.name}] training {stage.model['name']}{teachers}{init} for {stage.epochs} epochs", flush=True)
    if stage.teacher_outputs_why:
        print(
            f"[{stage.name}] teacher outputs: {stage.teacher_outputs} (auto: {stage.teacher_outputs_why})", flush=True
        )


def run_stages(plan: Plan, ctx: StageContext, manifest: Manifest, leader: bool) -> None:
    """Each stage (or mutual group) in order: skipped when the manifest has it done, else run, recorded and
    pruned. A group runs again unless every peer is done (a kill between their records)."""
    for unit in plan.units():
        if all(manifest.is_done(stage.name) for stage in unit):
            for stage in unit:
                ctx.handed[stage.name] = StageResult.from_json(manifest.result(stage.name))
                print(f"[{stage.name}] already done (test acc {ctx.handed[stage.name].test_acc:.4f}), skipped",
                      flush=True)  # fmt: skip
            continue
        announce(unit)
        for stage in unit:
            manifest.mark_running(stage.name)
        for stage, result in zip(unit, run_recorded(ctx, unit, manifest), strict=True):
            ctx.handed[stage.name] = result
            manifest.mark_done(stage.name, result.to_json())
            print(f"[{stage.name}] test acc {result.test_acc:.4f}", flush=True)
        if leader:
            for stage in (*unit, *([mutual_stage(unit)] if unit[0].mutual else [])):
                keep_finished(plan.cfg, ctx.stage_dir(stage), stage.name)
