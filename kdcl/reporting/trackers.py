"""Where a run's numbers go besides its own files: the loggers of every stage (conf/logger, name-keyed:
`logger=[tensorboard,mlflow]`), and, once the run is summarised, its report card.

- TensorBoard, CSV (and any logger taking save_dir/name/version): <run>/<logger>/<NN-stage>/.
- MLflow (Lightning's MLFlowLogger): one MLflow run per kdcl run holding the config and, at the end, every
  stage's test numbers and report card, with one nested run per stage (its hyper-parameters and
  metrics: MLflow refuses to change a parameter's value, and stages differ in theirs). Default store:
  SQLite at <paths.output_dir>/mlflow.db (MLflow 3 refuses a plain file store unless told otherwise).
- W&B (Lightning's WandbLogger): one W&B run per kdcl run (stages namespace their metrics), offline
  under <run>/wandb unless a project is set and an API key is found; the report card in its summary.

The kdcl run's MLflow and W&B run ids are kept in <run>/trackers.json, so a resumed run adds to them.
"""

from __future__ import annotations

import netrc
import os
import sys
import uuid
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from kdcl.common.io import atomic_write_json, read_json
from kdcl.common.ranks import process_rank
from kdcl.config.checks import logger_kind as kind
from kdcl.reporting.summary import card_keys


def records(run_dir: Path) -> dict:
    path = run_dir / "trackers.json"
    return read_json(path) if path.is_file() else {}


def remember(run_dir: Path, name: str, value: dict) -> None:
    atomic_write_json(run_dir / "trackers.json", {**records(run_dir), name: value})


def run_label(cfg: DictConfig, run_dir: Path) -> str:
    """The run directory below paths.output_dir (train/<date>/<time>), a readable tracker run name."""
    try:
        return str(run_dir.resolve().relative_to(Path(cfg.paths.output_dir).resolve()))
    except ValueError:
        return run_dir.name


def stage_loggers(cfg: DictConfig, run_dir: Path, stage_dir: str) -> list:
    """The configured loggers for one stage (`stage_dir`: NN-name)."""
    loggers = []
    for name, spec in (cfg.get("logger") or {}).items():
        if spec is None:
            continue
        supply = {"MLFlowLogger": mlflow_arguments, "WandbLogger": wandb_arguments}.get(kind(spec), file_arguments)
        loggers.append(instantiate(spec, **supply(cfg, run_dir, str(name), spec, stage_dir)))
    return loggers


def file_arguments(cfg, run_dir: Path, name: str, spec, stage_dir: str) -> dict:
    return {"save_dir": str(run_dir / name), "name": stage_dir, "version": ""}


# MLflow ------------------------------------------------------------------------------------------------
def mlflow_store(cfg: DictConfig, spec) -> tuple[str, str]:
    """(tracking URI, artifact location of a new experiment): SQLite and files under paths.output_dir by default."""
    root = Path(cfg.paths.output_dir).resolve()
    uri = spec.get("tracking_uri") or f"sqlite:///{root / 'mlflow.db'}"
    return uri, spec.get("artifact_location") or (root / "mlartifacts").as_uri()


def mlflow_parent(cfg: DictConfig, run_dir: Path, name: str, spec) -> str:
    """The id of the kdcl run's MLflow run, created with the config as its parameters on first use."""
    known = records(run_dir).get(name)
    if known:
        return known["run_id"]
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri, artifacts = mlflow_store(cfg, spec)
    client, experiment = MlflowClient(uri), spec.get("experiment_name") or "kdcl"
    found = client.get_experiment_by_name(experiment)
    try:
        experiment_id = found.experiment_id if found else client.create_experiment(experiment, artifacts)
    except MlflowException:  # another sweep job created it meanwhile
        experiment_id = client.get_experiment_by_name(experiment).experiment_id
    run = client.create_run(experiment_id, run_name=run_label(cfg, run_dir), tags={"kdcl.run_dir": str(run_dir)})
    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    params = [Param(k, str(v)[:6000]) for k, v in flat.items()]  # MLflow's limit on a parameter value
    for i in range(0, len(params), 100):  # and on parameters per request
        client.log_batch(run.info.run_id, params=params[i : i + 100])
    remember(run_dir, name, {"run_id": run.info.run_id, "tracking_uri": uri})
    return run.info.run_id


def flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def mlflow_arguments(cfg, run_dir: Path, name: str, spec, stage_dir: str) -> dict:
    uri, artifacts = mlflow_store(cfg, spec)
    tags = {**(spec.get("tags") or {}), "kdcl.stage": stage_dir}
    if process_rank() == 0:  # Lightning logs from rank 0 only; other ranks must not create a parent run
        tags["mlflow.parentRunId"] = mlflow_parent(cfg, run_dir, name, spec)
    return {"tracking_uri": uri, "artifact_location": artifacts, "run_name": stage_dir, "tags": tags}


# W&B ---------------------------------------------------------------------------------------------------
def wandb_logged_in() -> bool:
    """An API key in WANDB_API_KEY or in ~/.netrc (where `wandb login` keeps it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_arguments(cfg, run_dir: Path, name: str, spec, stage_dir: str) -> dict:
    import wandb

    known = records(run_dir).get(name) or {"id": uuid.uuid4().hex[:12]}
    if wandb.run is not None and wandb.run.id != known["id"]:
        wandb.finish()  # an earlier kdcl run in this process (a sweep's previous job) that did not end
    remember(run_dir, name, known)
    offline = spec.get("offline")
    if offline is None:
        offline = not (spec.get("project") and wandb_logged_in())
    return {"save_dir": str(run_dir), "name": run_label(cfg, run_dir), "id": known["id"], "offline": bool(offline),
            "project": spec.get("project") or "kdcl", "resume": "allow"}  # fmt: skip


# the summarised run ------------------------------------------------------------------------------------
def card_metrics(summary: dict) -> dict[str, float]:
    """Every stage's test numbers as `<stage>/test/<metric>` (acc: the chosen checkpoint's), and its size."""
    metrics, keys = {}, ("test_acc", *card_keys())
    for row in summary["stages"]:
        for key in keys:
            if row.get(key) is not None:
                metrics[f"{row['name']}/test/{key.removeprefix('test_')}"] = float(row[key])
        metrics[f"{row['name']}/params"] = float(row["params"])
    return metrics


def publish(cfg: DictConfig, run_dir: Path, summary: dict) -> None:
    """The summary's numbers, the summary files and the reliability diagram, to every tracker configured."""
    if process_rank() != 0:
        return
    metrics = card_metrics(summary)
    files = [run_dir / f for f in ("summary.json", "summary.md", "reliability.png") if (run_dir / f).is_file()]
    writers = {"MLFlowLogger": publish_mlflow, "WandbLogger": publish_wandb, "TensorBoardLogger": publish_tensorboard}
    for name, spec in (cfg.get("logger") or {}).items():
        if spec is None or kind(spec) not in writers:
            continue
        try:
            writers[kind(spec)](run_dir, str(name), metrics, files)
        except Exception as exc:  # the run's own files are complete: a tracker that fails now costs only itself
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            print(f"warning: logger.{name}: the report card was not published ({reason})", file=sys.stderr, flush=True)


def publish_mlflow(run_dir: Path, name: str, metrics: dict, files: list[Path]) -> None:
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    record = records(run_dir).get(name)
    if not record:
        return
    client, run_id, now = MlflowClient(record["tracking_uri"]), record["run_id"], int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    for f in files:
        client.log_artifact(run_id, str(f))
    client.set_terminated(run_id)


def publish_wandb(run_dir: Path, name: str, metrics: dict, files: list[Path]) -> None:
    import wandb

    if wandb.run is None or wandb.run.id != (records(run_dir).get(name) or {}).get("id"):
        return
    wandb.run.summary.update(metrics)
    images = {f"report_card/{f.stem}": wandb.Image(str(f)) for f in files if f.suffix == ".png"}
    if images:
        wandb.run.log(images)
    wandb.finish()


def publish_tensorboard(run_dir: Path, name: str, metrics: dict, files: list[Path]) -> None:
    """<run>/<logger>/report_card: the numbers as scalars, the reliability diagram as an image."""
    import matplotlib.image
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / name / "report_card"))
    try:
        for key, value in metrics.items():
            writer.add_scalar(f"report_card/{key}", value, 0)
        for f in files:
            if f.suffix == ".png":
                writer.add_image(
                    f"report_card/{f.stem}", matplotlib.image.imread(str(f))[..., :3], 0, dataformats="HWC"
                )
    finally:
        writer.close()
