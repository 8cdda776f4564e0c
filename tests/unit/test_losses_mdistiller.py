"""NST, PKT, SP and KD-SVD (`kdcl.losses.functional`) against the papers' definitions, computed independently.

Each expected value is a plain-Python loop over small random tensors, written from the defining paper and the
reference code the function follows (RepDistiller's NSTLoss, PKT and Similarity; mdistiller's KDSVD). Each
expected gradient is a central finite difference of that plain-Python reference in float64, compared with the
function's autograd gradient. KD-SVD's reference finds singular vectors as eigenvectors of XᵀX by Jacobi
rotations, not by an SVD. Then the terms on real timm models, and their config checks.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from kdcl.common.errors import KdclError
from kdcl.losses import DistillLoss
from kdcl.losses.functional import kdsvd_loss, nst_loss, pkt_loss, sp_loss
from kdcl.losses.terms import TermInputs
from tests.unit.test_functional import avg_pool_2x2
from tests.unit.test_terms import attach, tiny_pair

# --- plain-Python references ------------------------------------------------------------------------------


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def unit(v: list[float], eps: float = 0.0) -> list[float]:
    n = math.sqrt(dot(v, v))
    return [x / (n + eps) for x in v] if n + eps > 0 else [0.0] * len(v)


def ref_nst(s, t) -> float:
    """MMD² with k(x, y) = (xᵀy)² between the channels (maps flattened, L2-normalised), mean over b and pairs."""

    def channels(sample):
        return [unit([v for row in ch for v in row]) for ch in sample]

    def kernel_mean(xs, ys):
        return sum(dot(x, y) ** 2 for x in xs for y in ys) / (len(xs) * len(ys))

    total = 0.0
    for fs, ft in zip(s, t, strict=True):
        cs, ct = channels(fs), channels(ft)
        total += kernel_mean(ct, ct) + kernel_mean(cs, cs) - 2 * kernel_mean(cs, ct)
    return total / len(s)


def ref_pkt(s, t, eps: float = 1e-7) -> float:
    """KL between the conditional probabilities p(j|i) ∝ (cos(e_i, e_j) + 1)/2, averaged over all (i, j)."""

    def conditional(e):
        e = [unit(row, eps) for row in e]
        sim = [[(dot(a, b) + 1) / 2 for b in e] for a in e]
        return [[v / sum(row) for v in row] for row in sim]

    ps, pt = conditional(s), conditional(t)
    n = len(s)
    return sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps)) for i in range(n) for j in range(n)) / n**2


def flat(sample) -> list[float]:
    if not isinstance(sample, list):
        return [sample]
    return [v for part in sample for v in flat(part)]


def ref_sp(s, t) -> float:
    """‖G_t − G_s‖²_F / b², G = the batch's Gram matrix of flattened features with L2-normalised rows."""

    def gram(batch):
        rows = [[dot(flat(a), flat(b)) for b in batch] for a in batch]
        return [unit(row) for row in rows]

    gs, gt = gram(s), gram(t)
    b = len(s)
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def jacobi_eigen(a: list[list[float]]) -> list[tuple[float, list[float]]]:
    """(eigenvalue, unit eigenvector) of a symmetric matrix by cyclic Jacobi rotations, largest first."""
    n = len(a)
    a = [row[:] for row in a]
    v = [[float(i == j) for j in range(n)] for i in range(n)]
    for _ in range(100):
        if sum(a[i][j] ** 2 for i in range(n) for j in range(i + 1, n)) < 1e-30:
            break
        for p in range(n):
            for q in range(p + 1, n):
                if a[p][q] == 0:
                    continue
                theta = (a[q][q] - a[p][p]) / (2 * a[p][q])
                tan = (1 if theta >= 0 else -1) / (abs(theta) + math.sqrt(theta * theta + 1))
                c = 1 / math.sqrt(tan * tan + 1)
                s = tan * c
                for m in (a, v):  # columns p, q
                    for k in range(n):
                        mp, mq = m[k][p], m[k][q]
                        m[k][p], m[k][q] = c * mp - s * mq, s * mp + c * mq
                for k in range(n):  # rows p, q of a
                    ap, aq = a[p][k], a[q][k]
                    a[p][k], a[q][k] = c * ap - s * aq, s * ap + c * aq
    pairs = [(a[i][i], [v[k][i] for k in range(n)]) for i in range(n)]
    return sorted(pairs, key=lambda p: -p[0])


