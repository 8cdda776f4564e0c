"""NST, PKT, SP, KD-SVD, VID, OFD, CRD and ReviewKD (`kdcl.losses.functional`, `kdcl.losses.learned`) against the
papers' definitions, computed independently.

Each expected value is a plain-Python loop over small random tensors, written from the defining paper and the
reference code the function follows (RepDistiller's NSTLoss, PKT, Similarity, VIDLoss and CRDLoss; mdistiller's
KDSVD, OFD and ReviewKD). Each
expected gradient is a central finite difference of that plain-Python reference in float64, compared with the
function's autograd gradient. KD-SVD's reference finds singular vectors as eigenvectors of XᵀX by Jacobi
rotations, not by an SVD; OFD's reference is the paper's form (target max(t, margin), no loss below a
non-positive target), not mdistiller's three masks. Then the terms on real timm models, their learned modules,
and their config checks.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from kdcl.common.errors import KdclError
from kdcl.losses import DistillLoss
from kdcl.losses.functional import (
    crd_loss,
    hcl_loss,
    kdsvd_loss,
    nst_loss,
    ofd_loss,
    ofd_margin,
    pkt_loss,
    sp_loss,
    vid_loss,
)
from kdcl.losses.learned import ContrastMemory, ReviewFusion, VIDRegressor, check_bank
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


# --- VID, OFD, CRD: plain-Python references -----------------------------------------------------------------


def conv1x1(sample, weight):
    """One sample [C][H][W] through a bias-free 1×1 convolution, weight [O][C]."""
    h, w = len(sample[0]), len(sample[0][0])
    return [[[dot(row, [ch[i][j] for ch in sample]) for j in range(w)] for i in range(h)] for row in weight]


def relu(sample):
    return [[[max(v, 0.0) for v in row] for row in ch] for ch in sample]


def ref_vid(s, t, weights, log_scale, eps) -> float:
    """½((μ − t)²/σ² + log σ²) averaged over b, c, h, w; μ = W3·relu(W2·relu(W1·s)) per position (the student
    average-pooled 2×2 when its map is larger), σ²_c = log(1 + exp(log_scale_c)) + eps."""
    variance = [math.log(1 + math.exp(v)) + eps for v in log_scale]
    total, count = 0.0, 0
    for fs, ft in zip(s, t, strict=True):
        if len(fs[0]) > len(ft[0]):
            fs = [avg_pool_2x2(ch) for ch in fs]
        mean = conv1x1(relu(conv1x1(relu(conv1x1(fs, weights[0])), weights[1])), weights[2])
        for c, (mc, tc) in enumerate(zip(mean, ft, strict=True)):
            for mr, tr in zip(mc, tc, strict=True):
                for m, y in zip(mr, tr, strict=True):
                    total += 0.5 * ((m - y) ** 2 / variance[c] + math.log(variance[c]))
                    count += 1
    return total / count


def normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def ref_margin(gamma: float, beta: float) -> float:
    """E[x | x < 0] for x ~ N(β, γ²): β − |γ|·pdf(β/|γ|)/Φ(−β/|γ|), or −3|γ| when P(x < 0) ≤ 0.001."""
    s = abs(gamma)
    if s == 0 or normal_cdf(-beta / s) <= 0.001:
        return -3 * s
    return beta - s * math.exp(-((beta / s) ** 2) / 2) / math.sqrt(2 * math.pi) / normal_cdf(-beta / s)


def ref_ofd(s, t, margin) -> float:
    """Heo et al.'s partial L2: target max(t, m_c); zero where the target is ≤ 0 and the student is below it,
    else (s − target)²; summed over c, h, w, / batch. The teacher is average-pooled 2×2 when larger."""
    total = 0.0
    for fs, ft in zip(s, t, strict=True):
        if len(ft[0]) > len(fs[0]):
            ft = [avg_pool_2x2(ch) for ch in ft]
        for c, (sc, tc) in enumerate(zip(fs, ft, strict=True)):
            for x, y in zip(flat(sc), flat(tc), strict=True):
                target = max(y, margin[c])
                if not (target <= 0 and x <= target):
                    total += (x - target) ** 2
    return total / len(s)


def ref_crd(s, t, s_rows, t_rows, z, temperature, n, eps=1e-7) -> float:
    """Tian et al.'s eq. 18 both ways: P = exp(⟨row, anchor⟩/T)/Z, positive first; NCE against noise K/N:
    −Σ [log P₀/(P₀ + K/N + eps) + Σ_k log (K/N)/(P_k + K/N + eps)] / b, student anchors on the teacher's rows."""

    def nce(scores):
        noise = (len(scores[0]) - 1) / n
        total = 0.0
        for row in scores:
            total += math.log(row[0] / (row[0] + noise + eps))
            total += sum(math.log(noise / (p + noise + eps)) for p in row[1:])
        return -total / len(scores)

    out_s = [[math.exp(dot(r, a) / temperature) / z[0] for r in rows] for a, rows in zip(s, t_rows, strict=True)]
    out_t = [[math.exp(dot(r, a) / temperature) / z[1] for r in rows] for a, rows in zip(t, s_rows, strict=True)]
    return nce(out_s) + nce(out_t)


