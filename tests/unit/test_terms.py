"""Loss terms from config: schedules, feature taps on real timm models, bridges, validation."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F

from kdcl.common.errors import KdclError
from kdcl.losses import DistillLoss
from kdcl.losses.schedules import scheduled
from kdcl.losses.terms import TermInputs
from tests.unit.test_functional import ref_at, ref_kd, ref_rkd  # the definitions, in plain Python


@pytest.mark.parametrize(
    "spec, progress, expected",
    [
        (None, 0.3, 2.0),
        ({"kind": "constant"}, 0.0, 2.0),
        ({"kind": "linear", "start": 0.0, "until": 0.5}, 0.0, 0.0),
        ({"kind": "linear", "start": 0.0, "until": 0.5}, 0.25, 1.0),
        ({"kind": "linear", "start": 0.0, "until": 0.5}, 0.5, 2.0),
        ({"kind": "linear", "start": 0.0, "until": 0.5}, 0.9, 2.0),
        ({"kind": "linear", "start": 8.0}, 0.5, 5.0),  # annealing down: 8 → 2
        ({"kind": "cosine", "start": 0.0}, 0.5, 1.0),
        ({"kind": "cosine", "start": 0.0}, 0.25, 2.0 * (1 - math.cos(math.pi / 4)) / 2),
        ({"kind": "step", "start": 0.0, "n_steps": 4}, 0.3, 0.5),  # floor(4·0.3) = 1 → 1/4 of the way... ×2
        ({"kind": "step", "start": 0.0, "n_steps": 4}, 1.0, 2.0),
    ],
)
def test_schedule_values(spec, progress, expected):
    # step: floor(4·0.3)/4 = 0.25 of the way from 0 to 2 = 0.5
    assert scheduled(2.0, spec, progress) == pytest.approx(expected)


def test_scheduled_weight_and_temperature_enter_the_loss():
    s, t, y = torch.randn(6, 5), torch.randn(6, 5), torch.randint(0, 5, (6,))
    loss = DistillLoss(
        {
            "ce": {"weight": 1.0},
            "kd": {
                "weight": 2.0,
                "temperature": 4.0,
                "schedule": {
                    "weight": {"kind": "linear", "until": 0.5},
                    "temperature": {"kind": "linear", "start": 8.0},
                },
            },
        }
    )
    total0, parts0 = loss(TermInputs(s, [t], y), progress=0.0)
    ce = F.cross_entropy(s, y).item()
    assert total0.item() == pytest.approx(ce, rel=1e-6)  # warm-up: kd weight starts at 0
    total, parts = loss(TermInputs(s, [t], y), progress=0.25)
    expected = ce + 1.0 * ref_kd(s.tolist(), t.tolist(), 7.0)  # weight half-way up, T a quarter of the way 8 → 4
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert loss.scheduled_values(0.25) == pytest.approx({"weight_kd": 1.0, "temperature_kd": 7.0})


def tiny_pair():
    torch.manual_seed(0)
    student = timm.create_model("test_efficientnet", num_classes=10, in_chans=1)
    teacher = timm.create_model("test_resnet", num_classes=10, in_chans=1).eval().requires_grad_(False)
    return student, teacher


def attach(terms, student, teacher):
    loss = DistillLoss(terms)
    loss.attach(student, [teacher], torch.zeros(1, 1, 32, 32), ["test_efficientnet", "test_resnet"])
    return loss


def test_feature_taps_by_index_and_path_feed_the_functionals():
    student, teacher = tiny_pair()
    feats = {}
    student.blocks[2].register_forward_hook(lambda m, i, o: feats.__setitem__("s", o))
    teacher.layer2.register_forward_hook(lambda m, i, o: feats.__setitem__("t", o))
    loss = attach(
        {
            "at": {"weight": 1.0, "student_tap": 2, "teacher_tap": "layer2"},
            "rkd": {"weight": 1.0, "student_tap": "embedding", "teacher_tap": "embedding"},
        },
        student,
        teacher,
    )
    x, y = torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,))
    logits = student(x)
    with torch.no_grad():
        t_logits = teacher(x)
    _, parts = loss(TermInputs(logits, [t_logits], y))
    assert feats["s"].shape[-2:] == feats["t"].shape[-2:]  # same 4×4 maps: no pooling in the reference
    assert parts["at"].item() == pytest.approx(ref_at(feats["s"].tolist(), feats["t"].tolist(), 2.0), rel=1e-5)
    s_emb = student.forward_head(student.forward_features(x), pre_logits=True)
    t_emb = teacher.forward_head(teacher.forward_features(x), pre_logits=True)
    expected = ref_rkd(s_emb.tolist(), t_emb.tolist(), 25.0, 50.0)  # RKD's default weights
    assert parts["rkd"].item() == pytest.approx(expected, rel=1e-4)


def test_fitnet_bridge_trains_with_the_student_and_is_not_part_of_it():
    student, teacher = tiny_pair()
    teacher.requires_grad_(True)  # a trainable teacher: only the loss's detach keeps gradients out of it
    loss = attach({"fitnet": {"weight": 1.0, "student_tap": 2, "teacher_tap": 2}}, student, teacher)
    bridge = loss.learned["fitnet"][0]
    assert isinstance(bridge[0], torch.nn.Conv2d) and (bridge[0].in_channels, bridge[0].out_channels) == (32, 48)
    x, y = torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,))
    total, _ = loss(TermInputs(student(x), [teacher(x)], y))
    total.backward()
    assert bridge[0].weight.grad.abs().sum() > 0
    assert student.conv_stem.weight.grad.abs().sum() > 0  # gradient reaches the student's early layers
    assert all(p.grad is None for p in teacher.parameters())
    assert not any("bridge" in k for k in student.state_dict())  # the student exports without it


def test_attention_sums_over_several_tap_pairs():
    student, teacher = tiny_pair()
    one = [attach({"at": {"student_tap": i, "teacher_tap": i}}, student, teacher) for i in (1, 2)]
    both = attach({"at": {"student_tap": [1, 2], "teacher_tap": [1, 2]}}, student, teacher)
    x, y = torch.randn(3, 1, 32, 32), torch.zeros(3, dtype=torch.long)
    values = []
    for loss in [*one, both]:
        values.append(loss(TermInputs(student(x), [teacher(x)], y))[0].item())
    assert values[2] == pytest.approx(values[0] + values[1], rel=1e-5)


@pytest.mark.parametrize(
    "terms, fragment",
    [
        (
            {"at": {"student_tap": 9, "teacher_tap": 1}},
            "student_tap=9: test_efficientnet has no feature index 9 (valid: feature indices 0=blocks.0",
        ),
        (
            {"at": {"student_tap": 1, "teacher_tap": "layer7"}},
            "teacher_tap='layer7' is not a module of test_resnet; did you mean layer4",
        ),
        ({"at": {"student_tap": "embedding", "teacher_tap": "embedding"}}, "'at' needs 4-D feature maps"),
        ({"fitnet": {"student_tap": "embedding", "teacher_tap": 2}}, "must both be maps or both vectors"),
    ],
)
def test_bad_taps_are_named_with_the_valid_ones(terms, fragment):
    with pytest.raises(KdclError, match=fragment.replace("(", r"\(").replace("?", r"\?")):
        attach(terms, *tiny_pair())


@pytest.mark.parametrize(
    "terms, fragment",
    [
        ({"at": {"student_tap": 1}}, "distill.terms.at.teacher_tap is required"),
        ({"at": {"student_tap": [1, 2], "teacher_tap": 1}}, "the same number of taps"),
        ({"dkd": {"beta": -8.0}}, "distill.terms.dkd.beta=-8.0 must be a number ≥ 0"),
        ({"dist": {"temperature": 0}}, "distill.terms.dist.temperature=0 must be a number > 0"),
        ({"kd": {"schedule": {"temprature": {"kind": "linear"}}}}, "has no numeric parameter temprature"),
        ({"kd": {"schedule": {"weight": {"kind": "cosin"}}}}, "did you mean cosine"),
        ({"kd": {"schedule": {"weight": {"until": 0}}}}, "until=0 must be a fraction of the stage in \\(0, 1\\]"),
        ({"kd": {"schedule": {"temperature": {"kind": "linear"}}}}, "start=0.0 must be a number > 0"),
        ({"ce": {"label_smoothing": 1.0}}, "label_smoothing=1.0 must be in"),
    ],
)
def test_bad_term_settings_are_named(terms, fragment):
    with pytest.raises(KdclError, match=fragment.replace("?", r"\?")):
        DistillLoss(terms)


def test_hint_loss_through_a_linear_bridge_on_embeddings():
    student, teacher = tiny_pair()
    loss = attach({"fitnet": {"student_tap": "embedding", "teacher_tap": "embedding"}}, student, teacher)
    bridge = loss.learned["fitnet"][0]
    assert isinstance(bridge, torch.nn.Linear)
    x = torch.randn(2, 1, 32, 32)
    s_emb = student.forward_head(student.forward_features(x), pre_logits=True)
    with torch.no_grad():
        t_emb = teacher.forward_head(teacher.forward_features(x), pre_logits=True)
    value = loss(TermInputs(student(x), [teacher(x)], torch.zeros(2, dtype=torch.long)))[0]
    assert value.item() == pytest.approx(F.mse_loss(bridge(s_emb), t_emb).item(), rel=1e-5)


def test_a_checkpoint_from_before_learned_modules_loads_its_bridge():
    # FitNets' bridges were saved under `bridges.` before every term's learned modules moved to `learned.`
    loss = attach({"fitnet": {"student_tap": 2, "teacher_tap": 2}}, *tiny_pair())
    old = {k.replace("learned.", "bridges.", 1): v + 1 for k, v in loss.state_dict().items()}
    loss.load_state_dict(old)
    assert torch.equal(loss.learned["fitnet"][0][0].weight, old["bridges.fitnet.0.0.weight"])