def right_singular(sample, n: int) -> tuple[list[float], list[list[float]]]:
    """Top n singular values and right singular vectors of one map [C][H][W] read as the (C·H)×W matrix."""
    rows = [row for ch in sample for row in ch]
    w = len(rows[0])
    gram = [[sum(r[i] * r[j] for r in rows) for j in range(w)] for i in range(w)]
    top = jacobi_eigen(gram)[:n]
    return [math.sqrt(max(value, 0.0)) for value, _ in top], [unit(vec) for _, vec in top]


def ref_kdsvd(s_layers, t_layers, k: int, teacher_signs) -> float:
    """Lee et al.'s KD-SVD as mdistiller computes it, from the definition.

    Per sample and layer: the teacher's top-k right singular vectors, scaled by its top-k singular values
    normalised over the k; each paired with the student's vector (among its top k+3) of largest |cosine|,
    signed like that cosine, same scale. Between consecutive layers: Σ (exp(−(a_i − b_j)²/8) over the student's
    entries − the same over the teacher's)², all i, j and each of the k vectors, / batch. An SVD's vectors have
    no sign of their own: `teacher_signs[layer][sample][j]` is the ±1 the decomposition under test chose for the
    teacher (the loss inherits it, as mdistiller's does); the student's sign cancels in the alignment.
    """
    batch = len(s_layers[0])
    layers = []
    for li, (s, t) in enumerate(zip(s_layers, t_layers, strict=True)):
        per_sample = []
        for b in range(batch):
            sv_t, v_t = right_singular(t[b], k)
            _, v_s = right_singular(s[b], k + 3)
            scale = unit(sv_t)
            pairs = []
            for j in range(k):
                teacher = [teacher_signs[li][b][j] * x for x in v_t[j]]
                cosines = [dot(vs, teacher) for vs in v_s]
                best = max(range(len(v_s)), key=lambda i: abs(cosines[i]))
                student = [math.copysign(1.0, cosines[best]) * x for x in v_s[best]]
                pairs.append(([scale[j] * x for x in student], [scale[j] * x for x in teacher]))
            per_sample.append(pairs)
        layers.append(per_sample)
    total = 0.0
    for prev, cur in itertools.pairwise(layers):
        for b in range(batch):
            for j in range(k):
                (s_now, t_now), (s_before, t_before) = cur[b][j], prev[b][j]
                for i in range(len(s_now)):
                    for m in range(len(s_before)):
                        rbf_s = math.exp(-((s_now[i] - s_before[m]) ** 2) / 8)
                        rbf_t = math.exp(-((t_now[i] - t_before[m]) ** 2) / 8)
                        total += (rbf_s - rbf_t) ** 2
    return total / batch


def torch_signs(t_layers: list[torch.Tensor], k: int) -> list[list[list[float]]]:
    """The sign torch's SVD gave each teacher singular vector, relative to the Jacobi reference's."""
    signs = []
    for t in t_layers:
        b, c, h, w = t.shape
        vh = torch.linalg.svd(t.reshape(b, c * h, w), full_matrices=False)[2]
        signs.append(
            [
                [math.copysign(1.0, dot(vh[i, j].tolist(), right_singular(t[i].tolist(), k)[1][j])) for j in range(k)]
                for i in range(b)
            ]
        )
    return signs


