"""`kdcl train … --dry-run`: the stages, how each reads its teachers (with the shared cache's keys), the
time and disk it would take, and nothing written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import TINY, TINY_RUN, train_once


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def store_names(stdout: str) -> list[str]:
    """The shared-cache files a preview names, in order."""
    return re.findall(r"shared cache file ((?:logits|views)-[\w.]+-[0-9a-f]{20}\.pt)", stdout)


def test_a_dry_run_lists_the_stages_with_estimates_and_writes_nothing(tmp_path, kdcl_main):
    (tmp_path / "keep.txt").write_text("user data")
    proc = kdcl_main(["train", "--dry-run", *TINY], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("│ ")]
    assert [r.split("│")[1].strip() for r in rows if r.split("│")[1].strip()] == ["teacher", "student"]
    assert "student: stored logits built once its teachers have trained" in proc.stdout
    time_line = next(line for line in proc.stdout.splitlines() if line.strip().startswith("time ≈"))
    assert "training" in time_line
    assert re.search(r"disk ≈ \d+\.\d MB in the run directory", proc.stdout)
    assert listing(tmp_path) == ["keep.txt"], "a dry run writes nothing: no outputs/, no cache"


@pytest.mark.parametrize("augment", ["false", "rrc"], ids=["stored logits", "stored views of crops and mixup"])
def test_a_sweep_preview_names_the_store_one_job_builds_and_the_others_reuse(augment, tiny_run, tmp_path,
                                                                            kdcl_main):  # fmt: skip
    """Jobs sharing a given teacher: the first builds its store, the later ones reuse it; after a real
    run, the preview finds the very file that run put in the shared cache."""
    teacher = tiny_run / "stages" / "00-teacher" / "checkpoints" / "best.ckpt"
    mode = "views" if augment == "rrc" else "cached"
    augmentation = ["augment=rrc", "augment.mixup_alpha=0.2"] if augment == "rrc" else ["data.augment=false"]
    args = [*TINY, f"teacher.checkpoint={teacher}", *augmentation, "data.views=2", f"distill.teacher_outputs={mode}",
            f"paths.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    sweep = kdcl_main(["train", "--dry-run", "-m", *args, "distill.temperature=2,4"], tmp_path)
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    first, second = store_names(sweep.stdout)
    assert first == second, "both jobs have the same teacher and data: one store"
    assert (
        f"student: {'stored views, K=2' if augment == 'rrc' else 'stored logits'} built here: shared cache file {first}"
        in sweep.stdout
    )
    assert f"reused (job 1): shared cache file {first}" in sweep.stdout
    assert re.search(r"sweep of 2 jobs", sweep.stdout)
    assert "job " in sweep.stdout and "data.download" not in sweep.stdout  # what the dry run adds is not shown
    assert not (tmp_path / "cache").exists()

    train_once(tmp_path, [*args, "distill.temperature=2"])
    assert (tmp_path / "cache" / first).is_file(), sorted(p.name for p in (tmp_path / "cache").iterdir())
    again = kdcl_main(["train", "--dry-run", *args, "distill.temperature=4"], tmp_path)
    assert f"reused (cache): shared cache file {first}" in again.stdout
    assert store_names(again.stdout) == [first]


def test_the_disk_estimate_is_what_a_run_writes(tiny_run, tmp_path, kdcl_main):
    """The shared tiny run's directory against the dry run of its own command (file sizes do not depend on
    the machine: checkpoints, stores and logs have the shapes the estimate counts)."""
    proc = kdcl_main(["train", "--dry-run", *TINY_RUN], tmp_path)
    estimated = float(re.search(r"disk ≈ ([\d.]+) MB in the run directory", proc.stdout)[1])
    written = sum(p.stat().st_size for p in tiny_run.rglob("*") if p.is_file() and "export" not in p.parts) / 2**20
    assert abs(estimated - written) <= 0.2 * written, (estimated, written)