def vid_module(s_channels: int, t_channels: int, seed: int) -> VIDRegressor:
    torch.manual_seed(seed)
    module = VIDRegressor(s_channels, t_channels, init_variance=5.0, eps=1e-5).double()
    with torch.no_grad():
        module.log_scale.copy_(randn(t_channels, seed=seed + 1))  # per-channel variances that differ
    return module


def vid_weights(module: VIDRegressor) -> list[list[list[float]]]:
    return [module.regressor[i].weight[:, :, 0, 0].tolist() for i in (0, 2, 4)]


# --- VID, OFD, CRD: values and gradients against the definitions --------------------------------------------


@pytest.mark.parametrize("student_size", [2, 4], ids=["same-size", "student-larger"])
def test_vid_value_and_gradient(student_size):
    module, eps = vid_module(3, 4, seed=60), 1e-5
    weights, log_scale = vid_weights(module), module.log_scale.tolist()
    check_value_and_gradient(
        lambda s, t: vid_loss(s, t, module.regressor, module.log_scale, eps),
        lambda s, t: ref_vid(s, t, weights, log_scale, eps),
        randn(2, 3, student_size, student_size, seed=61),
        randn(2, 4, 2, 2, seed=62),
    )


def test_vid_variance_gradient_and_its_start():
    module, eps = vid_module(3, 4, seed=63), 1e-5
    s, t = randn(2, 3, 2, 2, seed=64), randn(2, 4, 2, 2, seed=65)
    vid_loss(s, t, module.regressor, module.log_scale, eps).backward()
    weights = vid_weights(module)
    expected = numeric_gradient(lambda ls: ref_vid(s.tolist(), t.tolist(), weights, ls, eps), module.log_scale)
    assert expected.abs().max() > 1e-6
    torch.testing.assert_close(module.log_scale.grad, expected, rtol=1e-5, atol=1e-8)
    fresh = VIDRegressor(3, 4, init_variance=5.0, eps=eps)  # the paper's σ² starts at init_variance
    assert torch.allclose(torch.nn.functional.softplus(fresh.log_scale) + eps, torch.full((4,), 5.0))


def test_ofd_margin_is_the_expected_negative_response():
    gamma = torch.tensor([1.0, 0.5, 2.0, 0.1, 0.0, -1.5], dtype=torch.float64)
    beta = torch.tensor([0.0, 1.0, -1.0, 1.0, 0.3, 0.2], dtype=torch.float64)  # 0.1 / 1.0: P(x<0) ≤ 0.001
    expected = [ref_margin(g, b) for g, b in zip(gamma.tolist(), beta.tolist(), strict=True)]
    assert ofd_margin(gamma, beta).tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert expected[3] == pytest.approx(-0.3) and expected[0] == pytest.approx(-math.sqrt(2 / math.pi))


@pytest.mark.parametrize("teacher_size", [2, 4], ids=["same-size", "teacher-larger"])
def test_ofd_value_and_gradient(teacher_size):
    margin = [-0.8, -0.2, -1.5]
    student, teacher = randn(2, 3, 2, 2, seed=70), randn(2, 3, teacher_size, teacher_size, seed=71)
    check_value_and_gradient(
        lambda s, t: ofd_loss(s, t, torch.tensor(margin, dtype=torch.float64)),
        lambda s, t: ref_ofd(s, t, margin),
        student,
        teacher,
    )


