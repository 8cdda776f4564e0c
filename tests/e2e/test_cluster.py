"""Beyond one process: DDP under torchrun, sweeps through submitit (a preempted job requeued and resumed),
a search with Optuna, a sweep that survives a failing job, the SLURM preset, the optional extras."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import LEARNED, SEED, TINY, in_process, run_dir_of, summary_of

# A two-stage run whose teacher is the shared tiny run's (tested, not trained again): the student learns
# from stored teacher outputs in a curriculum, three epochs on half the training set.
CLUSTER_RUN = [*TINY, "trainer.max_epochs=3", "curriculum=linear", "curriculum.start=0.25", "curriculum.full_at=0.6",
               "distill.teacher_outputs=cached", "data.fraction=0.5", "latency.batches=[]"]  # fmt: skip
# sweep jobs that take seconds: a few batches of one epoch
FEW = [*TINY, "trainer=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2",
       "trainer.limit_test_batches=1", "latency.batches=[]"]  # fmt: skip
DIGITS_TEST_EXAMPLES = 360


def teacher_of(tiny_run: Path) -> str:
    return f"teacher.checkpoint={tiny_run / 'stages/00-teacher/checkpoints/best.ckpt'}"


@pytest.fixture(scope="module")
def reference(tiny_run, tmp_path_factory) -> Path:
    """CLUSTER_RUN in one process on the CPU: what DDP and a preempted sweep job are compared with."""
    cwd = tmp_path_factory.mktemp("reference")
    proc = in_process(["train", "trainer=cpu", *CLUSTER_RUN, teacher_of(tiny_run)], cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir_of(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kdcl_process(args: list[str], cwd: Path, prefix: list[str] | None = None, **kwargs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [*(prefix or [sys.executable]), "-m", "kdcl", *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)  # fmt: skip


def test_torchrun_two_ranks_match_one_process_and_test_every_example_once(reference, tiny_run, tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"]
    # two ranks of 32 examples: the global batch of one process's 64
    proc = kdcl_process(["train", "trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32-true",
                         *CLUSTER_RUN, "data.batch_size=32", teacher_of(tiny_run)], tmp_path, prefix=torchrun)  # fmt: skip
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    run = run_dir_of(subprocess.CompletedProcess([], 0, out, err))
    assert list((tmp_path / "outputs" / "train").glob("*/*")) == [run]  # both ranks wrote into one run directory
    assert out.count("run directory:") == 1  # the first rank speaks for the run
    ddp, single = summary_of(run)["stages"], summary_of(reference)["stages"]
    manifest = json.loads((run / "run.json").read_text())["stages"]
    for name in ("teacher", "student"):  # each rank tested its share; every test example counted once
        assert sum(manifest[name]["result"]["test_per_class"]["total"]) == DIGITS_TEST_EXAMPLES
    assert ddp[0]["test_acc"] == single[0]["test_acc"]  # the same teacher on the same examples: the same count
    # two ranks of 32 took the optimizer steps of one process at 64 (not twice as many: the global batch)
    steps = [torch.load(r / "stages/01-student/checkpoints/last.ckpt", weights_only=True)["global_step"]
             for r in (run, reference)]  # fmt: skip
    assert steps[0] == steps[1], steps
    # the student's accuracy is another trajectory's (per-rank batch norm, another summation order): it learned
    assert ddp[1]["test_acc"] > LEARNED
    stored = torch.load(run / "stages/01-student/teacher_logits.pt", weights_only=True)
    assert stored["filled"].all()  # the curriculum's one pass stored every example's teacher logits
    scores = [torch.load(r / "stages/01-student/scores.pt", weights_only=True)["scores"] for r in (run, reference)]
    torch.testing.assert_close(scores[0], scores[1])  # the same teacher scored the same examples


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def test_submitit_sweep_requeues_a_preempted_job_which_ends_as_if_never_stopped(reference, tiny_run, tmp_path):
    sweep = tmp_path / "sweep"
    proc = kdcl_process(["train", "-m", "hydra/launcher=submitit_local", "trainer=cpu", *CLUSTER_RUN,
                         teacher_of(tiny_run), f"seed={SEED}", f"hydra.sweep.dir={sweep}"], tmp_path)  # fmt: skip
    # SLURM warns a job with USR2 before preempting it or at its time limit; submitit then requeues it
    wait_for(sweep / "0/stages/01-student/checkpoints/last.ckpt", proc)  # mid-stage: after epoch 1 of 3
    holder = json.loads((sweep / "0/.lock").read_text())["pid"]  # the job's process holds its run
    os.kill(holder, signal.SIGUSR2)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    jobs = json.loads((sweep / "sweep.json").read_text())["jobs"]
    assert [(j["job"], j["status"]) for j in jobs] == [(0, "done")]  # one job: what requeuing needs
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0"]
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.out"))
    assert f"requeued: continuing {sweep / '0'}" in logs  # the same run directory, not a new one
    assert "[teacher] already done" in logs
    resumed, uninterrupted = summary_of(sweep / "0")["stages"], summary_of(reference)["stages"]
    for a, b in zip(resumed, uninterrupted, strict=True):
        assert (a["test_acc"], a["test_loss"], a["best_val_acc"]) == (b["test_acc"], b["test_loss"], b["best_val_acc"])


def test_kd_optuna_search_finds_best_settings_on_validation_and_report_renders_them(tiny_run, tmp_path):
    sweep = tmp_path / "search"
    proc = in_process(["train", "-m", "hparams_search=kd_optuna", "hydra.sweeper.n_trials=3", *FEW, teacher_of(tiny_run),
                       f"hydra.sweep.dir={sweep}"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = OmegaConf.load(sweep / "optimization_results.yaml")
    assert set(found.best_params) == {"distill.temperature", "distill.terms.kd.weight", "optim.lr"}
    val_accs = [summary_of(sweep / str(i))["stages"][-1]["best_val_acc"] for i in range(3)]
    assert found.best_value == max(val_accs)  # the objective is validation accuracy, never the test set's
    report = in_process(["report", str(sweep)], tmp_path)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert f"val acc {100 * max(val_accs):.2f} %" in report.stdout
    search = json.loads((sweep / "search.json").read_text())
    assert len(search["trials"]) == 3 and set(search["importance"]) == set(found.best_params)
    assert search["best"]["params"] == pytest.approx(dict(found.best_params))
    for plot in ("search_history.png", "search_importance.png"):
        assert (sweep / plot).stat().st_size > 1000


def image_folder(root: Path, broken: bool) -> Path:
    """Digits as PNG files in class folders; `broken`: one of them is not an image."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images[:200], digits.target[:200], strict=True)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 15).astype("uint8")).save(root / str(label) / f"{i}.png")
    if broken:
        (root / "3" / "3.png").write_bytes(b"not a png")
    return root


