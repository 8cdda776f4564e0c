"""`kdcl eval RUN_DIR cascade=true [stage=NAME] [cascade.max_drop=0.01] [cascade.confidence=margin]`:
the run's final model (or stage NAME) answers, its teacher stage takes what it is unsure of
(kdcl/deploy/cascade.py). τ is chosen on the validation split and reported on the test split.

Writes into the run directory: cascade.json (both curves, the operating point, the latencies used),
cascade.png (test accuracy against the share deferred, with both models' points) and
cascade_predictions.pt (per image: label, both predictions and the student's confidence), from which
every number of cascade.json can be recomputed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from kdcl.common.errors import KdclError
from kdcl.common.io import atomic_torch_save, atomic_write_json
from kdcl.common.plots import saved_figure
from kdcl.config.checks import check_cascade, check_data
from kdcl.config.schema import CascadeConfig, LatencyConfig
from kdcl.data import KdclDataModule
from kdcl.data.datamodule import StagePart
from kdcl.deploy.cascade import Point, confidence, curve, operating_point, thresholds
from kdcl.deploy.locate import apply_overrides, finished_stage, locate
from kdcl.models import model_from_checkpoint
from kdcl.models.input_norm import ModelInput
from kdcl.models.predictions import Predictions, predict
from kdcl.run.manifest import Manifest

LATENCY_BATCH = "1"  # the cascade serves one image at a time: per-image latency at batch 1


@dataclass(frozen=True)
class Pair:
    """The two finished stages of the run that the cascade combines (their run.json results)."""

    run_dir: Path
    student: dict
    teacher: dict


def find_pair(target: str, stage: str | None) -> Pair:
    """The student (stage NAME, else the last finished stage) and the run's finished teacher stage."""
    run_dir = Path(target)
    if not (run_dir.is_dir() and Manifest.exists(run_dir)):
        raise KdclError(f"cascade=true needs a kdcl run directory (it pairs the run's student with its teacher); "
                        f"'{target}' is not one")  # fmt: skip
    name, done = finished_stage(run_dir, stage)
    teachers = [r for r in done.values() if r.get("model_key") == "teacher"]
    if not teachers or teachers[0]["name"] == name:
        what = "is the teacher itself" if teachers else "has no finished teacher stage"
        raise KdclError(f"cascade=true: run '{run_dir}' {what} (finished stages: {', '.join(done)}); the cascade "
                        "needs a student stage and the run's teacher stage, e.g. a run of pipeline=standard")  # fmt: skip
    for result in (done[name], teachers[0]):
        if result.get("classes") is not None:
            raise KdclError(f"cascade=true: stage {result['name']} is a class-incremental task; the cascade needs "
                            "two models of every class")  # fmt: skip
    return Pair(run_dir, done[name], teachers[0])


def cascade_settings(cfg: DictConfig) -> DictConfig:
    """The run's config with the cascade's and the latency's defaults where it has none (a run saved before
    they existed), so `cascade.*` and `latency.speedup_runtime=eager` can be set for any run."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    cfg.cascade = OmegaConf.merge(OmegaConf.structured(CascadeConfig), cfg.get("cascade") or {})
    cfg.latency = OmegaConf.merge(OmegaConf.structured(LatencyConfig), cfg.get("latency") or {})
    return cfg


def model_of(pair: Pair, result: dict, dm: KdclDataModule, cfg: DictConfig) -> torch.nn.Module:
    return model_from_checkpoint(result["model_cfg"], pair.run_dir / result["checkpoint"], ModelInput.of(dm.load(), cfg.data.image_size),
                                 result["model_key"])  # fmt: skip


def recorded_ms(result: dict, runtime: str) -> float | None:
    """A stage's batch-1 latency in `runtime` as its run measured it (older runs: eager PyTorch only)."""
    from kdcl.reporting.summary import medians
    from kdcl.run.stage import StageResult  # reads both the current and the older latency records

    return medians(StageResult.from_json(result).to_json(), runtime).get(LATENCY_BATCH)


def measured_ms(model: torch.nn.Module, runtime: str, dm: KdclDataModule, cfg: DictConfig) -> float | None:
    from kdcl.models.cost import model_cost

    timing = model_cost(model, dm.in_chans, int(cfg.data.image_size), [1], [runtime]).latency[runtime].ms.get("1")
    return None if timing is None else timing.median_ms


