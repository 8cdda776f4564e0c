"""The Trainer spec, optimizer and report settings take effect; `kdcl eval` reproduces a lifelong stage.

Runs in-process on the real pieces (Hydra composition, the plan, Lightning Trainers, timm test models,
digits), the way `kdcl train` runs them after its checks.
"""

from __future__ import annotations

import json

import pytest
import torch

from kdcl.cli import main
from kdcl.commands.eval import eval_command
from kdcl.config.compose import compose
from kdcl.run.runner import run_pipeline
from kdcl.run.validate import check_config
from tests.conftest import SEED

QUICK = ["teacher=tiny", "student=tiny", "progress_bar=none", "logger=none", "trainer.max_epochs=1", f"seed={SEED}"]


def train(tmp_path, name: str, *overrides: str) -> dict:
    run_dir = tmp_path / name
    run_pipeline(check_config(compose([*QUICK, *overrides])), run_dir)
    return json.loads((run_dir / "summary.json").read_text()) | {"run_dir": run_dir}


def global_step(run_dir, stage: str) -> int:
    ckpt = torch.load(run_dir / "stages" / stage / "checkpoints" / "last.ckpt", weights_only=True)
    return int(ckpt["global_step"])


@pytest.fixture(scope="module")
def baseline_runs(tmp_path_factory):
    """The student alone for four batches: plainly, and accumulating gradients over two batches."""
    tmp = tmp_path_factory.mktemp("trainer_spec")
    common = ["pipeline=baseline", "trainer.limit_train_batches=4"]
    return {
        "plain": train(tmp, "plain", *common),
        "accumulate": train(tmp, "accumulate", *common, "+trainer.accumulate_grad_batches=2", "~latency"),
    }


def test_any_trainer_argument_takes_effect(baseline_runs):
    assert global_step(baseline_runs["plain"]["run_dir"], "00-student") == 4
    assert global_step(baseline_runs["accumulate"]["run_dir"], "00-student") == 2  # half the optimizer steps


def test_latency_is_measured_in_both_runtimes_unless_the_latency_node_is_removed(baseline_runs):
    plain, removed = baseline_runs["plain"]["stages"][0], baseline_runs["accumulate"]["stages"][0]
    assert sorted(plain["latency"]) == ["eager", "onnxruntime"]
    for runtime in plain["latency"].values():
        assert runtime["threads"] == torch.get_num_threads() and runtime["version"] and runtime["note"] is None
        assert sorted(runtime["ms"]) == ["1", "64"]
        # REPEATS timed calls when the time budget allows; a slow or busy machine stops at 3 (kdcl/models/cost.py)
        assert all(t["median_ms"] > 0 and t["spread_ms"] >= 0 and t["repeats"] >= 3 for t in runtime["ms"].values())
    assert baseline_runs["plain"]["speedup_runtime"] == "onnxruntime"
    assert plain["speedup"] == {"1": 1.0, "64": 1.0}  # the only model is its own reference
    assert sorted(baseline_runs["plain"]["latency_runtimes"]) == ["eager", "onnxruntime"]
    assert removed["latency"] == {}  # `~latency`: no latency measured, and no complaint
    assert removed["macs"] == plain["macs"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["optim=sgd", "optim.momentum=0"], "optim.momentum=0 with optim.nesterov=true"),
        (
            ["+trainer.acumulate_grad_batches=4"],
            "is not an argument of pytorch_lightning.Trainer; did you mean accumulate_grad",
        ),
        (["+trainer.callbacks=[]"], "trainer.callbacks is set by kdcl"),
        (["trainer.precision=16-mixed", "+trainer.gradient_clip_val=1"], "add optim.fused=false"),
    ],
)
def test_bad_trainer_or_optimizer_settings_are_one_line_before_any_work(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["train", *args])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1
    assert message in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_sgd_without_momentum_trains_when_nesterov_is_off():
    plan = check_config(compose(["optim=sgd", "optim.momentum=0", "optim.nesterov=false"]))
    assert plan.cfg.optim.nesterov is False and plan.cfg.optim.momentum == 0


def test_eval_of_a_lifelong_stage_reproduces_its_summary_accuracy(tmp_path, capsys):
    summary = train(tmp_path, "lifelong", "pipeline=lifelong", "pipeline.tasks=2", "data.fraction=0.5",
                    "latency.batches=[]")  # fmt: skip
    for stage in summary["stages"]:
        evaluated = eval_command([str(summary["run_dir"]), f"stage={stage['name']}"])
        assert evaluated["test_acc"] == pytest.approx(stage["test_acc"], abs=1e-6), stage["name"]
    task1 = json.loads((summary["run_dir"] / "stages" / "00-task1" / "metrics.json").read_text())
    assert sum(task1["test_per_class"]["total"]) < 360  # task 1 is tested on its own 5 classes only
