"""Feature taps: read intermediate activations of a timm model through forward hooks.

A tap is named by a timm feature index (an entry of `model.feature_info`, e.g. 2 = the stride-8
stage), by a module path (`layer2`, `blocks.1.0`), or as `embedding` (the input of the classifier,
i.e. the pooled features). Hooks leave the model untouched, as torchdistill does, so any timm model works.
"""

from __future__ import annotations

import torch
from torch import nn

from kdcl.common.errors import KdclError, did_you_mean

EMBEDDING = "embedding"


def feature_modules(model: nn.Module) -> list[str]:
    """Module paths of timm's feature levels (feature_info), shallow to deep."""
    info = getattr(model, "feature_info", None) or []
    return [f["module"] for f in info if isinstance(f, dict) and "module" in f]


def classifier_path(model: nn.Module) -> str | None:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return next((name for name, m in model.named_modules() if m is head and name), None)


def describe_taps(model: nn.Module) -> str:
    levels = ", ".join(f"{i}={m}" for i, m in enumerate(feature_modules(model)))
    return f"feature indices {levels or '(none)'}, '{EMBEDDING}', or a module path"


def resolve_tap(model: nn.Module, tap, key: str, model_name: str) -> tuple[str, bool]:
    """(module path, read its input instead of its output) for one tap, or a KdclError listing valid taps."""
    levels = feature_modules(model)
    if isinstance(tap, int) and not isinstance(tap, bool):
        if -len(levels) <= tap < len(levels):
            return levels[tap], False
        raise KdclError(f"{key}={tap}: {model_name} has no feature index {tap} (valid: {describe_taps(model)})")
    if tap == EMBEDDING:
        path = classifier_path(model)
        if path is None:
            raise KdclError(f"{key}: {model_name} has no classifier to read the embedding from; use a module path")
        return path, True
    modules = dict(model.named_modules())
    if isinstance(tap, str) and tap and tap in modules:
        return tap, False
    hint = did_you_mean(str(tap), [n for n in modules if n])
    raise KdclError(f"{key}='{tap}' is not a module of {model_name}{hint} (valid: {describe_taps(model)})")


class StoreHook:
    """A forward (pre-)hook that stores one module's output (or input); a class, so ddp_spawn can pickle it."""

    def __init__(self, taps: FeatureTaps, path: str, read_input: bool):
        self.taps, self.path, self.read_input = taps, path, read_input

    def __call__(self, module, args, out=None):
        self.taps.store(self.path, args[0] if self.read_input else out)


class FeatureTaps:
    """Keeps the latest output (or input) of the tapped modules of one model, by module path.

    With `only_with_grad` (the student), evaluation passes store nothing, so no activations of a large
    validation batch are held until the next training step.
    """

    def __init__(self, model: nn.Module, taps: list[tuple[str, bool]], only_with_grad: bool = False):
        self.outputs: dict[str, torch.Tensor] = {}
        self.only_with_grad = only_with_grad
        self.handles = []
        modules = dict(model.named_modules())
        for path, read_input in dict.fromkeys(taps):  # one hook per module, however many terms read it
            hook = StoreHook(self, path, read_input)
            register = modules[path].register_forward_pre_hook if read_input else modules[path].register_forward_hook
            self.handles.append(register(hook))

    def store(self, path: str, value) -> None:
        if self.only_with_grad and not torch.is_grad_enabled():
            return
        self.outputs[path] = value[0] if isinstance(value, (tuple, list)) else value

    def __getitem__(self, path: str) -> torch.Tensor:
        return self.outputs[path]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