def test_ofd_costs_nothing_below_a_non_positive_target():
    t = torch.tensor([[[[-2.0, -0.5], [1.0, -0.1]]]], dtype=torch.float64)  # margin -1: targets -1, -0.5, 1, -0.1
    below = torch.tensor([[[[-3.0, -0.7], [1.0, -0.2]]]], dtype=torch.float64)
    assert ofd_loss(below, t, torch.tensor([-1.0])).item() == 0
    above = below + 0.5
    assert ofd_loss(above, t, torch.tensor([-1.0])).item() == pytest.approx(0.3**2 + 0.5**2 + 0.4**2)  # -2.5 ≤ -1


def unit_rows(*shape: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(randn(*shape, seed=seed), dim=-1)


def test_crd_value_and_gradients():
    # both embeddings get gradients: each is the output of its own learned linear layer (the teacher's feature
    # itself is detached before it, by the term)
    s, t = unit_rows(3, 4, seed=80).requires_grad_(True), unit_rows(3, 4, seed=81).requires_grad_(True)
    s_rows, t_rows = unit_rows(3, 6, 4, seed=82), unit_rows(3, 6, 4, seed=83)  # positive + 5 negatives
    z, temperature, n = (7.5, 3.25), 0.5, 40
    rows = s_rows.tolist(), t_rows.tolist()
    value = crd_loss(s, t, s_rows, t_rows, z, temperature, n)
    assert value.item() == pytest.approx(ref_crd(s.tolist(), t.tolist(), *rows, z, temperature, n), rel=1e-9)
    value.backward()
    for x, reference in (
        (s, lambda v: ref_crd(v, t.tolist(), *rows, z, temperature, n)),
        (t, lambda v: ref_crd(s.tolist(), v, *rows, z, temperature, n)),
    ):
        expected = numeric_gradient(reference, x)
        assert expected.abs().max() > 1e-6
        torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-8)


def test_crd_memory_samples_other_classes_and_updates_with_momentum():
    labels = torch.tensor([0, 2, 1, 0, 1, 1, 2, 0])
    torch.manual_seed(0)
    bank = ContrastMemory(5, 7, dim=4, labels=labels, negatives=400)
    index = torch.tensor([3, 5, 1])
    sampled = bank.sample(index)
    assert sampled.shape == (3, 401) and sampled[:, 0].tolist() == index.tolist()
    for row, i in zip(sampled[:, 1:], index, strict=True):
        others = {j for j in range(8) if labels[j] != labels[i]}
        assert set(row.tolist()) == others  # every example of another class, and only those (400 draws)
    s, t = unit_rows(3, 4, seed=90).float(), unit_rows(3, 4, seed=91).float()
    before = bank.memory_s[index].clone(), bank.memory_t[index].clone()
    bank.update(index, s, t, momentum=0.5)
    for memory, old, new in ((bank.memory_s, before[0], s), (bank.memory_t, before[1], t)):
        mixed = 0.5 * old + 0.5 * new
        torch.testing.assert_close(memory[index], mixed / mixed.norm(dim=1, keepdim=True))
    z = bank.normalisers(s, t, sampled, 0.07)[0].item()
    expected = torch.exp(torch.bmm(bank.memory_t[sampled], s.unsqueeze(2)) / 0.07).mean() * 8
    assert z == pytest.approx(expected.item(), rel=1e-5)
    assert bank.normalisers(t, s, sampled, 0.07)[0].item() == z  # set once, from the first batch


# --- VID, OFD, CRD on real timm models ----------------------------------------------------------------------


def labels_of_8() -> torch.Tensor:
    return torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])


