"""timm's augmentation in a real run: the teacher is given the student's mixed images (consistent teaching)."""

from __future__ import annotations

import torch

from kdcl.training.module import DistillationModule
from tests.conftest import TINY, in_process


def test_mixup_gives_teacher_and_student_the_same_mixed_batch(tmp_path, monkeypatch):
    seen: dict[str, torch.Tensor] = {}
    original = DistillationModule.training_step

    def watched(module, batch, batch_idx):
        hooks = []
        if module.stage == "student" and "labels" not in seen:
            seen["labels"] = batch[1].detach().clone()
            for role, model in (("student", module.model), ("teacher", module.teachers[0].model)):
                conv = model.get_submodule(model.pretrained_cfg["first_conv"])
                hooks.append(conv.register_forward_pre_hook(
                    lambda m, args, role=role: seen.setdefault(role, args[0].detach().clone())))  # fmt: skip
        try:
            return original(module, batch, batch_idx)
        finally:
            for hook in hooks:
                hook.remove()

    monkeypatch.setattr(DistillationModule, "training_step", watched)
    args = ["train", *TINY, "augment=rrc", "augment.mixup_alpha=1.0", "trainer.max_epochs=1", "data.fraction=0.3",
            "latency.batches=[]", "distill.teacher_outputs=online"]  # fmt: skip
    proc = in_process(args, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    labels = seen["labels"]  # class probabilities, two classes per mixed example
    assert labels.is_floating_point() and torch.allclose(labels.sum(1), torch.ones(len(labels)))
    assert ((labels > 0).sum(1) == 2).any()
    # both models normalise with the data's statistics here, so the same mixed images reach both first convs
    assert seen["teacher"].shape == seen["student"].shape and torch.equal(seen["teacher"], seen["student"])


def test_stored_views_replay_crops_and_mixing_the_teacher_saw(tiny_run, tmp_path, monkeypatch):
    """augment=rrc with mixup and cutmix and a given teacher: auto stores views, and every training batch is
    pixels whose stored logits are the teacher's own logits of them (the teacher is run here to check)."""
    checked: list[float] = []
    original = DistillationModule.training_step

    def watched(module, batch, batch_idx):
        if module.stage == "student" and len(checked) < 3:
            x, target, rows = batch
            with torch.inference_mode():
                live = module.teachers[0].model.to(x.device).eval()(x)
            stored = module.teacher_outputs.read(rows)[0]
            checked.append(float((live - stored).abs().max()))
            assert target.is_floating_point() and torch.allclose(target.sum(1), torch.ones(len(target)))
        return original(module, batch, batch_idx)

    monkeypatch.setattr(DistillationModule, "training_step", watched)
    teacher = tiny_run / "stages/00-teacher/checkpoints/best.ckpt"
    args = ["train", *TINY, "trainer=cpu", "augment=rrc", "augment.mixup_alpha=0.8", "augment.cutmix_alpha=1.0",
            f"teacher.checkpoint={teacher}", "data.views=2", "trainer.limit_train_batches=3", "latency.batches=[]"]  # fmt: skip
    proc = in_process(args, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "teacher outputs: views (auto: the teachers are given checkpoints" in proc.stdout
    assert "teacher views: one pass over" in proc.stdout
    assert len(checked) == 3 and max(checked) < 1e-4, checked  # another batch composition than the pass: rounding
