"""Deep mutual learning (pipeline=dml): each peer's loss against a hand computation from the paper's formula
(value and gradient), one peer's checkpoint cut out of the cohort's, per-peer gradient clipping, the plan of
peers (seeds, budgets, curriculum scorers), and bad input as one line naming the key."""

from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from kdcl.common.errors import KdclError
from kdcl.config.compose import config_dir
from kdcl.losses import DistillLoss
from kdcl.losses.terms import TermInputs, parse_terms
from kdcl.models import load_kdcl_checkpoint
from kdcl.run.plan import build_plan, mutual_stage
from kdcl.run.validate import check_config
from kdcl.training.mutual import MutualModule, mutual_losses, peer_checkpoint


def dml_losses(k: int, temperature: float) -> list[DistillLoss]:
    terms = {"ce": {"weight": 1.0}, "kd": {"weight": 1.0, "temperature": temperature}}
    return [DistillLoss(parse_terms(terms, "pipeline.stages.dml.terms")) for _ in range(k)]


def by_hand(logits: list[list[list[float]]], labels: list[int], k: int, t: float) -> float:
    """CE(y, p_k) + T²/(K−1) Σ_{j≠k} KL(p_j^T ‖ p_k^T), averaged over the examples, in plain Python."""

    def softmax(z: list[float], temp: float) -> list[float]:
        e = [math.exp(v / temp) for v in z]
        return [v / sum(e) for v in e]

    n, total = len(labels), 0.0
    for i, y in enumerate(labels):
        ce = -math.log(softmax(logits[k][i], 1.0)[y])
        pk = softmax(logits[k][i], t)
        kls = [sum(a * math.log(a / b) for a, b in zip(softmax(logits[j][i], t), pk, strict=True))
               for j in range(len(logits)) if j != k]  # fmt: skip
        total += ce + t * t * sum(kls) / len(kls)
    return total / n


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_each_peers_loss_is_ce_plus_the_mean_kl_from_the_others_and_moves_that_peer_alone(temperature):
    torch.manual_seed(0)
    logits = [torch.randn(4, 5, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    labels = torch.tensor([0, 3, 1, 4])
    losses = mutual_losses(logits, TermInputs(logits[0], [], labels), dml_losses(3, temperature))
    plain = [z.tolist() for z in logits]
    for k, (total, parts) in enumerate(losses):
        assert float(total) == pytest.approx(by_hand(plain, labels.tolist(), k, temperature), rel=1e-9)
        assert set(parts) == {"ce", "kd"}
        grads = torch.autograd.grad(total, logits, allow_unused=True, retain_graph=True)
        assert all(g is None for j, g in enumerate(grads) if j != k)  # the others are targets, detached
        if temperature == 1.0:  # d/dz_k: (p_k − onehot(y))/N + 1/(K−1) Σ_j (p_k − p_j)/N
            p = [torch.softmax(z.detach(), 1) for z in logits]
            others = [p[j] for j in range(3) if j != k]
            expected = (p[k] - nn.functional.one_hot(labels, 5) + sum(p[k] - q for q in others) / 2) / 4
            assert torch.allclose(grads[k], expected, atol=1e-12)


def test_a_peers_checkpoint_is_its_weights_alone_under_the_one_model_layout(tmp_path):
    peers = [nn.Linear(3, 2), nn.Linear(3, 2)]
    cohort = {f"model.peers.{k}.{name}": v for k, peer in enumerate(peers) for name, v in peer.state_dict().items()}
    torch.save({"epoch": 4, "global_step": 40, "state_dict": cohort, "optimizer_states": [{}],
                "hyper_parameters": {"stage": "dml"}}, tmp_path / "best.ckpt")  # fmt: skip
    out = peer_checkpoint(tmp_path / "best.ckpt", 1, {"stage": "dml2", "model": {"name": "x"}}, tmp_path / "p.ckpt")
    state, hparams = load_kdcl_checkpoint(out, "checkpoint")
    assert hparams["stage"] == "dml2" and state.keys() == peers[1].state_dict().keys()
    assert all(torch.equal(state[n], v) for n, v in peers[1].state_dict().items())
    saved = torch.load(out, weights_only=True)
    assert saved["epoch"] == 4 and "optimizer_states" not in saved  # weights only: nothing resumes from it


def test_gradient_clipping_by_norm_clips_each_peer_on_its_own():
    peers = [nn.Linear(4, 3), nn.Linear(4, 3)]
    module = MutualModule(peers, dml_losses(2, 1.0), OmegaConf.create({}), "dml", ["dml1", "dml2"], 3, {})
    for peer, scale in zip(peers, (100.0, 0.01), strict=True):
        for p in peer.parameters():
            p.grad = torch.full_like(p, scale)
    small = [p.grad.clone() for p in peers[1].parameters()]
    module.configure_gradient_clipping(None, 1.0, "norm")
    norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in peers[0].parameters()]))
    assert float(norm) == pytest.approx(1.0, rel=1e-5)
    assert all(torch.equal(p.grad, g) for p, g in zip(peers[1].parameters(), small, strict=True))  # under the bound


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=["student=tiny", *overrides])


