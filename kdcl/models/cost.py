"""What a model costs to run: multiply-accumulates (torch's own flop counter) and CPU latency."""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_macs(model: nn.Module, in_chans: int, image_size: int) -> int:
    """Multiply-accumulates of one forward pass on one image (torch counts a MAC as 2 flops)."""
    model = model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, in_chans, image_size, image_size, device=next(model.parameters()).device))
    return int(counter.get_total_flops() // 2)


def cpu_latency_ms(model: nn.Module, in_chans: int, image_size: int, batch: int, budget_s: float = 1.0) -> float:
    """Median wall time of one inference-mode forward on the CPU, after two warm-up passes; repeats
    until `budget_s` is spent (at least 3, at most 20 times) so big models do not stall a run."""
    model = copy.deepcopy(model).cpu().eval()
    x = torch.zeros(batch, in_chans, image_size, image_size)
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        spent = 0.0
        while len(times) < 3 or (spent < budget_s and len(times) < 20):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
            spent += times[-1]
    return 1000 * statistics.median(times)


def model_cost(model: nn.Module, in_chans: int, image_size: int, batches: list[int]) -> dict:
    """{macs, latency_ms: {batch: ms}} for the summary's compression columns."""
    return {
        "macs": count_macs(model, in_chans, image_size),
        "latency_ms": {str(b): round(cpu_latency_ms(model, in_chans, image_size, b), 3) for b in batches},
    }
