"""Tests for `kdcl.losses.functional` against the defining papers, computed independently.

Every expected value below is derived with plain-Python `math` loops over small hand-made tensors, straight
from the paper / reference-code definition (Hinton 2015 KD, DKD, DIST, logit-standardised KD, attention
transfer, RKD, FitNets hints, label-smoothed CE). Torch is used only to call the function under test.
The remaining tests check the properties the losses must have: zero at student == teacher, the T² factor,
LSKD's shift/scale invariance, gradients reaching the student only, and the papers' default hyperparameters.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from kdcl.losses.functional import (
    at_loss,
    ce_loss,
    dist_loss,
    dkd_loss,
    hint_loss,
    kd_loss,
    lskd_loss,
    rkd_loss,
)

# Hand-made logits: 3 samples, 4 classes, with ties, negatives and a confident row.
STUDENT_LOGITS = [[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.2], [2.5, 2.5, -0.5, 1.0]]
TEACHER_LOGITS = [[2.0, 0.0, 1.0, 0.3], [1.0, 1.0, 1.0, -2.0], [4.0, 1.0, -1.0, 0.5]]
TARGETS = [1, 2, 0]


# --- plain-Python reference computations -----------------------------------------------------------------


def softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def kl(p: list[float], q: list[float]) -> float:
    """KL(p ‖ q) = Σ p log(p / q)."""
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True) if pi > 0)


def ref_kd(s: list[list[float]], t: list[list[float]], T: float) -> float:
    per_sample = [kl(softmax([v / T for v in tr]), softmax([v / T for v in sr])) for sr, tr in zip(s, t, strict=True)]
    return T * T * sum(per_sample) / len(per_sample)


def ref_dkd(s, t, target, alpha: float, beta: float, T: float) -> float:
    total = 0.0
    for sr, tr, g in zip(s, t, target, strict=True):
        p_s, p_t = softmax([v / T for v in sr]), softmax([v / T for v in tr])
        tckd = kl([p_t[g], 1 - p_t[g]], [p_s[g], 1 - p_s[g]])
        # Non-target classes only, renormalised among themselves (target excluded).
        q_s = softmax([v / T for c, v in enumerate(sr) if c != g])
        q_t = softmax([v / T for c, v in enumerate(tr) if c != g])
        total += (alpha * tckd + beta * kl(q_t, q_s)) * T * T
    return total / len(s)


def pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))


def ref_dist(s, t, beta: float, gamma: float, T: float) -> float:
    y_s = [softmax([v / T for v in row]) for row in s]
    y_t = [softmax([v / T for v in row]) for row in t]
    n, c = len(s), len(s[0])
    inter = 1 - sum(pearson(y_s[i], y_t[i]) for i in range(n)) / n
    intra = 1 - sum(pearson([y_s[i][k] for i in range(n)], [y_t[i][k] for i in range(n)]) for k in range(c)) / c
    return T * T * (beta * inter + gamma * intra)


def standardise(row: list[float]) -> list[float]:
    n = len(row)
    mean = sum(row) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (n - 1))  # unbiased, as torch.std
    return [(v - mean) / (1e-7 + std) for v in row]


def avg_pool_2x2(grid: list[list[float]]) -> list[list[float]]:
    """Average each non-overlapping 2×2 block (what adaptive pooling 4×4 → 2×2 does)."""
    h, w = len(grid) // 2, len(grid[0]) // 2
    return [
        [sum(grid[2 * i + di][2 * j + dj] for di in (0, 1) for dj in (0, 1)) / 4 for j in range(w)] for i in range(h)
    ]


def attention(feature: list[list[list[float]]], p: float) -> list[float]:
    """One sample [C][H][W] → channel-mean of |f|^p, flattened over H·W, L2-normalised."""
    c, h, w = len(feature), len(feature[0]), len(feature[0][0])
    flat = [sum(abs(feature[k][i][j]) ** p for k in range(c)) / c for i in range(h) for j in range(w)]
    norm = math.sqrt(sum(v * v for v in flat))
    return [v / norm for v in flat]


def ref_at(s, t, p: float) -> float:
    sq = [
        (a - b) ** 2
        for fs, ft in zip(s, t, strict=True)
        for a, b in zip(attention(fs, p), attention(ft, p), strict=True)
    ]
    return sum(sq) / len(sq)


def smooth_l1(xs: list[float], ys: list[float]) -> float:
    d = [abs(x - y) for x, y in zip(xs, ys, strict=True)]
    return sum(0.5 * v * v if v < 1 else v - 0.5 for v in d) / len(d)


def normalised_distances(e: list[list[float]]) -> list[float]:
    """All n² pairwise Euclidean distances (diagonal 0), divided by the mean of the non-zero ones."""
    d = [math.dist(a, b) for a in e for b in e]
    nonzero = [v for v in d if v > 0]
    mean = sum(nonzero) / len(nonzero)
    return [v / mean for v in d]


def triplet_cosines(e: list[list[float]]) -> list[float]:
    """cos between (e_j − e_i) and (e_k − e_i) for all anchors i and all j, k (n³ values; zero vectors stay 0)."""

    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v] if n > 0 else [0.0] * len(v)

    out = []
    for ei in e:
        dirs = [unit([a - b for a, b in zip(ej, ei, strict=True)]) for ej in e]
        out += [sum(a * b for a, b in zip(u, v, strict=True)) for u in dirs for v in dirs]
    return out


def ref_rkd(s, t, distance_weight: float, angle_weight: float) -> float:
    distance = smooth_l1(normalised_distances(s), normalised_distances(t))
    angle = smooth_l1(triplet_cosines(s), triplet_cosines(t))
    return distance_weight * distance + angle_weight * angle


def feature(batch: int, channels: int, size: int, offset: float) -> list:
    """Deterministic hand-made feature map [B][C][H][W] with mixed signs."""

    def value(b, c, i, j):
        return ((b + 1) * (c + 2) * (i - 1.5) + (j - offset) * (c - 0.5) + 0.25 * b) / 4

    grid = range(size)
    return [[[[value(b, c, i, j) for j in grid] for i in grid] for c in range(channels)] for b in range(batch)]


def tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# --- values against the definitions ----------------------------------------------------------------------


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_kd_matches_hinton_definition(T):
    expected = ref_kd(STUDENT_LOGITS, TEACHER_LOGITS, T)
    assert kd_loss(tensor(STUDENT_LOGITS), tensor(TEACHER_LOGITS), T).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(("alpha", "beta", "T"), [(1.0, 8.0, 4.0), (1.0, 1.0, 1.0), (0.5, 2.0, 2.0)])
def test_dkd_matches_target_excluded_definition(alpha, beta, T):
    expected = ref_dkd(STUDENT_LOGITS, TEACHER_LOGITS, TARGETS, alpha, beta, T)
    got = dkd_loss(tensor(STUDENT_LOGITS), tensor(TEACHER_LOGITS), torch.tensor(TARGETS), alpha, beta, T)
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("i", range(3))
def test_dkd_reassembles_kd_per_sample(i):
    # DKD paper, Eq. (5): KD = TCKD + (1 − p_t[g]) · NCKD, sample by sample.
    s, t, g, T = tensor([STUDENT_LOGITS[i]]), tensor([TEACHER_LOGITS[i]]), torch.tensor([TARGETS[i]]), 2.0
    p_t_target = softmax([v / T for v in TEACHER_LOGITS[i]])[TARGETS[i]]
    recombined = dkd_loss(s, t, g, alpha=1.0, beta=1 - p_t_target, temperature=T)
    assert recombined.item() == pytest.approx(kd_loss(s, t, T).item(), rel=1e-5)


@pytest.mark.parametrize(("beta", "gamma", "T"), [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0), (1.0, 0.0, 2.0), (0.0, 1.0, 2.0)])
def test_dist_matches_pearson_definition(beta, gamma, T):
    expected = ref_dist(STUDENT_LOGITS, TEACHER_LOGITS, beta, gamma, T)
    got = dist_loss(tensor(STUDENT_LOGITS), tensor(TEACHER_LOGITS), beta, gamma, T)
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("T", [1.0, 2.0, 3.0])
def test_lskd_is_kd_on_standardised_logits(T):
    expected = ref_kd([standardise(r) for r in STUDENT_LOGITS], [standardise(r) for r in TEACHER_LOGITS], T)
    assert lskd_loss(tensor(STUDENT_LOGITS), tensor(TEACHER_LOGITS), T).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_at_matches_attention_definition_same_size(p):
    s, t = feature(2, 3, 2, offset=0.0), feature(2, 2, 2, offset=1.0)  # channel counts may differ
    assert at_loss(tensor(s), tensor(t), p).item() == pytest.approx(ref_at(s, t, p), rel=1e-5)


@pytest.mark.parametrize("larger", ["student", "teacher"])
def test_at_average_pools_the_larger_map(larger):
    big, small = feature(2, 3, 4, offset=0.5), feature(2, 2, 2, offset=1.0)
    pooled = [[avg_pool_2x2(ch) for ch in sample] for sample in big]
    if larger == "student":
        got, expected = at_loss(tensor(big), tensor(small)), ref_at(pooled, small, 2.0)
    else:
        got, expected = at_loss(tensor(small), tensor(big)), ref_at(small, pooled, 2.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_rkd_matches_distance_and_angle_definition():
    student = [[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]  # a 3-4-5 right triangle
    teacher = [[1.0, 1.0], [2.0, 1.0], [1.0, 3.0]]  # a 1-2-√5 right triangle
    for dw, aw in [(25.0, 50.0), (1.0, 0.0), (0.0, 1.0)]:
        expected = ref_rkd(student, teacher, dw, aw)
        assert rkd_loss(tensor(student), tensor(teacher), dw, aw).item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_rkd_hand_values_for_the_triangles():
    # Distances scaled by their mean: student {3,4,5}/4, teacher {1,2,√5}/((3+√5)/3); the right angle is at e_0.
    student = [[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]
    teacher = [[1.0, 1.0], [2.0, 1.0], [1.0, 3.0]]
    m = (3 + math.sqrt(5)) / 3
    pairs = [(3 / 4, 1 / m), (4 / 4, 2 / m), (5 / 4, math.sqrt(5) / m)]  # each appears twice off the diagonal
    distance = 2 * sum(0.5 * (a - b) ** 2 for a, b in pairs) / 9
    assert rkd_loss(tensor(student), tensor(teacher), 1.0, 0.0).item() == pytest.approx(distance, rel=1e-5)
    # Angles: cos at e_1 is 3/5 vs 1/√5, at e_2 is 4/5 vs 2/√5 (each twice); the right angle and the
    # self-pairs (cos 1 or 0) agree. 27 entries in total.
    angle = 2 * (0.5 * (3 / 5 - 1 / math.sqrt(5)) ** 2 + 0.5 * (4 / 5 - 2 / math.sqrt(5)) ** 2) / 27
    assert rkd_loss(tensor(student), tensor(teacher), 0.0, 1.0).item() == pytest.approx(angle, rel=1e-5)


def test_hint_is_mean_squared_error():
    s, t = [[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]], [[0.0, -1.0, 2.5], [1.0, 1.0, -1.0]]
    expected = sum((a - b) ** 2 for rs, rt in zip(s, t, strict=True) for a, b in zip(rs, rt, strict=True)) / 6
    assert hint_loss(tensor(s), tensor(t)).item() == pytest.approx(expected, rel=1e-6)


def test_hint_pools_a_larger_student_map():
    big, small = feature(1, 2, 4, offset=0.5), feature(1, 2, 2, offset=1.0)
    pooled = [avg_pool_2x2(ch) for ch in big[0]]
    diffs = [
        (a - b) ** 2
        for pc, sc in zip(pooled, small[0], strict=True)
        for pr, sr in zip(pc, sc, strict=True)
        for a, b in zip(pr, sr, strict=True)
    ]
    assert hint_loss(tensor(big), tensor(small)).item() == pytest.approx(sum(diffs) / len(diffs), rel=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_ce_with_label_smoothing(eps):
    C = len(STUDENT_LOGITS[0])
    total = 0.0
    for row, y in zip(STUDENT_LOGITS, TARGETS, strict=True):
        p = softmax(row)
        q = [(1 - eps) * (c == y) + eps / C for c in range(C)]
        total += -sum(qc * math.log(pc) for qc, pc in zip(q, p, strict=True))
    expected = total / len(TARGETS)
    assert ce_loss(tensor(STUDENT_LOGITS), torch.tensor(TARGETS), eps).item() == pytest.approx(expected, rel=1e-5)


# --- properties -------------------------------------------------------------------------------------------


def _logits() -> torch.Tensor:
    return torch.randn(5, 7, generator=torch.Generator().manual_seed(0)) * 2


def _features() -> torch.Tensor:
    return torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("name", "loss", "make"),
    [
        ("kd", kd_loss, _logits),
        ("lskd", lskd_loss, _logits),
        ("dist", dist_loss, _logits),
        ("dkd", lambda s, t: dkd_loss(s, t, torch.tensor([0, 1, 2, 3, 4])), _logits),
        ("at", at_loss, _features),
        ("rkd", rkd_loss, lambda: _logits()[:, :3]),
        ("hint", hint_loss, _features),
    ],
)
def test_zero_when_student_equals_teacher(name, loss, make):
    x = make()
    assert loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-5), name


@pytest.mark.parametrize("T", [2.0, 3.0, 4.0])
def test_kd_and_dkd_scale_with_temperature_squared(T):
    # Scaling the logits by T leaves softmax(z/T) unchanged, so only the T² factor differs.
    s, t, y = tensor(STUDENT_LOGITS), tensor(TEACHER_LOGITS), torch.tensor(TARGETS)
    assert kd_loss(T * s, T * t, T).item() == pytest.approx(T * T * kd_loss(s, t, 1.0).item(), rel=1e-5)
    scaled = dkd_loss(T * s, T * t, y, 1.0, 8.0, T).item()
    assert scaled == pytest.approx(T * T * dkd_loss(s, t, y, 1.0, 8.0, 1.0).item(), rel=1e-5)


def test_lskd_carries_the_temperature_squared_factor():
    # lskd(s, t, T) = T² · kd(z(s)/T, z(t)/T, 1), with z the per-row standardisation.
    T = 3.0
    zs = tensor([[v / T for v in standardise(r)] for r in STUDENT_LOGITS])
    zt = tensor([[v / T for v in standardise(r)] for r in TEACHER_LOGITS])
    got = lskd_loss(tensor(STUDENT_LOGITS), tensor(TEACHER_LOGITS), T).item()
    assert got == pytest.approx(T * T * kd_loss(zs, zt, 1.0).item(), rel=1e-5)


@pytest.mark.parametrize(("scale", "shift"), [(3.0, 0.0), (0.25, 0.0), (1.0, -7.0), (5.0, 2.5)])
@pytest.mark.parametrize("which", ["student", "teacher"])
def test_lskd_is_invariant_to_shift_and_positive_scale(scale, shift, which):
    s, t = tensor(STUDENT_LOGITS), tensor(TEACHER_LOGITS)
    row_shift = shift * torch.tensor([[1.0], [-2.0], [0.5]])  # a different shift per sample
    base = lskd_loss(s, t).item()
    if which == "student":
        moved = lskd_loss(scale * s + row_shift, t).item()
    else:
        moved = lskd_loss(s, scale * t + row_shift).item()
    assert moved == pytest.approx(base, rel=1e-5)


@pytest.mark.parametrize(
    ("loss", "make"),
    [
        (kd_loss, _logits),
        (lskd_loss, _logits),
        (dist_loss, _logits),
        (lambda s, t: dkd_loss(s, t, torch.tensor([0, 1, 2, 3, 4])), _logits),
        (at_loss, _features),
        (rkd_loss, _logits),
        (hint_loss, _features),
    ],
    ids=["kd", "lskd", "dist", "dkd", "at", "rkd", "hint"],
)
def test_gradients_reach_the_student_only(loss, make):
    student = make().requires_grad_(True)
    teacher = (make() * 0.5 + 0.3).requires_grad_(True)
    loss(student, teacher).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum().item() > 0


def test_ce_gradient_reaches_the_logits():
    logits = tensor(STUDENT_LOGITS).requires_grad_(True)
    ce_loss(logits, torch.tensor(TARGETS), 0.1).backward()
    assert logits.grad.abs().sum().item() > 0


@pytest.mark.parametrize(
    ("fn", "defaults"),
    [
        (kd_loss, {"temperature": 4.0}),
        (dkd_loss, {"alpha": 1.0, "beta": 8.0, "temperature": 4.0}),
        (dist_loss, {"beta": 1.0, "gamma": 1.0, "temperature": 1.0}),
        (lskd_loss, {"temperature": 2.0}),
        (at_loss, {"p": 2.0}),
        (rkd_loss, {"distance_weight": 25.0, "angle_weight": 50.0}),
        (ce_loss, {"label_smoothing": 0.0}),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_defaults_match_the_papers(fn, defaults):
    params = inspect.signature(fn).parameters
    assert {name: params[name].default for name in defaults} == defaults
