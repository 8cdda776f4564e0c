"""Every bad input: exit status 2, one line on stderr naming the key and a fix, nothing written.

Every case runs `kdcl.cli.main` in this process (the checks run before Hydra starts a job); a few run as
real processes too, for the contract as a user meets it: exit status 2, no traceback, nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TINY, run_kdcl


def corrupt_file(tmp: Path) -> str:
    path = tmp / "corrupt.ckpt"
    path.write_bytes(b"\x80\x02not really a pickle")
    return str(path)


CASES = {
    "unknown group option": (["teacher=resnet500"], "teacher=resnet500", "did you mean resnet50"),
    "unknown model name": (
        ["teacher.name=resnet500"],
        "teacher.name 'resnet500' is not a timm model",
        "did you mean resnet50",
    ),
    "unknown config key": (
        ["distill.temprature=2"],
        "unknown config key 'distill.temprature'",
        "did you mean distill.temperature",
    ),
    "negative temperature": (["distill.temperature=-1"], "distill.temperature=-1", "must be > 0"),
    "negative weight": (["distill.terms.kd.weight=-0.5"], "distill.terms.kd.weight=-0.5", "≥ 0"),
    "epochs below one": (["trainer.max_epochs=0"], "epochs=0", "integer ≥ 1"),
    "fraction above one": (["data.fraction=1.5"], "data.fraction=1.5", "(0, 1]"),
    "fraction zero": (["data.fraction=0"], "data.fraction=0", "(0, 1]"),
    "missing data path": (
        ["data=image_folder", "data.root=/nonexistent/images"],
        "data.root '/nonexistent/images'",
        "does not exist",
    ),
    "missing required data path": (["data=image_folder"], "data.root is required", "data.root=..."),
    "corrupt checkpoint": (
        ["teacher.checkpoint={corrupt}"],
        "teacher.checkpoint",
        "not a readable weights/checkpoint file",
    ),
    "corrupt weights": (["teacher.weights={corrupt}"], "teacher.weights", "not a readable weights/checkpoint file"),
    "missing weights": (
        ["student.weights=/nonexistent/w.pth"],
        "student.weights '/nonexistent/w.pth'",
        "does not exist",
    ),
    "resume of a non-run": (["resume={tmp}"], "is not a kdcl run directory", "kdcl train printed"),
    "bad value in a later sweep point": (["-m", "distill.temperature=4,-2"], "distill.temperature=-2", "must be > 0"),
    "every weight zero": (["distill.terms.ce.weight=0", "distill.terms.kd.weight=0"], "every weight is 0", "positive"),
    "wrong value type": (["optim.weight_decay=abc"], "optim.weight_decay=abc", "must be a number"),
    "deleted required group": (["~optim"], "the config has no 'optim'", "~optim"),
    "unknown loss term": (
        ["+distill.terms.kd.kind=kdd"],
        "distill.terms.kd: 'kdd' is not a loss term",
        "did you mean kd",
    ),
    "unknown feature index": (
        ["distill=at", "distill.terms.at.student_tap=[1,9,3]"],
        "distill.terms.at.student_tap=9: mobilenetv3_small_100 has no feature index 9",
        "0=bn1, 1=blocks.0",
    ),
    "unknown module path": (
        ["distill=fitnet", "distill.terms.fitnet.teacher_tap=layer9"],
        "distill.terms.fitnet.teacher_tap='layer9' is not a module of resnet18",
        "did you mean layer4",
    ),
    "negative loss parameter": (["distill=dkd", "distill.terms.dkd.beta=-8"], "distill.terms.dkd.beta=-8", "≥ 0"),
    "unknown feature index of nst": (
        ["distill=nst", "distill.terms.nst.teacher_tap=[1,2,9]"],
        "distill.terms.nst.teacher_tap=9: resnet18 has no feature index 9",
        "0=act1, 1=layer1",
    ),
    "negative weight of sp": (["distill=sp", "distill.terms.sp.weight=-3000"], "distill.terms.sp.weight=-3000", "≥ 0"),
    "kdsvd with one tap": (
        ["distill=kdsvd", "distill.terms.kdsvd.student_tap=2", "distill.terms.kdsvd.teacher_tap=2"],
        "distill.terms.kdsvd: 'kdsvd' relates consecutive layers and needs at least 2 taps per model (got 1)",
        "student_tap=[1,2,3]",
    ),
    "bad pacing name": (
        ["curriculum=linear", "curriculum.pacing=lineer"],
        "curriculum.pacing 'lineer'",
        "did you mean linear",
    ),
    "pacing start zero": (["curriculum=linear", "curriculum.start=0"], "curriculum.start=0", "(0, 1]"),
    "pacing full_at above one": (["curriculum=linear", "curriculum.full_at=1.5"], "curriculum.full_at=1.5", "(0, 1]"),
    "exponential inc not above one": (
        ["curriculum=exponential", "curriculum.params.inc=1"],
        "curriculum.params.inc=1",
        "> 1",
    ),
    "scores file of the wrong length": (
        ["curriculum=linear", "curriculum.scorer=file", "curriculum.scores_file={scores}"],
        "has 3 scores but the stage trains on 1293 examples",
        "one score per training example",
    ),
    "loss term set to null": (["distill.terms.kd=null"], "distill.terms.kd is null", "~distill.terms.kd"),
    "class order not a list": (
        ["curriculum=linear", "curriculum.scorer=class_order", "curriculum.class_order=5"],
        "curriculum.class_order=5",
        "must be a list",
    ),
    "cached teacher outputs with augmentation": (
        ["distill.teacher_outputs=cached", "data.augment=true"],
        "distill.teacher_outputs=cached with training augmentation",
        "new random view",
    ),
    "stored views with a feature term": (
        ["distill=fitnet", "distill.teacher_outputs=views", "data.augment=true"],
        "distill.teacher_outputs=views: the feature terms fitnet",
        "auto|online",
    ),
    "CRD with stored teacher outputs": (
        ["distill=crd", "distill.terms.crd.negatives=64", "distill.teacher_outputs=cached"],
        "distill.teacher_outputs=cached: the feature terms crd",
        "auto|online",
    ),
    "CRD bank larger than the data": (
        ["distill=crd"],
        "distill.terms.crd.negatives=16384 is more than the stage's data holds: 1293 training examples",
        "set distill.terms.crd.negatives ≤",
    ),
    "CRD under DDP": (
        ["distill=crd", "distill.terms.crd.negatives=64", "trainer.strategy=ddp_spawn", "trainer.devices=2"],
        "distill.terms.crd: CRD's memory bank is not synchronised across DDP ranks",
        "train it in one process",
    ),
    "CRD bank over its memory limit": (
        ["distill=crd", "distill.terms.crd.negatives=64", "distill.terms.crd.max_bank_mb=0.5"],
        "distill.terms.crd: the memory bank needs 1.3 MB (1293 examples × 128 dims × 2 models × 4 bytes)",
        "raise distill.terms.crd.max_bank_mb",
    ),
    "OFD tap that does not exist": (
        ["distill=ofd", "distill.terms.ofd.teacher_tap=[1,2,layer9]"],
        "distill.terms.ofd.teacher_tap='layer9' is not a module of resnet18",
        "did you mean layer",
    ),
    "stored views without augmentation": (
        ["distill.teacher_outputs=views"],
        "training has no augmentation",
        "augment=rrc",
    ),
    "fewer than one view": (["data.augment=true", "data.views=0"], "data.views=0", "≥ 1"),
    "view store over its budget": (
        ["data.augment=true", "data.views=4", "distill.store_max_mb=0.05"],
        "needs a view store of 0.2 MB (1293 examples × data.views=4 × all 10 logits × 1 teacher(s)), over "
        "distill.store_max_mb=0.05",
        "lower data.views",
    ),
    "run directory in use": (["hydra.run.dir={tmp}/old"], "already holds kdcl runs", "new directory"),
    # keys that would otherwise be ignored without a word
    "curriculum key without a curriculum": (
        ["curriculum.start=0.5"],
        "curriculum.start=0.5 has no effect with curriculum=none",
        "curriculum=linear",
    ),
    "negative gradient clipping": (["+trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1", "≥ 0"),
    "zero threads": (["speed.threads=0"], "speed.threads=0", "≥ 1"),
    "unknown checkpoint retention": (
        ["checkpoint.keep=best"],
        "checkpoint.keep=best",
        "must be one of weights|resumable",
    ),
    # keys that moved (kdcl/config/upgrade.py): the old spelling names the new one
    "renamed key": (["report.latency_batches=[1]"], "report.latency_batches was renamed", "use latency.batches=[1]"),
    "renamed key in a sweep": (
        ["-m", "report.speedup_runtime=eager,onnxruntime"],
        "report.speedup_runtime was renamed",
        "use latency.speedup_runtime=eager,onnxruntime",
    ),
    # --dry-run: a preview of a new run checks what the run would, and refuses what it cannot preview
    "dry run of a bad value": (["--dry-run", "distill.temperature=-1"], "distill.temperature=-1", "must be > 0"),
    "dry run of a resume": (["--dry-run", "resume={tmp}/old"], "--dry-run previews a new run", "drop resume="),
    "dry run of a sweep without -m": (["--dry-run", "distill.temperature=2,4"], "make 2 jobs", "add -m"),
    "dry run of data not downloaded": (
        ["--dry-run", "data=cifar10", "data.download=true", "data.root={tmp}/nothing"],
        "does not exist",
        "a dry run downloads nothing: run once without --dry-run",
    ),
    "two crops": (["augment=rrc", "data.augment=true"], "augment.crop=rrc and data.augment=true", "keep one"),
    "crop scale reversed": (["augment=rrc", "augment.scale=[0.9,0.1]"], "augment.scale=[0.9, 0.1]", "a ≤ b"),
    "erasing without timm's crop": (["augment.re_prob=0.25"], "augment.re_prob", "augment.crop=rrc"),
    "unknown augment policy": (
        ["augment=randaug", "augment.auto_augment=bogus"],
        "augment.auto_augment 'bogus'",
        "rand-m9-mstd0.5-inc1",
    ),
    "negative mixup": (["augment.mixup_alpha=-0.2"], "augment.mixup_alpha=-0.2", "≥ 0"),
    "views of randaug": (
        ["augment=randaug", "distill.teacher_outputs=views"],
        "cannot replay augment.auto_augment=rand-m9-mstd0.5-inc1",
        "distill.teacher_outputs=auto or online",
    ),
    "pretrained and weights": (
        ["teacher.pretrained=true", "teacher.weights={corrupt}"],
        "teacher.pretrained=true",
        "keep one",
    ),
}


def prepare(tmp_path: Path, args: list[str]) -> tuple[list[str], list[str]]:
    """The case's arguments with their files in place, and what the directory holds before the run."""
    (tmp_path / "scores.txt").write_text("0.1\n0.2\n0.3\n")
    args = [a.format(corrupt=corrupt_file(tmp_path), tmp=tmp_path, scores=tmp_path / "scores.txt") for a in args]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "run.json").write_text("{}")  # an earlier run that must stay untouched
    (tmp_path / "keep.txt").write_text("user data")
    return args, listing(tmp_path)


