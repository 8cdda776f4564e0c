"""What a model costs to run: multiply-accumulates (torch's own flop counter) and CPU latency, in eager
PyTorch and in ONNX Runtime. The one place latency is measured: the run's compression report,
`kdcl models --cost`, `kdcl export` and scripts/student_candidates.py all time models here.

Eager PyTorch runs depthwise convolutions and batch-1 calls poorly (Python overhead per module), so a
student can be slower than its teacher there and faster in the runtime it would be deployed with;
both are measured, with the same thread count, and the report says which one its speed-up uses.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

WARMUP = 3  # first calls allocate buffers (ONNX Runtime's arena, oneDNN's primitives)
# Timed calls: at least REPEATS and at least WINDOW_S of them, so that the median of a sub-millisecond
# call is not one scheduler hiccup of a shared machine; a slow model stops after BUDGET_S (≥ 3 calls).
REPEATS, WINDOW_S, BUDGET_S, MAX_REPEATS = 10, 0.1, 1.0, 2000


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call: median and interquartile range of `repeats` timed calls after warm-up."""

    median_ms: float
    spread_ms: float
    repeats: int


@dataclass(frozen=True)
class RuntimeLatency:
    """One runtime's latency at each batch size ("1", "64"), with what it ran on."""

    runtime: str
    version: str
    threads: int
    ms: dict[str, Timing] = field(default_factory=dict)
    note: str | None = None  # why nothing was measured (runtime missing, model not exportable)


@dataclass(frozen=True)
class ModelCost:
    macs: int
    latency: dict[str, RuntimeLatency]  # runtime -> its latency

    def to_json(self) -> dict:
        return asdict(self)


