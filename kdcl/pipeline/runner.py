"""Run a plan stage by stage: skip what the manifest says is done, hand checkpoints on, summarise."""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from kdcl import __version__
from kdcl.data import KdclDataModule
from kdcl.errors import KdclError
from kdcl.io import atomic_write_json, atomic_write_text, read_json
from kdcl.pipeline.manifest import Manifest
from kdcl.pipeline.plan import Stage, plan_stages
from kdcl.pipeline.presets import task_classes
from kdcl.pipeline.stage import build_model, run_stage
from kdcl.summary import write_summary


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
    }


def check_models_fit(stages: list[Stage], dm: KdclDataModule, image_size: int) -> None:
    """Build every model once and run a tiny forward: a wrong name, file or input size fails now, not mid-run."""
    for stage in stages:
        model = build_model(stage.model, dm, image_size, stage.model_key).eval()
        x = torch.zeros(2, dm.in_chans, image_size, image_size)
        try:
            with torch.no_grad():
                out = model(x)
        except Exception as exc:
            raise KdclError(
                f"{stage.model_key}.name={stage.model['name']} cannot take {image_size}x{image_size} images "
                f"({str(exc)[:120]}); set data.image_size to 32 or more"
            ) from None
        if out.shape != (2, dm.num_classes):
            raise KdclError(
                f"{stage.model_key}.name={stage.model['name']} gives outputs {tuple(out.shape)}, not (N, {dm.num_classes})"
            )


def run_pipeline(cfg: DictConfig, run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    stages = plan_stages(cfg)
    manifest = Manifest(run_dir)
    if stages and all(manifest.is_done(s.name) for s in stages) and (run_dir / "summary.json").is_file():
        print(f"{run_dir} is already complete ({len(stages)} stages done); nothing to do, nothing changed", flush=True)
        summary = read_json(run_dir / "summary.json")
        print((run_dir / "summary.md").read_text() if (run_dir / "summary.md").is_file() else "", flush=True)
        return summary
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest.save()  # claims the directory first: a second run started into it is refused
    if not (run_dir / "config.yaml").is_file():  # a resume keeps the original records
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        atomic_write_json(run_dir / "environment.json", environment())
    else:
        atomic_write_json(run_dir / f"environment-resume-{time.strftime('%Y%m%d-%H%M%S')}.json", environment())

    dm = KdclDataModule(cfg.data, seed=cfg.seed)
    dm.setup()
    image_size = int(cfg.data.image_size)
    pending = [s for s in stages if not manifest.is_done(s.name)]
    check_models_fit(pending, dm, image_size)
    for s in stages:
        if s.task:
            task_classes(s.task, dm.num_classes)  # a bad class split fails now, not after earlier stages

    results: dict[str, dict] = {}
    for stage in stages:
        if manifest.is_done(stage.name):
            results[stage.name] = manifest.result(stage.name)
            print(f"[{stage.name}] already done (test acc {results[stage.name]['test_acc']:.4f}), skipped", flush=True)
            continue
        what = "training" if stage.trains else "testing"
        teachers = f" from {', '.join(stage.teachers)}" if stage.teachers else ""
        init = f", starting from {stage.init}" if stage.init else ""
        print(f"[{stage.name}] {what} {stage.model['name']}{teachers}{init} for {stage.epochs} epochs", flush=True)
        manifest.mark_running(stage.name)
        results[stage.name] = run_stage(cfg, stage, dm, run_dir, results)
        manifest.mark_done(stage.name, results[stage.name])
        print(f"[{stage.name}] test acc {results[stage.name]['test_acc']:.4f}", flush=True)
    return write_summary(cfg, run_dir, [results[s.name] for s in stages])