def listing(tmp_path: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))


def assert_one_line_error(stderr: str, fragments) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_train_input_is_one_line_and_exit_2(case, tmp_path, monkeypatch, capsys):
    from hydra.core.global_hydra import GlobalHydra

    from kdcl.cli import main

    args, before = prepare(tmp_path, CASES[case][0])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["kdcl"])  # `kdcl train` hands sys.argv to Hydra: restored afterwards
    try:
        with pytest.raises(SystemExit) as exited:
            main(["train", *args])
    finally:
        GlobalHydra.instance().clear()
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert_one_line_error(err, CASES[case][1:])
    assert "Traceback" not in out + err
    assert listing(tmp_path) == before, "a rejected run must write nothing (no outputs/ directory)"


# As real processes (each case also runs in-process above): one refused before Hydra starts (a group
# option), one in a sweep (-m, a bad point late in it) and one inside the run (a directory in use).
AS_PROCESSES = (
    "unknown group option",
    "bad value in a later sweep point",
    "run directory in use",
)


@pytest.mark.parametrize("case", AS_PROCESSES)
def test_bad_train_input_exits_2_as_a_process_and_writes_nothing(case, tmp_path):
    args, before = prepare(tmp_path, CASES[case][0])
    proc = run_kdcl(["train", *args], tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert_one_line_error(proc.stderr, CASES[case][1:])
    assert "Traceback" not in proc.stdout + proc.stderr
    assert listing(tmp_path) == before, "a rejected run must write nothing (no outputs/ directory)"
    assert (tmp_path / "old" / "run.json").read_text() == "{}" and (tmp_path / "keep.txt").read_text() == "user data"


def test_bad_eval_target_is_one_line_and_exit_2(tmp_path, kdcl_main):
    result = kdcl_main(["eval", str(tmp_path)], tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, ["is not a kdcl run directory"])
    result = kdcl_main(["eval", corrupt_file(tmp_path)], tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, ["not a readable weights/checkpoint file"])


@pytest.mark.parametrize("command", [["train"], ["train", "resume=outputs/old"], ["models", "test_resnet", "--cost"]])
def test_an_old_key_exits_2_with_one_line_naming_the_new_one(command, tmp_path, kdcl_main):
    result = kdcl_main([*command, "report.latency_batches=[1]"], tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == "error: report.latency_batches was renamed: use latency.batches=[1]"
    assert listing(tmp_path) == []


def test_unknown_command_suggests_the_right_one(tmp_path, kdcl_main):
    result = kdcl_main(["trian"], tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, ["did you mean train"])


def test_a_stage_that_cannot_start_from_the_one_before_exits_6_and_keeps_it(tmp_path, kdcl_main):
    """The student's curriculum scores with the teacher as it was after epoch 2 (source=early), but the teacher
    stopped after 3 steps: exit 6 before the student's passes, one line naming the fix and the resume, the
    teacher's stage kept done."""
    args = [*TINY, "latency.batches=[]", "curriculum=linear", "curriculum.source=early", "curriculum.early_epoch=2",
            "+trainer.max_steps=3", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    result = kdcl_main(["train", *args], tmp_path)
    assert result.returncode == 6, result.stdout[-2000:] + result.stderr[-2000:]
    line = result.stderr.strip()
    assert "\n" not in line and "teacher@2" in line and "curriculum.source=final" in line
    assert f"resume={tmp_path / 'run'}" in line
    assert "[student] teacher outputs: one pass" not in result.stdout  # refused before the student's passes
    stages = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]
    assert stages["teacher"]["status"] == "done" and stages["student"]["status"] == "failed"
    assert (tmp_path / "run" / stages["teacher"]["result"]["checkpoint"]).is_file()