def count_macs(model: nn.Module, in_chans: int, image_size: int) -> int:
    """Multiply-accumulates of one forward pass on one image (torch counts a MAC as 2 flops)."""
    model = model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, in_chans, image_size, image_size, device=next(model.parameters()).device))
    return int(counter.get_total_flops() // 2)


def time_calls(call: Callable[[], object]) -> Timing:
    """Warm up, then time `call` (see REPEATS, WINDOW_S, BUDGET_S)."""
    for _ in range(WARMUP):
        call()
    times: list[float] = []
    spent = 0.0
    while not ((len(times) >= REPEATS and spent >= WINDOW_S) or (len(times) >= 3 and spent >= BUDGET_S)):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        spent += times[-1]
        if len(times) >= MAX_REPEATS:
            break
    q1, _, q3 = statistics.quantiles(times, n=4)
    return Timing(round(1000 * statistics.median(times), 4), round(1000 * (q3 - q1), 4), len(times))


def eager_latency(model: nn.Module, in_chans: int, image_size: int, batches: list[int]) -> RuntimeLatency:
    """Inference-mode forward passes of an fp32 CPU copy of the model (as `kdcl export` exports it)."""
    from kdcl.models.onnx_graph import plain_copy

    model = plain_copy(model)
    ms = {}
    with torch.inference_mode():
        for b in batches:
            x = torch.zeros(b, in_chans, image_size, image_size)
            ms[str(b)] = time_calls(lambda x=x: model(x))
    return RuntimeLatency("eager", f"torch {torch.__version__}", torch.get_num_threads(), ms)


def onnx_latency(graph: bytes | Path, in_chans: int, image_size: int, batches: list[int]) -> RuntimeLatency:
    """session.run of an ONNX graph (fp32 or int8) on the CPU, with torch's thread count."""
    import numpy as np
    import onnxruntime as ort

    from kdcl.models.onnx_graph import run_session, session

    sess = session(graph)
    ms = {}
    for b in batches:
        x = np.zeros((b, in_chans, image_size, image_size), dtype=np.float32)
        ms[str(b)] = time_calls(lambda x=x: run_session(sess, x))
    threads = sess.get_session_options().intra_op_num_threads
    return RuntimeLatency("onnxruntime", f"onnxruntime {ort.__version__}", threads, ms)


def model_onnx_latency(model: nn.Module, in_chans: int, image_size: int, batches: list[int]) -> RuntimeLatency:
    """The model exported as `kdcl export` exports it, timed in ONNX Runtime; a note instead when the
    runtime is not installed or the model cannot be exported (the run's other results still count)."""
    from kdcl.common.errors import KdclError
    from kdcl.models.onnx_graph import INSTALL_HINT, export_onnx, missing_onnx_packages

    missing = missing_onnx_packages()
    if missing:
        return RuntimeLatency("onnxruntime", "", 0, note=f"not measured: {', '.join(missing)} not installed "
                                                           f"({INSTALL_HINT})")  # fmt: skip
    try:
        graph = export_onnx(model, in_chans, image_size)
    except KdclError as exc:
        return RuntimeLatency("onnxruntime", "", 0, note=f"not measured: {exc}")
    return onnx_latency(graph.model, in_chans, image_size, batches)


def model_cost(model: nn.Module, in_chans: int, image_size: int, batches: list[int], runtimes: list[str]) -> ModelCost:
    """MACs, and latency at each batch size in each runtime (none when `batches` is empty)."""
    latency = {}
    for runtime in runtimes if batches else []:
        measure = model_onnx_latency if runtime == "onnxruntime" else eager_latency
        latency[runtime] = measure(model, in_chans, image_size, batches)
    return ModelCost(count_macs(model, in_chans, image_size), latency)


def latency_seconds(call_s: float) -> float:
    """How long `time_calls` runs on a call of `call_s` seconds (a plan's estimate of the latency step)."""
    timed = min(max(REPEATS * call_s, WINDOW_S), max(3 * call_s, BUDGET_S), MAX_REPEATS * call_s)
    return WARMUP * call_s + timed


# what a plan's time estimate measures: each model's training and inference steps on this machine
STEP_REPEATS = 5  # timed steps after one warm-up; their median is taken (a shared VM hiccups)


@dataclass(frozen=True)
class StepTimes:
    """Seconds one model's calls take on this machine, and its sizes: what a plan's estimates multiply."""

    train_s: float  # forward + backward + optimizer step of one training batch
    forward_s: float  # inference forward of one training batch (a teacher run online)
    eval_s: float  # inference forward of one evaluation batch (validation, test, stored-output passes)
    single_s: float  # inference forward of one image (latency at batch 1)
    build_s: float  # creating the model
    state_bytes: int  # its state dict: weights and buffers (a weights-only checkpoint)
    param_bytes: int  # its trainable parameters (what the optimizer's state multiplies)
    modules: int  # leaf modules (the ONNX export's time grows with them)


def median_seconds(call: Callable[[], object], device: torch.device) -> float:
    """The median wall time of STEP_REPEATS calls after one warm-up (on a GPU, after it has finished)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    call()
    times = []
    for _ in range(STEP_REPEATS):
        sync()
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_steps(build: Callable[[], nn.Module], shape: tuple[int, int, int], classes: int, batch: int,
                  eval_batch: int, device: torch.device, bf16: bool = False) -> StepTimes:  # fmt: skip
    """Build the model and time its steps on random images of `shape` (channels, height, width)."""
    started = time.perf_counter()
    model = build().to(device)
    build_s = time.perf_counter() - started
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)  # kdcl's default; its step costs what SGD's does, nearly
    x, y = torch.randn(batch, *shape, device=device), torch.randint(0, classes, (batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    def forward(n: int) -> Callable[[], object]:
        images = torch.randn(n, *shape, device=device)
        return lambda: model(images)

    train_s = median_seconds(train_step, device)
    with torch.inference_mode(), autocast:
        model.eval()
        inference = [median_seconds(forward(n), device) for n in (batch, eval_batch, 1)]
    return StepTimes(train_s, *inference, build_s,
                     sum(t.numel() * t.element_size() for t in model.state_dict().values()),
                     sum(p.numel() * p.element_size() for p in params),
                     sum(1 for m in model.modules() if not list(m.children())))  # fmt: skip
