"""How a run's stage (or any kdcl checkpoint) is found and its model rebuilt with its data (`locate`,
`load_stage`), and how `data=...` overrides apply to a saved config: `kdcl eval`, `kdcl export` and the
cascade find their models this way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError
from torch import nn
from torch.utils.data import Dataset

from kdcl.common.errors import KdclError, did_you_mean
from kdcl.common.io import read_json
from kdcl.config.checks import check_data, schema_error
from kdcl.config.compose import config_dir
from kdcl.config.upgrade import check_renamed, upgrade_saved
from kdcl.data import KdclDataModule
from kdcl.data.datamodule import of_classes
from kdcl.models import load_kdcl_checkpoint, model_from_checkpoint
from kdcl.models.input_norm import ModelInput
from kdcl.run.manifest import Manifest, started_in


@dataclass(frozen=True)
class Located:
    """A finished stage's checkpoint and what it was trained with; `run_dir` and the test accuracy the run
    recorded are None when a checkpoint file was given."""

    checkpoint: Path
    cfg: DictConfig
    hparams: dict
    run_dir: Path | None = None
    run_test_acc: float | None = None

    @property
    def stage(self) -> str:
        return self.hparams["stage"]


def finished_stage(run_dir: Path, stage: str | None) -> tuple[str, dict[str, dict]]:
    """(stage `stage`, or the run's last finished stage; every finished stage's run.json result)."""
    done = {n: s["result"] for n, s in read_json(run_dir / "run.json")["stages"].items() if s.get("status") == "done"}
    if not done:
        raise KdclError(f"run '{run_dir}' has no finished stage yet; resume it with kdcl train resume={run_dir}")
    name = stage or max(done, key=lambda n: done[n]["index"])
    peers = next((r["peers"] for r in done.values() if r.get("mutual") == name), None)
    if name not in done and peers:  # a mutual group's name: its peers are the stages
        raise KdclError(f"stage={name} trained the peers {', '.join(peers)} together; name one, e.g. stage={peers[0]}")
    if name not in done:
        raise KdclError(
            f"stage={name} is not a finished stage of {run_dir}{did_you_mean(name, done)}; finished: {', '.join(done)}"
        )
    return name, done


def locate(target: str, stage: str | None) -> Located:
    """The checkpoint of a run directory's final stage (or stage `stage`), or a checkpoint file, with
    the config and hyper-parameters saved in it. `kdcl eval` and `kdcl export` find models this way."""
    path, run_dir, recorded = Path(target), None, None
    if path.is_dir():
        if not Manifest.exists(path):
            raise KdclError(f"'{path}' is not a kdcl run directory (no run.json); give a run directory or a .ckpt file")
        name, done = finished_stage(path, stage)
        run_dir, recorded = path, float(done[name]["test_acc"])
        path = path / done[name]["checkpoint"]  # relative to the run (an absolute path stays as it is)
    elif stage is not None:
        raise KdclError(f"stage={stage} needs a run directory; '{target}' is not one (a checkpoint is one stage)")
    _, hparams = load_kdcl_checkpoint(path, "checkpoint")
    if "peers" in hparams and "model" not in hparams:  # a mutual stage's checkpoint: every peer in one file
        names = [p["stage"] for p in hparams["peers"]]
        raise KdclError(f"checkpoint '{path}' holds the peers {', '.join(names)} of mutual stage '{hparams['stage']}'; "
                        f"give one peer's: its run with stage={names[0]}, or its own stage's checkpoint")  # fmt: skip
    if "config" not in hparams or "model" not in hparams:
        raise KdclError(
            f"checkpoint '{path}' was not written by kdcl train (no config inside); give a kdcl stage checkpoint"
        )
    cfg = upgrade_saved(OmegaConf.create(hparams["config"]))
    return Located(path, rebased(cfg, started_in(run_dir) if run_dir else None), hparams, run_dir, recorded)


SAVED_PATHS = ("data.root", "data.download_root", "paths.data_dir", "paths.output_dir", "paths.cache_dir")


def rebased(cfg: DictConfig, origin: Path | None) -> DictConfig:
    """The saved config with its relative data and output paths made absolute from `origin`, the directory
    its run started in (`kdcl eval` and `kdcl export` may run anywhere); overrides given now stay as given."""
    for key in SAVED_PATHS if origin is not None else ():
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            OmegaConf.update(cfg, key, str(origin / value))
    return cfg


@dataclass
class StageModel:
    """A stage's model rebuilt from its checkpoint, and the data it is tested on."""

    located: Located
    data: KdclDataModule
    model: nn.Module

    @property
    def seen_classes(self) -> list[int] | None:
        return self.located.hparams.get("seen_classes")  # a class-incremental stage is tested among these

    @property
    def test_set(self) -> Dataset:
        return of_classes(self.data.test_set, self.seen_classes)


def load_stage(located: Located, overrides: list[str] | None = None) -> StageModel:
    """The stage's model (weights from its checkpoint) and its data, with `data=...` overrides applied."""
    cfg, hp = apply_overrides(located.cfg, overrides or []), located.hparams
    check_data(cfg.data)
    dm = KdclDataModule(cfg.data, seed=cfg.seed)
    dm.setup()
    if dm.num_classes != hp["num_classes"] or dm.in_chans != hp["in_chans"]:
        raise KdclError(
            f"data={cfg.data.name} has {dm.num_classes} classes × {dm.in_chans} channels but the model was trained "
            f"for {hp['num_classes']} × {hp['in_chans']}; evaluate on data with the same classes"
        )
    model = model_from_checkpoint(
        hp["model"], located.checkpoint, ModelInput.of(dm.load(), cfg.data.image_size), "checkpoint"
    )
    return StageModel(Located(located.checkpoint, cfg, hp, located.run_dir, located.run_test_acc), dm, model.eval())


EVAL_GROUPS = ("data",)  # the model comes from the checkpoint; only the data can be swapped


def has_key(cfg: DictConfig, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, throw_on_missing=False) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """`data=fashion_mnist` swaps the data group from conf/; `data.fraction=0.5` sets one key."""
    check_renamed(overrides)
    for item in overrides:
        if "=" not in item:
            raise KdclError(f"'{item}' is not an override; write KEY=VALUE (e.g. data=digits)")
        key, value = item.split("=", 1)
        if key in EVAL_GROUPS:
            group_dir = config_dir() / key
            options = sorted(p.stem for p in group_dir.glob("*.yaml"))
            if value not in options:
                raise KdclError(
                    f"{key}={value}: no such option{did_you_mean(value, options)}; options: {', '.join(options)}"
                )
            cfg[key] = OmegaConf.load(group_dir / f"{value}.yaml")
        elif (config_dir() / key).is_dir():
            raise KdclError(
                f"kdcl eval takes the model from the checkpoint: {key}= cannot be changed; only data=... can"
            )
        elif has_key(cfg, key):
            try:
                OmegaConf.update(cfg, key, yaml_value(value), merge=False)
            except ValidationError as exc:  # a typed node (cascade.confidence is an enumeration): one line
                raise schema_error(exc) from None
        else:
            raise KdclError(f"unknown config key '{key}' in kdcl eval; keys such as data.eval_batch_size can be set")
    return cfg


def yaml_value(text: str):
    import yaml

    return yaml.safe_load(text)
