"""Create timm models for a dataset, load local weights and kdcl checkpoints, freeze teachers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdcl.common.errors import KdclError
from kdcl.common.io import check_weights_file, load_state_dict_file
from kdcl.models.names import check_model_name


def check_model_cfg(cfg, key: str) -> None:
    check_model_name(cfg.get("name"), f"{key}.name")
    drop_rate = cfg.get("drop_rate", 0.0)
    if not isinstance(drop_rate, (int, float)) or not 0 <= drop_rate < 1:
        raise KdclError(f"{key}.drop_rate={drop_rate} must be a number in [0, 1)")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def timm_kwargs(name: str, num_classes: int, in_chans: int, image_size: int) -> dict[str, Any]:
    """The arguments kdcl gives `timm.create_model` besides the name: everything that shapes the model
    (`kdcl export` writes them into its sidecar, so plain timm rebuilds the same architecture)."""
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans}
    pretrained_cfg = timm.models.get_pretrained_cfg(name.split(".")[0])
    if pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        kwargs["img_size"] = image_size  # ViT-style models build position embeddings for one input size
    return kwargs


def create_model(cfg: DictConfig, num_classes: int, in_chans: int, image_size: int, key: str) -> nn.Module:
    """A timm model with the dataset's class count and input channels.

    `cfg.weights` (a local timm-compatible file) goes through timm's own pretrained loader, which adapts
    the first conv to `in_chans` and re-initialises the head when the class count differs: the
    transfer-learning case. Nothing is fetched from a hub unless the user names no file and asks for it.
    """
    check_model_cfg(cfg, key)
    kwargs = timm_kwargs(cfg.name, num_classes, in_chans, image_size) | {"drop_rate": float(cfg.get("drop_rate", 0.0))}
    if cfg.get("weights"):
        check_weights_file(cfg.weights, f"{key}.weights")  # one clear error if corrupt, before timm reads it
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(Path(cfg.weights).resolve())))
    try:
        model = timm.create_model(cfg.name, **kwargs)
    except KdclError:
        raise
    except Exception as exc:
        what = f"{key}.weights '{cfg.weights}'" if cfg.get("weights") else f"{key}.name '{cfg.name}'"
        raise KdclError(
            f"{what} could not be loaded into {cfg.name} ({str(exc)[:200]}); check model and file"
        ) from None
    if cfg.get("checkpoint"):
        state, _ = load_kdcl_checkpoint(cfg.checkpoint, f"{key}.checkpoint")
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)[:160]
            raise KdclError(
                f"{key}.checkpoint '{cfg.checkpoint}' does not fit {key}.name={cfg.name} with "
                f"{num_classes} classes ({first}); set {key}.name to the checkpoint's model"
            ) from None
    return model


def model_from_checkpoint(model_cfg: dict, checkpoint: Path | str, num_classes: int, in_chans: int, image_size: int,
                          key: str) -> nn.Module:  # fmt: skip
    """The model a stage trained, rebuilt from its kdcl checkpoint: the stage's model settings with the weights
    read from `checkpoint` (not from a pretrained file). The one way kdcl rebuilds a finished stage's model
    (later stages' teachers, kdcl eval, the cascade)."""
    cfg = OmegaConf.create({**model_cfg, "checkpoint": str(checkpoint), "weights": None})
    return create_model(cfg, num_classes, in_chans, image_size, key)


def create_skeleton(name: str, image_size: int) -> nn.Module | None:
    """The architecture on the meta device (shapes only, no memory, no weights), or None if it cannot be."""
    kwargs: dict[str, Any] = {}
    pretrained_cfg = timm.models.get_pretrained_cfg(name.split(".")[0])
    if pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        kwargs["img_size"] = image_size
    try:
        with torch.device("meta"):
            return timm.create_model(name, **kwargs).eval()
    except Exception:
        return None


def load_kdcl_checkpoint(path: str | Path, key: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(model state dict, hyper-parameters) from a kdcl stage checkpoint or a plain state-dict file."""
    obj = load_state_dict_file(path, key)
    if "state_dict" in obj:
        state = {k.removeprefix("model."): v for k, v in obj["state_dict"].items() if k.startswith("model.")}
        if not state:
            raise KdclError(f"{key} '{path}' is a Lightning checkpoint without kdcl model weights")
        return state, dict(obj.get("hyper_parameters") or {})
    return obj, {}


class FrozenTeacher(nn.Module):
    """A teacher that stays frozen: no grad, eval mode whatever `.train()` is called with."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenTeacher:  # noqa: ARG002 — eval mode is the point
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
