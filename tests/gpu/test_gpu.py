"""kdcl's GPU path on a real GPU (marker `gpu`; scripts/gpu_check.sh runs these): a real run under bf16-mixed,
channels-last and torch.compile with inductor's GPU code generation learns, and the views pass in bf16 stores
what the fp32 pass stores within scripts/gpu_check.py's stated tolerance. Skipped where CUDA is not available
(CI and the 2-core machines test the same switches on the CPU: tests/e2e/test_train.py)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import LEARNED, TINY, summary_of, train_once

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ROOT = Path(__file__).resolve().parents[2]
# trainer=gpu's switches spelled out, plus inductor; five epochs: a teacher sure enough of its classes that
# bf16 moves few argmaxes (a half-trained one has many near-ties: see gpu_check.py's tolerance)
ON_GPU = ["trainer=gpu", "trainer.precision=bf16-mixed", "speed.channels_last=true", "speed.compile=true",
          "speed.compile_backend=inductor", "trainer.max_epochs=5"]  # fmt: skip


def gpu_check():
    """scripts/gpu_check.py as a module: the views measurement and its tolerance, one definition for both."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory) -> Path:
    """teacher=tiny → student=tiny on the GPU, compiled: read by both tests, trained once."""
    torch._dynamo.reset()  # compiled graphs of earlier tests in this process are not reused
    try:
        return train_once(tmp_path_factory.mktemp("gpu"), [*TINY, *ON_GPU])
    finally:
        torch._dynamo.reset()


def test_a_compiled_bf16_channels_last_run_on_the_gpu_learns(cuda_run):
    stages = summary_of(cuda_run)["stages"]
    assert [s["name"] for s in stages] == ["teacher", "student"]
    for stage in stages:  # finite (no bf16 overflow), and learned: the same bar as the CPU runs'
        assert math.isfinite(stage["test_acc"]) and stage["test_acc"] > LEARNED, stage
    environment = json.loads((cuda_run / "environment.json").read_text())
    assert environment["device"] == torch.cuda.get_device_name(0)
    # checkpoints keep plain fp32 weights under the model's own keys (no compile prefix, no bf16 copies)
    state = torch.load(cuda_run / "stages/01-student/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert state and not any("_orig_mod" in k for k in state)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


def test_the_views_pass_in_bf16_stores_the_fp32_logits_within_the_tolerance(cuda_run):
    from kdcl.deploy.locate import load_stage, locate

    check = gpu_check()
    stage = load_stage(locate(str(cuda_run), "teacher"))  # the trained teacher, on the data it was trained on
    teacher = stage.model.to(memory_format=torch.channels_last)  # as the run held it (speed.channels_last)
    measured = check.views_agreement(teacher, stage.data.train_set, stage.data.scale)
    assert measured["bf16_store_dtype"] == "bfloat16", measured  # autocast took effect: not fp32 against itself
    assert measured["max_abs_diff"] > 0, measured  # ... and changed the numbers
    assert measured["argmax_agreement"] >= check.AGREEMENT_MIN, check.views_text(measured)
    assert measured["max_abs_diff_rel"] <= check.MAX_ABS_DIFF_REL, check.views_text(measured)
    assert measured["within_tolerance"]