def test_vid_ofd_crd_train_their_modules_and_the_student_only():
    student, teacher = tiny_pair()
    teacher.requires_grad_(True)  # only the losses' detach keeps gradients out of it
    terms = {
        "vid": {"weight": 1.0, "student_tap": [1, 2], "teacher_tap": [1, 2]},
        "ofd": {"weight": 1.0, "student_tap": [1, 2], "teacher_tap": [1, 2]},
        "crd": {"weight": 1.0, "negatives": 4, "student_tap": "embedding", "teacher_tap": "embedding"},
    }
    loss = DistillLoss(terms, labels=labels_of_8)
    loss.attach(student, [teacher], torch.zeros(1, 1, 32, 32), ["test_efficientnet", "test_resnet"])
    x, y, index = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3]), torch.tensor([0, 5, 2, 7])
    total, parts = loss(TermInputs(student(x), [teacher(x)], y, index=index))
    assert all(torch.isfinite(v) and v.item() != 0 for v in parts.values())
    total.backward()
    for name in terms:
        params = list(loss.learned[name].parameters())
        assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params), name
    assert student.conv_stem.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    sizes, bank = loss.summaries()
    assert sizes.startswith("learned parameters (trained with the student, never exported): ")
    assert [part.split()[0] for part in sizes.split(": ")[1].split(", ")] == list(terms)
    assert bank == "crd: memory bank of 8 examples × 128 dims × 2 models = 0.0 MB, 4 negatives per example"


