"""Feature taps: read intermediate activations of a timm model through forward hooks.

A tap is named by a timm feature index (an entry of `model.feature_info`, e.g. 2 = the stride-8
stage), by a module path (`layer2`, `blocks.1.0`), or as `embedding` (the input of the classifier,
i.e. the pooled features). Hooks leave the model untouched, as torchdistill does, so any timm model works.

Terms that need pre-activation features (OFD) move each tap to where its output was before the block's final
activation (`pre_activation`): the input of that activation, e.g. `layer2.1.act2` of a timm ResNet-18.
"""

from __future__ import annotations

from dataclasses import dataclass

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


# the modules whose classes live here are activations (plus gates and attention, which never end a block)
ACTIVATION_MODULES = {"torch.nn.modules.activation", "timm.layers.activations", "timm.layers.activations_me"}
SHORTCUT_NAMES = {"downsample", "shortcut"}  # timm's names of a residual block's shortcut branch


def is_activation(module: nn.Module) -> bool:
    return type(module).__module__ in ACTIVATION_MODULES


def on_main_path(path: str) -> bool:
    return not SHORTCUT_NAMES & set(path.split("."))


@dataclass(frozen=True)
class PreActivation:
    tap: tuple[str, bool]  # (module path, read its input): where the tapped output is before its activation
    norm: str | None  # the batch norm that ran last on the main path before that point (None: there is none)


def pre_activation(model: nn.Module, paths: list[str], example: torch.Tensor) -> list[PreActivation]:
    """For each tapped module: the activation that produced its output, found by one eval forward of `example`
    without grad (the activation whose output tensor *is* the module's output, unchanged since: in-place ReLUs
    return their input), read at its input; a module whose output no activation produced (mobilenetv3's stages
    end in a linear projection) is read as it is. With it, the last batch norm started before that point,
    skipping the shortcut branch, as mdistiller takes a ResNet stage's last bn2 / bn3 for OFD's margin."""
    events: list[Event] = []
    watched = {n: m for n, m in model.named_modules() if n in paths or is_activation(m) or is_norm(n, m)}
    handles = []
    for name, module in watched.items():
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: events.append(Event(n, "start"))))
        handles.append(
            module.register_forward_hook(lambda m, a, o, n=name: events.append(Event(n, "end", o, version(o))))
        )
    was_training = model.training
    try:
        with torch.no_grad():
            model.train(False)
            model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return [locate_pre_activation(path, events, watched) for path in paths]


@dataclass(frozen=True)
class Event:
    """A watched module starting or ending in pre_activation's forward, with what it returned."""

    path: str
    kind: str  # "start" | "end"
    output: object = None
    version: int | None = None  # the output's in-place version counter when the module returned it


def version(value) -> int | None:
    return value._version if isinstance(value, torch.Tensor) else None


def is_norm(path: str, module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and on_main_path(path)


def locate_pre_activation(path: str, events: list[Event], watched: dict[str, nn.Module]) -> PreActivation:
    end = max(i for i, e in enumerate(events) if e.path == path and e.kind == "end")
    out = events[end]
    producers = [i for i, e in enumerate(events[: end + 1]) if e.kind == "end" and e.output is out.output
                 and e.version == out.version and is_activation(watched[e.path])
                 and (e.path == path or e.path.startswith(path + "."))]  # fmt: skip
    tap, before = (path, False), end
    if producers:
        act = events[producers[-1]].path
        tap = (act, True)
        before = max(i for i, e in enumerate(events[: producers[-1]]) if e.path == act and e.kind == "start")
    norms = [e.path for e in events[:before] if e.kind == "start" and is_norm(e.path, watched[e.path])]
    return PreActivation(tap, norms[-1] if norms else None)


class StoreHook:
    """A forward (pre-)hook that stores one module's output (or input); a class, so ddp_spawn can pickle it.
    An input is stored as a copy: an in-place activation would overwrite it (a pre-activation tap)."""

    def __init__(self, taps: FeatureTaps, path: str, read_input: bool):
        self.taps, self.path, self.read_input = taps, path, read_input

    def __call__(self, module, args, out=None):
        if self.taps.wanted():
            self.taps.store((self.path, self.read_input), args[0].clone() if self.read_input else out)


class FeatureTaps:
    """Keeps the latest output (or input) of the tapped modules of one model, by (module path, read input).

    With `only_with_grad` (the student), evaluation passes store nothing, so no activations of a large
    validation batch are held until the next training step.
    """

    def __init__(self, model: nn.Module, taps: list[tuple[str, bool]], only_with_grad: bool = False):
        self.outputs: dict[tuple[str, bool], torch.Tensor] = {}
        self.only_with_grad = only_with_grad
        self.handles = []
        modules = dict(model.named_modules())
        for path, read_input in dict.fromkeys(taps):  # one hook per module, however many terms read it
            hook = StoreHook(self, path, read_input)
            register = modules[path].register_forward_pre_hook if read_input else modules[path].register_forward_hook
            self.handles.append(register(hook))

    def wanted(self) -> bool:
        return torch.is_grad_enabled() or not self.only_with_grad

    def store(self, tap: tuple[str, bool], value) -> None:
        self.outputs[tap] = value[0] if isinstance(value, (tuple, list)) else value

    def __getitem__(self, tap: tuple[str, bool]) -> torch.Tensor:
        return self.outputs[tap]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
