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
            "latency.batches=[]"]  # fmt: skip
    proc = in_process(args, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "teacher outputs: online (auto: augment=rrc, augment.mixup_alpha=1.0 draws new images" in proc.stdout
    labels = seen["labels"]  # class probabilities, two classes per mixed example
    assert labels.is_floating_point() and torch.allclose(labels.sum(1), torch.ones(len(labels)))
    assert ((labels > 0).sum(1) == 2).any()
    # both models normalise with the data's statistics here, so the same mixed images reach both first convs
    assert seen["teacher"].shape == seen["student"].shape and torch.equal(seen["teacher"], seen["student"])