def test_a_failing_sweep_job_is_recorded_the_others_finish_and_the_sweep_exits_non_zero(tmp_path):
    good, bad = image_folder(tmp_path / "good", broken=False), image_folder(tmp_path / "bad", broken=True)
    # job directories named by their own pattern, the sweep one level down (as scripts/teacher_curricula.sh lays
    # its arms out): the failure must still be found, counted in the exit status and reported
    sweep = tmp_path / "arms" / "baseline"
    proc = in_process(["train", "-m", *FEW, "pipeline=baseline", "data=image_folder", "data.image_size=32",
                       "data.num_workers=0", f"data.root={good},{bad}", f"hydra.sweep.dir={sweep}",
                       "hydra.sweep.subdir=run${hydra.job.num}"], tmp_path)  # fmt: skip
    assert proc.returncode == 5, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 2 sweep jobs failed (#1 (run1) ") and f"data.root={bad}" in last, last
    assert (sweep / "run0" / "summary.json").is_file()  # the other job ran to its end
    failure = json.loads((sweep / "run1" / "failure.json").read_text())
    assert f"data.root={bad}" in failure["overrides"] and failure["error"]
    jobs = json.loads((sweep / "sweep.json").read_text())["jobs"]
    assert [(j["job"], j["dir"], j["status"]) for j in jobs] == [(0, "run0", "done"), (1, "run1", "failed")]
    report = in_process(["report", str(tmp_path / "arms")], tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "failed: job #1 (baseline/run1) " in report.stdout
    assert "Failed jobs (1)" in (tmp_path / "arms" / "report.md").read_text()


def test_slurm_preset_composes_with_the_cluster_knobs(tmp_path):
    proc = in_process(["train", "trainer=ddp", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                       "hydra.launcher.account=proj", "hydra.launcher.gpus_per_node=4", "hydra.launcher.nodes=2",
                       "trainer.num_nodes=2", "--cfg", "all", "--resolve"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = OmegaConf.create(proc.stdout)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.account, launcher.nodes) == ("gpu", "proj", 2)
    assert (launcher.gpus_per_node, launcher.tasks_per_node) == (4, 4)  # one task per GPU
    assert launcher.max_num_timeout >= 1 and launcher.timeout_min > 0 and launcher.signal_delay_s > 0
    assert (cfg.trainer.strategy, cfg.trainer.num_nodes) == ("ddp", 2)


@pytest.mark.parametrize(
    ("preset", "plugin", "extra"),
    [("hydra/launcher=joblib", "hydra_plugins.hydra_joblib_launcher", "cluster"),
     ("hydra/launcher=slurm", "hydra_plugins.hydra_submitit_launcher", "cluster"),
     ("hparams_search=kd_optuna", "hydra_plugins.hydra_optuna_sweeper", "search")],
)  # fmt: skip
def test_a_preset_whose_extra_is_missing_names_the_extra(preset, plugin, extra, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, plugin, None)  # what an environment without the extra sees: ImportError
    proc = in_process(["train", "-m", preset, "seed=0,1"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith(f"pip install 'kdcl[{extra}]'") and preset in proc.stderr
    assert not (tmp_path / "outputs").exists()