def numeric_gradient(fn, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Central differences of a plain-Python function of x.tolist(), in float64."""
    grad = torch.zeros_like(x, dtype=torch.float64)
    base = x.detach().double()
    for i in range(base.numel()):
        plus, minus = base.clone().view(-1), base.clone().view(-1)
        plus[i] += h
        minus[i] -= h
        grad.view(-1)[i] = (fn(plus.view_as(base).tolist()) - fn(minus.view_as(base).tolist())) / (2 * h)
    return grad


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def check_value_and_gradient(loss, reference, student: torch.Tensor, teacher: torch.Tensor) -> None:
    """loss(student, teacher) equals the reference, and so does its gradient; none reaches the teacher."""
    student, teacher = student.clone().requires_grad_(True), teacher.clone().requires_grad_(True)
    value = loss(student, teacher)
    assert value.item() == pytest.approx(reference(student.tolist(), teacher.tolist()), rel=1e-9, abs=1e-12)
    value.backward()
    expected = numeric_gradient(lambda s: reference(s, teacher.tolist()), student)
    assert expected.abs().max() > 1e-6  # a gradient that can be wrong
    torch.testing.assert_close(student.grad, expected, rtol=1e-5, atol=1e-8)
    assert teacher.grad is None


# --- values and gradients against the definitions ---------------------------------------------------------


@pytest.mark.parametrize("channels", [(3, 3), (2, 4)], ids=["same-width", "other-width"])
def test_nst_value_and_gradient(channels):
    s, t = randn(2, channels[0], 3, 3, seed=1), randn(2, channels[1], 3, 3, seed=2)
    check_value_and_gradient(nst_loss, ref_nst, s, t)


@pytest.mark.parametrize("larger", ["student", "teacher"])
def test_nst_average_pools_the_larger_map(larger):
    big, small = randn(2, 3, 4, 4, seed=3), randn(2, 2, 2, 2, seed=4)
    pooled = [[avg_pool_2x2(ch) for ch in sample] for sample in big.tolist()]
    if larger == "student":
        got, expected = nst_loss(big, small), ref_nst(pooled, small.tolist())
    else:
        got, expected = nst_loss(small, big), ref_nst(small.tolist(), pooled)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_pkt_value_and_gradient():
    check_value_and_gradient(pkt_loss, ref_pkt, randn(5, 3, seed=5), randn(5, 7, seed=6))  # widths differ


def test_pkt_flattens_maps():
    s, t = randn(4, 2, 2, 2, seed=7), randn(4, 3, seed=8)
    assert pkt_loss(s, t).item() == pytest.approx(ref_pkt(s.flatten(1).tolist(), t.tolist()), rel=1e-9)


@pytest.mark.parametrize(
    ("s_shape", "t_shape"),
    [((4, 3), (4, 5)), ((3, 2, 3, 3), (3, 4, 2, 2))],
    ids=["vectors", "maps-of-other-sizes"],
)
def test_sp_value_and_gradient(s_shape, t_shape):
    check_value_and_gradient(sp_loss, ref_sp, randn(*s_shape, seed=9), randn(*t_shape, seed=10))


# KD-SVD on two layers: widths 6 (the student's top k+3 is a truncation) and 3; channel counts differ.
S_SHAPES, T_SHAPES = [(2, 2, 3, 6), (2, 3, 2, 3)], [(2, 3, 3, 6), (2, 4, 2, 3)]


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_value_and_gradient(k):
    students = [randn(*shape, seed=20 + i) for i, shape in enumerate(S_SHAPES)]
    teachers = [randn(*shape, seed=30 + i) for i, shape in enumerate(T_SHAPES)]
    signs = torch_signs(teachers, k)
    t_lists = [t.tolist() for t in teachers]

    def reference(first, second):
        return ref_kdsvd([first, second], t_lists, k, signs)

    first, second = (s.clone().requires_grad_(True) for s in students)
    value = kdsvd_loss([first, second], [t.clone().requires_grad_(True) for t in teachers], k)
    assert value.item() == pytest.approx(reference(first.tolist(), second.tolist()), rel=1e-9)
    assert value.item() > 1e-4
    value.backward()
    expected = [
        numeric_gradient(lambda x: reference(x, second.tolist()), first),
        numeric_gradient(lambda x: reference(first.tolist(), x), second),
    ]
    for got, want in zip([first.grad, second.grad], expected, strict=True):
        assert want.abs().max() > 1e-6
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-8)


def test_kdsvd_single_layer_is_zero_and_pooling_matches_pooled_maps():
    t = [randn(2, 3, 2, 2, seed=40), randn(2, 3, 1, 1, seed=41)]
    assert kdsvd_loss(t[:1], [randn(2, 3, 2, 2, seed=42)]).item() == 0  # nothing to relate
    big = randn(2, 3, 4, 4, seed=43)
    pooled = torch.nn.functional.avg_pool2d(big, 2)
    second = randn(2, 3, 1, 1, seed=44)
    assert kdsvd_loss([big, second], t).item() == pytest.approx(kdsvd_loss([pooled, second], t).item(), rel=1e-9)


def test_kdsvd_gradient_stays_finite_on_a_dead_map():
    # An all-zero map (dead ReLUs) has repeated zero singular values: torch's SVD backward gives NaN there;
    # the loss sets those gradient entries to 0 instead of poisoning the student's weights.
    students = [torch.zeros(2, 3, 4, 4, dtype=torch.float64, requires_grad=True), randn(2, 3, 2, 2, seed=45)]
    students[1].requires_grad_(True)
    loss = kdsvd_loss(students, [randn(2, 3, 4, 4, seed=46), randn(2, 3, 2, 2, seed=47)])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(s.grad).all() for s in students)
    assert students[1].grad.abs().sum() > 0


@pytest.mark.parametrize("loss", [nst_loss, pkt_loss, sp_loss], ids=["nst", "pkt", "sp"])
def test_zero_when_student_equals_teacher(loss):
    x = randn(3, 4, 3, 3, seed=50)
    assert loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-9)


def test_kdsvd_zero_when_student_equals_teacher():
    xs = [randn(3, 4, 3, 5, seed=51), randn(3, 4, 2, 2, seed=52)]
    assert kdsvd_loss(xs, [x.clone() for x in xs]).item() == pytest.approx(0.0, abs=1e-9)


# --- the terms on real timm models ------------------------------------------------------------------------


def test_terms_read_their_taps_and_train_the_student_only():
    student, teacher = tiny_pair()
    teacher.requires_grad_(True)  # only the losses' detach keeps gradients out of it
    feats = {}
    for name, module in [("s1", student.blocks[1]), ("s2", student.blocks[2]), ("s4", student.blocks[4])]:
        module.register_forward_hook(lambda m, i, o, name=name: feats.__setitem__(name, o))
    for name, module in [("t1", teacher.layer1), ("t2", teacher.layer2), ("t4", teacher.layer4)]:
        module.register_forward_hook(lambda m, i, o, name=name: feats.__setitem__(name, o.detach()))
    loss = attach(
        {
            "nst": {"weight": 1.0, "student_tap": [1, 2], "teacher_tap": [1, "layer2"]},
            "pkt": {"weight": 1.0, "student_tap": "embedding", "teacher_tap": "embedding"},
            "sp": {"weight": 1.0, "student_tap": -1, "teacher_tap": -1},
            "kdsvd": {"weight": 1.0, "student_tap": [1, 2], "teacher_tap": [1, 2]},
        },
        student,
        teacher,
    )
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,))
    total, parts = loss(TermInputs(student(x), [teacher(x)], y))
    s_emb = student.forward_head(student.forward_features(x), pre_logits=True)
    t_emb = teacher.forward_head(teacher.forward_features(x), pre_logits=True)
    sl = {k: v.tolist() for k, v in feats.items()}
    assert parts["nst"].item() == pytest.approx(ref_nst(sl["s1"], sl["t1"]) + ref_nst(sl["s2"], sl["t2"]), rel=1e-4)
    assert parts["pkt"].item() == pytest.approx(ref_pkt(s_emb.tolist(), t_emb.tolist()), rel=1e-4, abs=1e-9)
    assert parts["sp"].item() == pytest.approx(ref_sp(sl["s4"], sl["t4"]), rel=1e-4)
    signs = torch_signs([feats["t1"], feats["t2"]], 1)
    expected = ref_kdsvd([sl["s1"], sl["s2"]], [sl["t1"], sl["t2"]], 1, signs)
    assert parts["kdsvd"].item() == pytest.approx(expected, rel=1e-3, abs=1e-7)
    total.backward()
    assert student.conv_stem.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize(
    "terms, fragment",
    [
        ({"kdsvd": {"student_tap": 2, "teacher_tap": 2}}, "'kdsvd' relates consecutive layers and needs at least 2"),
        (
            {"kdsvd": {"k": 0, "student_tap": [1, 2], "teacher_tap": [1, 2]}},
            "distill.terms.kdsvd.k=0 must be a number > 0",
        ),
        ({"kdsvd": {"k": 1.5, "student_tap": [1, 2], "teacher_tap": [1, 2]}}, "k=1.5 must be a whole number ≥ 1"),
        (
            {"sp": {"weight": -3, "student_tap": -1, "teacher_tap": -1}},
            "distill.terms.sp.weight=-3 must be a number ≥ 0",
        ),
        ({"pkt": {"eps": 0.1, "student_tap": "embedding", "teacher_tap": "embedding"}}, "eps is not a parameter"),
    ],
)
def test_bad_term_settings_are_named(terms, fragment):
    with pytest.raises(KdclError, match=fragment):
        DistillLoss(terms)


def test_nst_and_kdsvd_need_maps():
    for kind in ("nst", "kdsvd"):
        taps = {"student_tap": ["embedding", "embedding"], "teacher_tap": ["embedding", "embedding"]}
        with pytest.raises(KdclError, match=f"'{kind}' needs 4-D feature maps"):
            attach({kind: taps}, *tiny_pair())
