"""The optimizers of the `optim` config: torch's fused update kernel by default, the same update as its loop."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from omegaconf import OmegaConf

from kdcl.training.optim import build_optimizer


def steps(model: torch.nn.Module, cfg, n: int = 3) -> torch.optim.Optimizer:
    """`n` optimizer steps on fixed gradients (seeded), through build_optimizer as a stage builds it."""
    opt = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg, 10, "s/lr")["optimizer"]
    gen = torch.Generator().manual_seed(0)
    for _ in range(n):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return opt


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_fused_update_is_the_loops_update(name):
    model = timm.create_model("test_resnet", num_classes=3, in_chans=1)
    base = OmegaConf.create({"name": name, "lr": 0.01, "weight_decay": 0.05, "scheduler": "constant",
                             "momentum": 0.9, "nesterov": True})  # fmt: skip
    fused_model, loop_model = copy.deepcopy(model), copy.deepcopy(model)
    fused = steps(fused_model, OmegaConf.merge(base, {"fused": True}))
    loop = steps(loop_model, OmegaConf.merge(base, {"fused": False}))
    assert fused.defaults["fused"] is True and not loop.defaults["fused"]
    moved = 0.0
    for a, b, start in zip(fused_model.parameters(), loop_model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        moved = max(moved, float((a - start).detach().abs().max()))
    assert moved > 1e-3  # the steps changed the weights: the comparison is not of two untouched models


def test_a_parameter_without_a_fused_kernel_falls_back_to_the_loop():
    params = [torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))]
    cfg = OmegaConf.create({"name": "adamw", "lr": 0.01, "weight_decay": 0.0, "scheduler": "constant", "fused": True})
    assert not build_optimizer(params, cfg, 10, "s/lr")["optimizer"].defaults["fused"]