def test_dml_is_one_stage_per_peer_trained_together_each_from_its_own_seed():
    plan = build_plan(composed("pipeline=dml", "trainer.max_epochs=4", "pipeline.peers=[student,resnet18,student]"))
    assert [(s.name, s.model["name"], s.mutual, s.peers) for s in plan.stages] == [
        (f"dml{k}", name, "dml", ("dml1", "dml2", "dml3"))
        for k, name in ((1, "test_efficientnet"), (2, "resnet18"), (3, "test_efficientnet"))
    ]
    assert [s.index for s in plan.stages] == [0, 1, 2]  # seeds: seed + index, so equal models start apart
    assert plan.units() == [plan.stages]  # one training for the three
    group = mutual_stage(plan.stages)
    assert (group.name, group.dirname, group.epochs) == ("dml", "00-dml", 4)
    assert all(s.terms == {"ce": {"weight": 1.0}, "kd": {"weight": 1.0, "temperature": 1.0}} for s in plan.stages)
    assert all(s.teachers == () and s.teacher_outputs == "online" for s in plan.stages)
    warm = build_plan(composed("pipeline=dml", "pipeline.temperature=3")).stages
    assert all(s.terms["kd"]["temperature"] == 3.0 for s in warm)
    # equal-budget arms: the peers train together, so the student's total is each peer's
    assert [s.epochs for s in build_plan(composed("pipeline=dml", "pipeline.student_epochs=6")).stages] == [6, 6]
    mixed = composed("pipeline=dml", "pipeline.peers=[student,test_resnet]", "pipeline.student_epochs=6")
    assert [s.epochs for s in build_plan(mixed).stages] == [6, 6]  # a peer named by timm name is a peer too
    later = build_plan(composed("pipeline=dml", "pipeline.finetune=true"))
    assert later.stages[-1].init == "dml2"  # a later stage starts from a peer as from any stage


def test_a_curriculum_on_dml_scores_with_out_of_fold_copies_of_a_peer_or_its_own_scorers():
    plan = build_plan(composed("pipeline=dml", "curriculum=linear", "curriculum.source=folds", "curriculum.folds=2"))
    assert [s.name for s in plan.stages] == ["dml_fold1", "dml_fold2", "dml1", "dml2"]
    assert plan.stages[0].model["name"] == "test_efficientnet" and plan.stages[0].holdout == (0, 2)
    assert all(s.curriculum and s.scorers == ("dml_fold1", "dml_fold2") for s in plan.stages[2:])
    assert [len(u) for u in plan.units()] == [1, 1, 2]
    selfpaced = build_plan(composed("pipeline=dml", "curriculum=linear", "curriculum.scorer=student_loss"))
    assert all(s.curriculum and s.scorers == () for s in selfpaced.stages)
    named = build_plan(composed("pipeline=dml", "curriculum=linear", "curriculum.scorer=random",
                                "curriculum.stages=[dml]"))  # fmt: skip
    assert all(s.curriculum for s in named.stages)  # the group's name (or a peer's) names every peer


def explicit(stages: dict[str, str], *more: str) -> list[str]:
    """pipeline=baseline with `stages` (name -> its settings) instead of its student stage."""
    return ["pipeline=baseline", "~pipeline.stages.student", *(f"+pipeline.stages.{n}={{{v}}}" for n, v in stages.items()),
            *more]  # fmt: skip


PEER = "model:student,epochs:2,mutual:dml"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["pipeline=dml", "pipeline.peers=[student]"], "pipeline.peers=['student'] must list at least two models"),
        (
            ["pipeline=dml", "pipeline.peers=[student,resnet500]"],
            "pipeline.peers[1] 'resnet500' is not a timm model; did you mean resnet50",
        ),
        (["pipeline=dml", "pipeline.temperature=0"], "pipeline.temperature=0.0 must be a number > 0"),
        (["pipeline=dml", "pipeline.temperature=-2"], "pipeline.temperature=-2.0 must be a number > 0"),
        (["pipeline=dml", "pipeline.assistants=[resnet18]"], "pipeline.assistants is not used by kind=dml"),
        (
            ["pipeline=dml", "curriculum=linear"],
            "curriculum.scorer=teacher_confidence with source=final needs a teacher, and the mutual stage 'dml' has "
            "none; use curriculum.source=folds",
        ),
        (explicit({"a": PEER}), "pipeline.stages.a.mutual='dml': a mutual group needs two or more peers"),
        (
            explicit({"a": PEER, "b": "model:student,epochs:3,mutual:dml"}),
            "pipeline.stages.b.epochs: the peers of 'dml' train as one stage and must share epochs (2, 3)",
        ),
        (
            explicit({"a": PEER, "c": "model:student,epochs:2", "b": PEER}),
            "pipeline.stages.a.mutual='dml': its peers (a, b) must follow one another",
        ),
        (explicit({"dml": PEER, "b": PEER}), "pipeline.stages.dml.mutual='dml' is also a stage's name"),
        (
            explicit({"t": "model:teacher,epochs:2", "a": f"{PEER},teachers:[t]", "b": PEER}),
            "pipeline.stages.a.teachers: a mutual stage learns from its peers alone",
        ),
        (
            explicit({"a": PEER, "b": PEER}, "distill=at"),
            "pipeline.stages.a: the mutual stage's peers are compared by their outputs, and distill.terms has the "
            "feature terms at",
        ),
    ],
)
def test_bad_dml_input_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(KdclError) as err:
        check_config(composed(*overrides))
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
