"""Deep mutual learning (pipeline=dml) on digits, end to end: two peers trained together both learn, each is a
stage of its own in the report and exports to timm with the weights it trained, a run killed (SIGKILL) at a
random step resumes to the same results, and a curriculum runs on it. One shared run (module fixture) serves
as the trained run and as the resume test's uninterrupted reference."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import LEARNED, TINY, in_process, summary_of

# two tiny peers, three epochs on half the training set in batches of 32 (about 20 steps an epoch)
ARGS = [*TINY, "trainer=cpu", "trainer.max_epochs=3", "pipeline=dml", "data.fraction=0.5", "data.batch_size=32",
        "latency.batches=[]"]  # fmt: skip
PEERS = ("dml1", "dml2")
METRICS = ("name", "test_acc", "test_loss", "best_val_acc", "checkpoint", "val_curve")


@pytest.fixture(scope="module")
def dml_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("dml")
    proc = in_process(["train", *ARGS, f"hydra.run.dir={cwd / 'run'}"], cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cwd / "run"


def logged(run_dir: Path, tag: str) -> list[float]:
    """A scalar's values in the mutual stage's TensorBoard section, in step order."""
    events = EventAccumulator(str(run_dir / "tensorboard" / "00-dml"))
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


def test_both_peers_learn_together_and_improve_over_their_own_first_epoch(dml_run):
    rows = {s["name"]: s for s in summary_of(dml_run)["stages"]}
    assert list(rows) == list(PEERS)
    for name, row in rows.items():
        assert (row["mutual"], row["peers"], row["teachers"], row["epochs"]) == ("dml", list(PEERS), [], 3)
        val_loss = logged(dml_run, f"{name}/val/loss")
        assert len(val_loss) == len(row["val_curve"]) == 3, (val_loss, row["val_curve"])
        assert val_loss[-1] < val_loss[0], (val_loss, row)  # loss, not accuracy: a tiny model's accuracy may plateau
        assert row["test_acc"] >= LEARNED, row
        assert logged(dml_run, f"{name}/train/loss_kd_epoch")[0] > 0  # it learned from its peer too
    # the peers started apart (each from its own seed) and are two models, not one
    first, second = (torch.load(dml_run / rows[n]["checkpoint"], weights_only=True)["state_dict"] for n in PEERS)
    assert first.keys() == second.keys() and any(not torch.equal(first[k], second[k]) for k in first)
    md = (dml_run / "summary.md").read_text()
    assert "| dml1 | test_efficientnet | ↔ dml2 |" in md and "| dml2 | test_efficientnet | ↔ dml1 |" in md
    assert [c["stage"] for c in summary_of(dml_run)["report_card"]] == list(PEERS)
    timing = summary_of(dml_run)["timing"]
    assert list(timing["stages"]) == ["dml"]  # the peers trained at once: one entry, its time counted once
    assert timing["stages"]["dml"]["seconds"] <= timing["parts"]["stages"]


def timm_recipe(export_dir: Path) -> dict:
    return json.loads((export_dir / "model.json").read_text())["safetensors"]["timm"]


def timm_model_of(export_dir: Path) -> torch.nn.Module:
    """The exported peer as plain timm loads it, from its safetensors file and sidecar."""
    recipe = timm_recipe(export_dir)
    overlay = {**recipe["pretrained_cfg_overlay"], "file": str(export_dir / "model.safetensors")}
    return timm.create_model(recipe["name"], pretrained=True, pretrained_cfg_overlay=overlay, **recipe["kwargs"]).eval()


def trained_peer(run_dir: Path, k: int, recipe: dict) -> torch.nn.Module:
    """Peer k as the mutual stage trained it: its weights in the group's checkpoint (every peer in one file)."""
    state = torch.load(run_dir / "stages/00-dml/checkpoints/best.ckpt", weights_only=True)["state_dict"]
    prefix = f"model.peers.{k}."
    peer = timm.create_model(recipe["name"], **recipe["kwargs"])
    peer.load_state_dict({n.removeprefix(prefix): v for n, v in state.items() if n.startswith(prefix)})
    return peer.eval()


def test_each_peer_exports_to_timm_with_the_weights_it_trained(dml_run, tmp_path):
    outputs = []
    for k, name in enumerate(PEERS):
        proc = in_process(["export", str(dml_run), f"stage={name}", f"out={tmp_path / name}"], tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        sidecar = json.loads((tmp_path / name / "model.json").read_text())
        assert sidecar["stage"] == name and sidecar["safetensors"]["verified"]["max_abs_logit_diff"] <= 1e-5
        shape = (8, sidecar["in_chans"], sidecar["image_size"], sidecar["image_size"])
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))  # normalised input, as timm takes
        with torch.inference_mode():
            got, want = timm_model_of(tmp_path / name)(x), trained_peer(dml_run, k, timm_recipe(tmp_path / name))(x)
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
        outputs.append(got)
    assert not torch.allclose(outputs[0], outputs[1])  # two peers, two models
    group = in_process(["export", str(dml_run), "stage=dml"], tmp_path)
    assert group.returncode == 2 and "stage=dml trained the peers dml1, dml2 together; name one" in group.stderr


def test_a_dml_run_killed_at_a_random_step_resumes_to_the_same_results(dml_run, tmp_path):
    run_dir = tmp_path / "run"
    log = tmp_path / "killed.log"  # a file, not a pipe: a pipe nobody reads can fill up and stall the child
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kdcl.cli", "train", *ARGS, f"hydra.run.dir={run_dir}"],
                                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    last = run_dir / "stages" / "00-dml" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert last.is_file(), log.read_text()[-3000:]
    first, started = last.stat().st_mtime_ns, time.time()  # epoch 1 saved: time epoch 2 to learn an epoch's length
    while last.stat().st_mtime_ns == first and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    delay = random.Random(26).uniform(0.0, 0.9 * (time.time() - started))  # a step of epoch 3 (seeded)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = f"killed {delay:.2f}s into epoch 3; its output:\n{log.read_text()[-3000:]}"
    assert proc.returncode == -signal.SIGKILL, killed
    stages = json.loads((run_dir / "run.json").read_text())["stages"]
    assert [stages[n]["status"] for n in PEERS] == ["running", "running"], killed

    resumed = in_process(["train", f"resume={run_dir}"], tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "[dml] epoch 1/3" not in resumed.stdout  # continued, not restarted
    if "[dml] epoch 3/3" not in log.read_text():  # killed before its last epoch ended (a busy CPU may be later)
        assert "[dml] epoch 3/3" in resumed.stdout
    expected = [{k: s[k] for k in METRICS} for s in summary_of(dml_run)["stages"]]
    assert [{k: s[k] for k in METRICS} for s in summary_of(run_dir)["stages"]] == expected, killed


def test_a_curriculum_runs_on_dml_scored_by_out_of_fold_copies_of_a_peer(tmp_path):
    args = [*ARGS, "trainer.max_epochs=1", "data.fraction=0.3", "curriculum=linear", "curriculum.source=folds",
            "curriculum.folds=2", "curriculum.fold_epochs=1", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    proc = in_process(["train", *args], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "run"
    done = json.loads((run_dir / "run.json").read_text())["stages"]
    assert list(done) == ["dml_fold1", "dml_fold2", *PEERS] and all(s["status"] == "done" for s in done.values())
    scores = torch.load(run_dir / "stages/02-dml/scores.pt", weights_only=True)  # one order for the cohort
    assert scores["source"] == "folds" and len(scores["scores"]) == len(scores["labels"])
    assert [s["name"] for s in summary_of(run_dir)["stages"]] == list(PEERS)  # the fold models are means only