def latencies(
    pair: Pair, model: Callable[[int], torch.nn.Module], dm: KdclDataModule, cfg: DictConfig
) -> tuple[str, tuple[float, float]]:
    """(runtime, per-image latency at batch 1 of student and teacher) in the run's speed-up runtime (ONNX
    Runtime by default): as the run measured them, else measured now on `model(i)` (0: student, 1: teacher);
    eager PyTorch when that runtime cannot time both (not installed, a model it cannot export)."""
    wanted = str((cfg.get("latency") or {}).get("speedup_runtime") or "onnxruntime")
    for runtime in dict.fromkeys([wanted, "eager"]):
        ms = [recorded_ms(r, runtime) or measured_ms(model(i), runtime, dm, cfg)
              for i, r in enumerate((pair.student, pair.teacher))]  # fmt: skip
        if None not in ms:
            return runtime, (float(ms[0]), float(ms[1]))
    raise KdclError("cascade=true: the models' latency could not be measured in any runtime")


def stored_predictions(pair: Pair, result: dict, split: str, examples: int) -> Predictions | None:
    """The logits the stage kept of its handed-on checkpoint on `split` (its test; its validation epoch), when
    they cover the whole split: then the cascade passes that model over it no more."""
    kept = result.get(f"{split}_predictions")
    path = pair.run_dir / kept if kept else None
    if path is None or not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return Predictions(saved["logits"], saved["labels"]) if len(saved["labels"]) == examples else None


def both_predictions(pair: Pair, cfg: DictConfig) -> tuple[dict, tuple[str, tuple[float, float]]]:
    """{split: (student, teacher) Predictions} for val and test (the stages' own where kept, else one pass
    each), and their per-image latencies (runtime, ms)."""
    check_data(cfg.data)
    dm = KdclDataModule(cfg.data, seed=cfg.seed)
    dm.setup()
    view = dm.for_stage(StagePart())
    results = (pair.student, pair.teacher)
    built: dict[int, torch.nn.Module] = {}

    def model(i: int) -> torch.nn.Module:  # built only when a pass or a latency needs it
        if i not in built:
            built[i] = model_of(pair, results[i], dm, cfg)
        return built[i]

    def of(i: int, split: str, loader) -> Predictions:
        stored = stored_predictions(pair, results[i], split, len(loader.dataset))
        return stored if stored is not None else predict(model(i), loader, dm.scale)

    loaders = {"val": view.val_dataloader(), "test": view.test_dataloader()}
    preds = {split: (of(0, split, loader), of(1, split, loader)) for split, loader in loaders.items()}
    return preds, latencies(pair, model, dm, cfg)


def run_cascade(target: str, stage: str | None, cfg: DictConfig) -> dict:
    """Curves on both splits, τ chosen on val, the files written; returns cascade.json's content."""
    pair = find_pair(target, stage)
    c = cfg.cascade
    preds, (runtime, latency) = both_predictions(pair, cfg)
    taus = thresholds(int(c.steps))
    macs = (pair.student.get("macs"), pair.teacher.get("macs"))
    macs = macs if None not in macs else None
    curves = {split: curve(s, t, str(c.confidence), taus, latency, macs) for split, (s, t) in preds.items()}
    chosen = operating_point(curves["val"], preds["val"][1].accuracy, float(c.max_drop))
    test_point = next(p for p in curves["test"] if p.tau == chosen.tau)
    result = {
        "run_dir": str(pair.run_dir), "student": pair.student["name"], "teacher": pair.teacher["name"],
        "student_model": pair.student["model"], "teacher_model": pair.teacher["model"],
        "confidence": str(c.confidence), "max_drop": float(c.max_drop),
        "latency_ms": {"student": latency[0], "teacher": latency[1], "batch": int(LATENCY_BATCH), "runtime": runtime},
        "macs": {"student": macs[0], "teacher": macs[1]} if macs else None,
        "tau": chosen.tau, "val": chosen.to_json(), "test": test_point.to_json(),
        "splits": {split: {"examples": len(s.labels), "student_acc": s.accuracy, "teacher_acc": t.accuracy,
                           "curve": [p.to_json() for p in curves[split]]} for split, (s, t) in preds.items()},
    }  # fmt: skip
    atomic_write_json(pair.run_dir / "cascade.json", result)
    atomic_torch_save(saved_predictions(preds, str(c.confidence), chosen.tau), pair.run_dir / "cascade_predictions.pt")
    plot(result, curves["test"], pair.run_dir / "cascade.png")
    return result