def test_ofd_reads_the_teachers_pre_relu_stage_and_its_margin():
    student, teacher = tiny_pair()
    seen = {}
    last = teacher.layer2[-1]  # test_resnet's stage 2 ends in a BasicBlock: act2 after the residual sum
    last.act2.register_forward_pre_hook(lambda m, a: seen.__setitem__("t", a[0].clone()))
    student.blocks[2].register_forward_hook(lambda m, a, o: seen.__setitem__("s", o))  # linear projection: as is
    loss = attach({"ofd": {"student_tap": 2, "teacher_tap": 2}}, student, teacher)
    connector = loss.learned["ofd"][0]
    torch.testing.assert_close(connector.margin, ofd_margin(last.bn2.weight, last.bn2.bias))
    assert loss.paths[("ofd", 1)] == [("layer2.0.act2", True)] and loss.paths[("ofd", 0)] == [("blocks.2", False)]
    x = torch.randn(4, 1, 32, 32)
    _, parts = loss(TermInputs(student(x), [teacher(x)], torch.zeros(4, dtype=torch.long)))
    assert (seen["t"] < 0).any()  # pre-ReLU: the negative responses the margin is about
    expected = ofd_loss(connector.connector(seen["s"]), seen["t"], connector.margin)  # its BN in train mode, as then
    assert parts["ofd"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_crd_term_is_the_formula_on_the_bank_before_its_update():
    student, teacher = tiny_pair()
    loss = DistillLoss({"crd": {"negatives": 3, "student_tap": "embedding", "teacher_tap": "embedding"}},
                       labels=labels_of_8)  # fmt: skip
    loss.attach(student, [teacher], torch.zeros(1, 1, 32, 32), ["test_efficientnet", "test_resnet"])
    bank = loss.learned["crd"][0]
    x, index = torch.randn(4, 1, 32, 32), torch.tensor([1, 2, 4, 7])
    with torch.no_grad():
        s_emb = student.forward_head(student.forward_features(x), pre_logits=True)
        t_emb = teacher.forward_head(teacher.forward_features(x), pre_logits=True)
        s, t = bank.embed(s_emb, t_emb)
    memory = bank.memory_s.clone(), bank.memory_t.clone()
    torch.manual_seed(5)
    sampled = bank.sample(index)
    inputs = TermInputs(student(x), [teacher(x)], labels_of_8()[index], index=index)
    torch.manual_seed(5)  # the term draws the same negatives
    _, parts = loss(inputs)
    rows = memory[0][sampled].tolist(), memory[1][sampled].tolist()
    z = [bank.z[0].item(), bank.z[1].item()]
    expected = ref_crd(s.tolist(), t.tolist(), *rows, z, 0.07, 8)
    assert parts["crd"].item() == pytest.approx(expected, rel=1e-4)
    assert not torch.equal(bank.memory_s[index], memory[0][index])  # then the bank moved towards this batch


# --- VID, OFD, CRD: bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "terms, fragment",
    [
        (
            {"vid": {"weight": -1, "student_tap": 1, "teacher_tap": 1}},
            "distill.terms.vid.weight=-1 must be a number ≥ 0",
        ),
        ({"ofd": {"weight": -0.001, "student_tap": 1, "teacher_tap": 1}}, "distill.terms.ofd.weight=-0.001 must be"),
        ({"crd": {"weight": -0.8, "student_tap": 1, "teacher_tap": 1}}, "distill.terms.crd.weight=-0.8 must be"),
        ({"crd": {"momentum": 1.0, "student_tap": 1, "teacher_tap": 1}}, "crd.momentum=1.0 must be in [0, 1)"),
        ({"crd": {"negatives": 0.5, "student_tap": 1, "teacher_tap": 1}}, "crd.negatives=0.5 must be a whole number"),
        ({"vid": {"init_variance": 0, "student_tap": 1, "teacher_tap": 1}}, "vid.init_variance=0 must be a number > 0"),
        (
            {"crd": {"student_tap": 1, "teacher_tap": 1, "schedule": {"negatives": {"kind": "linear"}}}},
            "crd.schedule.negatives: negatives sizes the term's learned module and cannot follow a schedule",
        ),
        ({"ofd": {"margin": 1, "student_tap": 1, "teacher_tap": 1}}, "margin is not a parameter of the 'ofd' term"),
    ],
)
def test_bad_vid_ofd_crd_settings_are_one_line(terms, fragment):
    with pytest.raises(KdclError) as error:
        DistillLoss(terms)
    assert fragment in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "terms, fragment",
    [
        (
            {"vid": {"student_tap": [1, 9], "teacher_tap": [1, 2]}},
            "vid.student_tap=9: test_efficientnet has no feature index 9",
        ),
        (
            {"ofd": {"student_tap": 1, "teacher_tap": "layer9"}},
            "ofd.teacher_tap='layer9' is not a module of test_resnet",
        ),
        (
            {"crd": {"student_tap": "embedding", "teacher_tap": "fcc"}},
            "crd.teacher_tap='fcc' is not a module of test_resnet",
        ),
        ({"vid": {"student_tap": "embedding", "teacher_tap": "embedding"}}, "'vid' needs 4-D feature maps"),
        (
            {"ofd": {"student_tap": 1, "teacher_tap": "conv1"}},
            "OFD's margin needs a batch norm of 32 channels before the teacher tap's activation",
        ),
        (
            {"crd": {"negatives": 7, "student_tap": "embedding", "teacher_tap": "embedding"}},
            "distill.terms.crd.negatives=7 is more than the stage's data holds: 8 training examples, of which an "
            "example of the largest class has 6 of other classes to contrast with; set distill.terms.crd.negatives ≤ 6",
        ),
        (
            {"crd": {"negatives": 2, "max_bank_mb": 0.001, "student_tap": "embedding", "teacher_tap": "embedding"}},
            "the memory bank needs 0.0 MB (8 examples × 128 dims × 2 models × 4 bytes), over max_bank_mb=0.001",
        ),
    ],
)
def test_bad_vid_ofd_crd_taps_and_banks_are_one_line(terms, fragment):
    loss, (student, teacher) = DistillLoss(terms, labels=labels_of_8), tiny_pair()
    with pytest.raises(KdclError) as error:
        loss.attach(student, [teacher], torch.zeros(1, 1, 32, 32), ["test_efficientnet", "test_resnet"])
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_crd_bank_limit_bounds_every_bank_of_the_term_together():
    """Two teachers (or tap pairs) keep two banks: max_bank_mb bounds their sum, checked before training."""
    labels = torch.arange(1000) % 10
    params = {"negatives": 8, "dim": 128, "max_bank_mb": 1.5}
    check_bank("distill.terms.crd", labels, params)  # one bank: 1000 × 128 × 2 × 4 bytes = 0.98 MB
    with pytest.raises(KdclError) as error:
        check_bank("distill.terms.crd", labels, params, banks=2)
    assert str(error.value) == (
        "distill.terms.crd: the 2 memory banks (one per teacher and tap pair) need 2.0 MB (1000 examples × 128 dims × "
        "2 models × 4 bytes each), over max_bank_mb=1.5; lower distill.terms.crd.dim or raise "
        "distill.terms.crd.max_bank_mb"
    )


