"""Create timm models for a dataset, load pretrained weights (hub or local file) and kdcl checkpoints, freeze
teachers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub.errors import HfHubHTTPError
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdcl.common.errors import KdclError
from kdcl.common.io import check_weights_file, load_state_dict_file
from kdcl.models.hub import architecture_of, hub_failure
from kdcl.models.input_norm import InputNorm, ModelInput, attach_input_norm, pretrained_norm
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
    if fixed_input_size(name):
        kwargs["img_size"] = image_size  # ViT-style models build position embeddings for one input size
    return kwargs


def fixed_input_size(name: str) -> bool:
    """Whether the architecture is built for one input size (a hub id's architecture read from its config)."""
    architecture = architecture_of(name)
    pretrained_cfg = timm.models.get_pretrained_cfg(architecture) if architecture else None
    return bool(pretrained_cfg is not None and pretrained_cfg.fixed_input_size)


def pretrained_source(cfg) -> str | None:
    """Where the model's pretrained weights come from: a local file (`weights`), timm's hub (`pretrained`),
    or None (random initialisation)."""
    if cfg.get("weights"):
        return "file"
    return "hub" if cfg.get("pretrained") else None


def timm_model(cfg, inputs: ModelInput, key: str, load_pretrained: bool) -> nn.Module:
    """`timm.create_model` with the data's class count and input channels; pretrained weights through timm's
    own loader, which adapts the first conv to `in_chans` and re-initialises the head when the class count
    differs (the transfer-learning case). A local file goes through the same loader as the hub's weights."""
    kwargs = timm_kwargs(cfg.name, inputs.num_classes, inputs.in_chans, inputs.image_size)
    kwargs["drop_rate"] = float(cfg.get("drop_rate", 0.0))
    source = pretrained_source(cfg) if load_pretrained else None
    if source == "file":
        check_weights_file(cfg.weights, f"{key}.weights")  # one clear error if corrupt, before timm reads it
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(Path(cfg.weights).resolve())))
    elif source == "hub":
        kwargs["pretrained"] = True
    try:
        return timm.create_model(cfg.name, **kwargs)
    except KdclError:
        raise
    except Exception as exc:
        if source == "hub" and isinstance(exc, (OSError, HfHubHTTPError)):  # not cached, no network, no repository
            raise KdclError(hub_failure(cfg.name, key, exc)) from None
        what = f"{key}.weights '{cfg.weights}'" if source == "file" else f"{key}.name '{cfg.name}'"
        raise KdclError(
            f"{what} could not be loaded into {cfg.name} ({str(exc)[:200]}); check model and file"
        ) from None


def create_model(cfg: DictConfig, inputs: ModelInput, key: str) -> nn.Module:
    """A timm model for the data (`inputs`) that normalises its own input (kdcl/models/input_norm.py).

    Its weights: `cfg.checkpoint` (a kdcl checkpoint, used as-is), else its pretrained weights (`cfg.weights`
    or `cfg.pretrained`), else random. Its normalisation: the one the checkpoint recorded, else the
    pretrained weights' own (timm's pretrained_cfg) when it has any, else the data's.
    """
    check_model_cfg(cfg, key)
    checkpoint = cfg.get("checkpoint")
    model = timm_model(cfg, inputs, key, load_pretrained=not checkpoint)
    norm = pretrained_norm(model, inputs.in_chans) if pretrained_source(cfg) else inputs.data_norm
    if checkpoint:
        state, hparams = load_kdcl_checkpoint(checkpoint, f"{key}.checkpoint")
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)[:160]
            raise KdclError(
                f"{key}.checkpoint '{checkpoint}' does not fit {key}.name={cfg.name} with "
                f"{inputs.num_classes} classes ({first}); set {key}.name to the checkpoint's model"
            ) from None
        if hparams:  # a kdcl checkpoint: the normalisation it was trained with (the data's before kdcl recorded it)
            norm = InputNorm.from_json(hparams["input_norm"]) if "input_norm" in hparams else inputs.data_norm
    return attach_input_norm(model, norm)


def model_from_checkpoint(model_cfg: dict, checkpoint: Path | str, inputs: ModelInput, key: str) -> nn.Module:
    """The model a stage trained, rebuilt from its kdcl checkpoint: the stage's model settings with the weights
    read from `checkpoint` (no pretrained weights are loaded). The one way kdcl rebuilds a finished stage's
    model (later stages' teachers, kdcl eval, the cascade)."""
    cfg = OmegaConf.create({**model_cfg, "checkpoint": str(checkpoint)})
    return create_model(cfg, inputs, key)


def create_skeleton(name: str, image_size: int) -> nn.Module | None:
    """The architecture on the meta device (shapes only, no memory, no weights), or None if it cannot be."""
    kwargs: dict[str, Any] = {"img_size": image_size} if fixed_input_size(name) else {}
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