def saved_predictions(preds: dict, kind: str, tau: float) -> dict:
    """Per split and image: the label, both models' predicted classes and the student's confidence."""
    out: dict = {"tau": tau, "confidence": kind}
    for split, (s, t) in preds.items():
        out[split] = {"labels": s.labels, "student": s.predicted, "teacher": t.predicted,
                      "student_confidence": confidence(s, kind)}  # fmt: skip
    return out


def plot(result: dict, points: list[Point], path: Path) -> None:
    """Test accuracy against the share deferred to the teacher, with both models and the chosen τ."""
    test = result["splits"]["test"]
    with saved_figure(path, size=(6, 4)) as ax:
        ax.plot([100 * p.deferred for p in points], [100 * p.accuracy for p in points], label="cascade (τ grid)")
        ax.scatter([0], [100 * test["student_acc"]], marker="s", zorder=3, label=f"student {result['student_model']}")
        ax.scatter([100], [100 * test["teacher_acc"]], marker="^", zorder=3, label=f"teacher {result['teacher_model']}")
        chosen = result["test"]
        ax.scatter([100 * chosen["deferred"]], [100 * chosen["accuracy"]], marker="*", s=120, zorder=4, color="red",
                   label=f"τ = {result['tau']:.2f} (chosen on val, max drop {100 * result['max_drop']:g} pt)")  # fmt: skip
        ax.set(xlabel="images deferred to the teacher (%)", ylabel="test accuracy (%)",
               title=f"cascade on the test set ({result['confidence']})")  # fmt: skip
        ax.legend(fontsize=8, loc="lower right")


def report(result: dict) -> None:
    test, lat = result["test"], result["latency_ms"]
    split = result["splits"]["test"]
    print(f"cascade {result['student']} → {result['teacher']} ({result['confidence']}, max drop "
          f"{100 * result['max_drop']:g} pt on val): τ = {result['tau']:.2f} defers {100 * test['deferred']:.1f} % "
          f"of {split['examples']} test images; accuracy {100 * test['accuracy']:.2f} % (student "
          f"{100 * split['student_acc']:.2f} %, teacher {100 * split['teacher_acc']:.2f} %); "
          f"{test['latency_ms']:.2f} ms per image in {lat['runtime']} (student {lat['student']:.2f}, teacher "
          f"{lat['teacher']:.2f})"
          + (f"; {test['macs'] / 1e6:.1f} MMACs per image (student {result['macs']['student'] / 1e6:.1f}, teacher "
             f"{result['macs']['teacher'] / 1e6:.1f})" if result["macs"] else ""))  # fmt: skip
    if test["latency_ms"] >= lat["teacher"]:  # the student always runs first: deferring costs both models
        print(f"note: at this τ the cascade ({test['latency_ms']:.2f} ms) is slower than the teacher alone "
              f"({lat['teacher']:.2f} ms) in {lat['runtime']} on this machine at batch 1")  # fmt: skip
    print(f"wrote {Path(result['run_dir']) / 'cascade.json'}, cascade.png, cascade_predictions.pt")
    print(json.dumps({k: result[k] for k in ("student", "teacher", "tau", "val", "test")}))


def cascade_eval(target: str, stage: str | None, overrides: list[str]) -> dict:
    """Every input checked (the run's stages, the settings) before data or models are loaded."""
    pair = find_pair(target, stage)
    cfg = locate(str(pair.run_dir), pair.student["name"]).cfg
    cfg = apply_overrides(cascade_settings(cfg), [o for o in overrides if o.split("=", 1)[0] != "cascade"])
    check_cascade(cfg.cascade)
    result = run_cascade(target, pair.student["name"], cfg)
    report(result)
    return result