def test_crd_without_example_labels_is_refused_outside_the_shape_check():
    loss, (student, teacher) = (
        DistillLoss({"crd": {"student_tap": "embedding", "teacher_tap": "embedding"}}),
        tiny_pair(),
    )
    with pytest.raises(KdclError, match="CRD needs the training examples' labels"):
        loss.attach(student, [teacher], torch.zeros(1, 1, 32, 32), ["test_efficientnet", "test_resnet"])


# --- ReviewKD: plain-Python references ----------------------------------------------------------------------


def adaptive_pool(grid: list[list[float]], n: int) -> list[list[float]]:
    """torch's adaptive average pooling to n×n: output cell i averages rows ⌊i·H/n⌋ … ⌈(i+1)·H/n⌉ − 1 (so, too,
    the columns)."""
    h, w = len(grid), len(grid[0])

    def cells(i: int, size: int) -> range:
        return range(math.floor(i * size / n), math.ceil((i + 1) * size / n))

    return [[sum(grid[r][c] for r in cells(i, h) for c in cells(j, w)) / (len(cells(i, h)) * len(cells(j, w)))
             for j in range(n)] for i in range(n)]  # fmt: skip


def mse(a, b) -> float:
    fa, fb = flat(a), flat(b)
    return sum((x - y) ** 2 for x, y in zip(fa, fb, strict=True)) / len(fa)


def ref_hcl(s_levels, t_levels) -> float:
    """Chen et al.'s HCL, summed over levels: the maps' MSE at weight 1, then the MSE of both maps pooled to 4×4, 2×2,
    1×1 — each only if smaller than the map's height — at weights ½, ¼, ⅛ in the order taken, / Σ weights."""
    total = 0.0
    for s, t in zip(s_levels, t_levels, strict=True):
        h = len(s[0][0])
        weights, losses = [1.0], [mse(s, t)]
        for n in (4, 2, 1):
            if n < h:
                weights.append(weights[-1] / 2)
                losses.append(mse(*([[adaptive_pool(ch, n) for ch in sample] for sample in x] for x in (s, t))))
        total += sum(w * x for w, x in zip(weights, losses, strict=True)) / sum(weights)
    return total


def conv(sample, weight, bias=None, pad: int = 0):
    """One sample [C][H][W] through a stride-1 convolution, weight [O][C][k][k], zero padding `pad`."""
    h, w, k = len(sample[0]), len(sample[0][0]), len(weight[0][0])

    def at(ch, i, j) -> float:
        return sample[ch][i][j] if 0 <= i < h and 0 <= j < w else 0.0

    def out(o, i, j) -> float:
        taps = itertools.product(range(len(sample)), range(k), range(k))
        return (bias[o] if bias else 0.0) + sum(
            weight[o][c][a][b] * at(c, i + a - pad, j + b - pad) for c, a, b in taps
        )

    return [[[out(o, i, j) for j in range(w)] for i in range(h)] for o in range(len(weight))]


def batch_norm(batch, gamma, beta, eps: float = 1e-5):
    """Training-mode batch norm: each channel standardised by its mean and biased variance over batch and positions."""
    out = [[[] for _ in sample] for sample in batch]
    for c in range(len(batch[0])):
        values = [v for sample in batch for v in flat(sample[c])]
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / len(values)
        for n, sample in enumerate(batch):
            out[n][c] = [[(v - mean) / math.sqrt(var + eps) * gamma[c] + beta[c] for v in row] for row in sample[c]]
    return out


def nearest(sample, h: int, w: int):
    """Nearest-neighbour resize of [C][H][W] to h×w: output (i, j) reads input (⌊i·H/h⌋, ⌊j·W/w⌋)."""
    big_h, big_w = len(sample[0]), len(sample[0][0])
    return [[[ch[i * big_h // h][j * big_w // w] for j in range(w)] for i in range(h)] for ch in sample]


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def ref_abf(abf, x, residual, size):
    """The paper's ABF on a batch: BN(conv1×1(x)); with a residual, the two sigmoid attention maps of a 1×1 conv over
    [x, nearest(residual)] weigh x and the residual; resized (nearest) to `size`; BN(conv3×3(·)). (out, fused)."""

    def weights(module):
        return module.weight.tolist(), None if module.bias is None else module.bias.tolist()

    def norm(module):
        return module.weight.tolist(), module.bias.tolist()

    y = batch_norm([conv(sample, weights(abf.conv1[0])[0]) for sample in x], *norm(abf.conv1[1]))
    if residual is not None:
        fused = []
        for a, r in zip(y, residual, strict=True):
            r = nearest(r, len(a[0]), len(a[0][0]))
            z = conv(a + r, *weights(abf.att_conv[0]))
            fused.append([[[va * sigmoid(z0) + vr * sigmoid(z1) for va, vr, z0, z1 in zip(*rows, strict=True)]
                           for rows in zip(ca, cr, z[0], z[1], strict=True)] for ca, cr in zip(a, r, strict=True)])  # fmt: skip
        y = fused
    y = [nearest(sample, *size) for sample in y]
    return batch_norm([conv(sample, weights(abf.conv2[0])[0], pad=1) for sample in y], *norm(abf.conv2[1])), y


# --- ReviewKD: values and gradients against the definitions ------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 5, 5), (2, 2, 4, 4), (2, 2, 6, 3), (3, 4, 1, 1)],
                         ids=["5x5-all-pools", "4x4-two-pools", "6x3-non-square", "1x1-no-pool"])  # fmt: skip
def test_hcl_value_and_gradient(shape):
    check_value_and_gradient(
        lambda s, t: hcl_loss([s], [t]), lambda s, t: ref_hcl([s], [t]), randn(*shape, seed=70), randn(*shape, seed=71)
    )


def test_hcl_sums_its_levels_and_is_zero_on_the_teacher():
    s, t = (
        [randn(2, 3, 4, 4, seed=72), randn(2, 5, 1, 1, seed=73)],
        [randn(2, 3, 4, 4, seed=74), randn(2, 5, 1, 1, seed=75)],
    )
    assert hcl_loss(s, t).item() == pytest.approx(ref_hcl([x.tolist() for x in s], [x.tolist() for x in t]), rel=1e-9)
    assert hcl_loss(t, [x.clone() for x in t]).item() == 0.0


def test_review_fusion_is_the_papers_abf_chain():
    """Two levels: the deepest alone, then the shallower one fused with its residual (upsampled 2×2 → 4×4) and
    resized to a larger teacher map; both outputs against the hand-written forward with the module's weights."""
    torch.manual_seed(76)
    fusion = ReviewFusion([2, 3], [2, 3], mid_channels=3).double()
    with torch.no_grad():  # batch norms and the attention's bias away from their plain start
        for p in fusion.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    shallow, deep = randn(2, 2, 4, 4, seed=77), randn(2, 3, 2, 2, seed=78)
    out_shallow, out_deep = fusion([shallow, deep], [(8, 8), (2, 2)])
    expected_deep, residual = ref_abf(fusion.abfs[1], deep.tolist(), None, (2, 2))
    expected_shallow, _ = ref_abf(fusion.abfs[0], shallow.tolist(), residual, (8, 8))
    assert fusion.abfs[1].att_conv is None and fusion.abfs[0].att_conv is not None  # the deepest level fuses nothing
    assert out_shallow.shape == (2, 2, 8, 8) and out_deep.shape == (2, 3, 2, 2)
    torch.testing.assert_close(out_deep, torch.tensor(expected_deep, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out_shallow, torch.tensor(expected_shallow, dtype=torch.float64), rtol=1e-9, atol=1e-9)


# --- ReviewKD on real timm models ---------------------------------------------------------------------------

REVIEW_TAPS = {"student_tap": [1, 2, 3, 4, "embedding"], "teacher_tap": [1, 2, 3, 4, "embedding"]}


def test_reviewkd_fuses_all_student_levels_against_the_teachers_pre_relu_stages():
    student, teacher = tiny_pair()
    teacher.requires_grad_(True)  # only the loss's detach keeps gradients out of it
    seen: dict[str, torch.Tensor] = {}
    for i, block in enumerate(student.blocks[1:5], start=1):
        block.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(f"s{i}", o))
    for i, stage in enumerate([teacher.layer1, teacher.layer2, teacher.layer3, teacher.layer4], start=1):
        act = stage[-1].act3 if hasattr(stage[-1], "act3") else stage[-1].act2  # the stage's final ReLU
        act.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(f"t{i}", a[0].clone().detach()))
    loss = attach({"reviewkd": {"weight": 1.0, **REVIEW_TAPS}}, student, teacher)
    assert loss.paths[("reviewkd", 1)][-1] == ("fc", True)  # the teacher's embedding: pooled after its ReLU
    (fusion,) = loss.learned["reviewkd"]  # one module for all five levels
    x = torch.randn(4, 1, 32, 32)
    total, parts = loss(TermInputs(student(x), [teacher(x)], torch.zeros(4, dtype=torch.long)))
    with torch.no_grad():
        s_emb = student.forward_head(student.forward_features(x), pre_logits=True)
        t_emb = teacher.forward_head(teacher.forward_features(x), pre_logits=True)
    levels_s = [seen[f"s{i}"] for i in range(1, 5)] + [s_emb[:, :, None, None]]
    levels_t = [seen[f"t{i}"] for i in range(1, 5)] + [t_emb[:, :, None, None]]
    assert any((t < 0).any() for t in levels_t)  # pre-ReLU: negative responses are there
    expected = hcl_loss(fusion(levels_s, [t.shape[-2:] for t in levels_t]), levels_t)  # BN on batch statistics
    assert parts["reviewkd"].item() == pytest.approx(expected.item(), rel=1e-5)
    total.backward()
    params = list(fusion.parameters())
    assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert student.conv_stem.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_reviewkd_builds_one_fusion_per_teacher_of_its_width():
    student, teacher = tiny_pair()
    loss = DistillLoss({"reviewkd": REVIEW_TAPS})
    loss.attach(student, [teacher, teacher], torch.zeros(1, 1, 32, 32), ["test_efficientnet", "test_resnet", "t2"])
    fusions = list(loss.learned["reviewkd"])
    assert len(fusions) == 2 and loss.learned_of(loss.terms[0]) == [[fusions[0]], [fusions[1]]]
    assert [abf.conv1[0].out_channels for abf in fusions[0].abfs] == [256] * 5  # min(512, embedding width 256)
    assert [abf.conv2[0].out_channels for abf in fusions[0].abfs] == [32, 48, 192, 96, 96]  # the teacher's widths
    narrow = attach({"reviewkd": {"max_mid_channels": 16, **REVIEW_TAPS}}, *tiny_pair())
    assert {abf.conv1[0].out_channels for abf in narrow.learned["reviewkd"][0].abfs} == {16}


# --- ReviewKD: bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "terms, fragment",
    [
        ({"reviewkd": {"weight": -1, **REVIEW_TAPS}}, "distill.terms.reviewkd.weight=-1 must be a number ≥ 0"),
        (
            {"reviewkd": {"student_tap": [1, 2, 3], "teacher_tap": [1, 2]}},
            "distill.terms.reviewkd: student_tap and teacher_tap must list the same number of taps",
        ),
        ({"reviewkd": {"max_mid_channels": 0, **REVIEW_TAPS}}, "reviewkd.max_mid_channels=0 must be a number > 0"),
        ({"reviewkd": {"max_mid_channels": 2.5, **REVIEW_TAPS}}, "max_mid_channels=2.5 must be a whole number"),
        (
            {"reviewkd": {**REVIEW_TAPS, "schedule": {"max_mid_channels": {"kind": "linear"}}}},
            "reviewkd.schedule.max_mid_channels: max_mid_channels sizes the term's learned module",
        ),
    ],
)
def test_bad_reviewkd_settings_are_one_line(terms, fragment):
    with pytest.raises(KdclError) as error:
        DistillLoss(terms)
    assert fragment in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "taps, fragment",
    [
        (
            {"student_tap": [1, 2, 9], "teacher_tap": [1, 2, 3]},
            "reviewkd.student_tap=9: test_efficientnet has no feature index 9",
        ),
        (
            {"student_tap": [1, "embedding"], "teacher_tap": [1, "layer9"]},
            "reviewkd.teacher_tap='layer9' is not a module of test_resnet",
        ),
    ],
)
def test_bad_reviewkd_taps_are_one_line(taps, fragment):
    with pytest.raises(KdclError) as error:
        attach({"reviewkd": taps}, *tiny_pair())
    assert fragment in str(error.value) and "\n" not in str(error.value)
