"""Loss functions on plain tensors, batch-averaged, as the defining papers' reference code computes them.

Every teacher-side input is detached: a distillation loss never sends gradients into a teacher.
Defaults are the papers' defaults. To add a loss: one function here, one term in terms.py, one YAML preset.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F


def ce_loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy with class indices, or class probabilities (a mixed batch), optionally label-smoothed."""
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton et al. 2015: T² · KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch.

    The T² factor keeps the gradient scale independent of the temperature.
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * (t * t)


class ReverseGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by −scale (Ganin & Lempitsky 2015). Written
    here because neither torch nor Lightning ships a gradient-reversal layer."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = float(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


def bounded_temperature(logit: torch.Tensor, t_min: float, t_max: float) -> torch.Tensor:
    """CTKD's global temperature: t_min + (t_max − t_min)·sigmoid(logit), always inside (t_min, t_max)."""
    return t_min + (t_max - t_min) * torch.sigmoid(logit)


def ctkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature_logit: torch.Tensor,
              t_min: float = 1.0, t_max: float = 21.0, reversal: float = 1.0) -> torch.Tensor:  # fmt: skip
    """Curriculum temperature KD (Li et al., AAAI 2023): KD at a learned temperature whose gradient is
    reversed (scaled by −`reversal`), so the temperature moves to make distillation harder while the
    student minimises it; the reversal's weight grows over the stage (an easy-to-hard curriculum)."""
    t = bounded_temperature(ReverseGradient.apply(temperature_logit, reversal), t_min, t_max)
    return kd_loss(student_logits, teacher_logits, t)


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022), as in mdistiller: alpha·TCKD + beta·NCKD, both × T².

    TCKD is the KL between the binary (target class, all others) distributions; NCKD the KL between the
    distributions over the non-target classes only (target logit masked out with −1000, as the authors do).
    """
    t = temperature
    teacher_logits = teacher_logits.detach()
    gt = F.one_hot(target, student_logits.shape[1]).bool()
    p_s = F.softmax(student_logits / t, dim=1)
    p_t = F.softmax(teacher_logits / t, dim=1)
    # binary distributions [p(target), p(rest)]
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * ~gt).sum(1)], dim=1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], dim=1)
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="batchmean") * (t * t)
    mask = 1000.0 * gt
    log_q_s = F.log_softmax(student_logits / t - mask, dim=1)
    q_t = F.softmax(teacher_logits / t - mask, dim=1)
    nckd = F.kl_div(log_q_s, q_t, reduction="batchmean") * (t * t)
    return alpha * tckd + beta * nckd


def pearson_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """1 − Pearson correlation of the rows of a and b, averaged over rows (DIST's relation distance)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    return 1 - corr.mean()


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """DIST (Huang et al., NeurIPS 2022): match relations, not exact probabilities.

    beta·inter-class relation (per sample, across classes) + gamma·intra-class relation (per class,
    across the batch), each 1 − Pearson correlation of the softened predictions, × T².
    """
    t = temperature
    y_s = F.softmax(student_logits / t, dim=1)
    y_t = F.softmax(teacher_logits.detach() / t, dim=1)
    inter = pearson_distance(y_s, y_t)
    intra = pearson_distance(y_s.t(), y_t.t())
    return (t * t) * (beta * inter + gamma * intra)


def standardize_logits(logits: torch.Tensor) -> torch.Tensor:
    """Z-score each sample's logits: (z − mean) / (1e-7 + std), torch's unbiased std, as Sun et al. do."""
    return (logits - logits.mean(dim=1, keepdim=True)) / (1e-7 + logits.std(dim=1, keepdim=True))


def lskd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Logit-standardised KD (Sun et al., CVPR 2024): kd_loss on z-scored logits of both models."""
    return kd_loss(standardize_logits(student_logits), standardize_logits(teacher_logits.detach()), temperature)


def pool_to_smaller(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool whichever of two feature maps is spatially larger to the other's size."""
    if a.dim() == 4 and a.shape[-2:] != b.shape[-2:]:
        if a.shape[-2] * a.shape[-1] > b.shape[-2] * b.shape[-1]:
            a = F.adaptive_avg_pool2d(a, b.shape[-2:])
        else:
            b = F.adaptive_avg_pool2d(b, a.shape[-2:])
    return a, b


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Zagoruyko & Komodakis: channel-mean of |f|^p, flattened and L2-normalised per sample."""
    return F.normalize(feature.abs().pow(p).mean(1).flatten(1), dim=1)


def at_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer (ICLR 2017, as in RepDistiller): mean squared difference of attention maps."""
    s, t = pool_to_smaller(student_feature, teacher_feature.detach())
    return (attention_map(s, p) - attention_map(t, p)).pow(2).mean()


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distance matrix of the rows of e, with an exact zero diagonal (RepDistiller's pdist)."""
    sq = e.pow(2).sum(1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def angle_cosines(e: torch.Tensor) -> torch.Tensor:
    """cos of the angle at each anchor i between (e_j − e_i) and (e_k − e_i), flattened over (i, j, k)."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


def rkd_loss(
    student_embedding: torch.Tensor,
    teacher_embedding: torch.Tensor,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> torch.Tensor:
    """Relational KD (Park et al., CVPR 2019, as in RepDistiller): smooth-L1 between the structures.

    Distance term: pairwise distances, each divided by the mean of the non-zero ones. Angle term: the
    cosines of all triplet angles. Embeddings may differ in width; only relations are compared.
    """
    s = student_embedding.flatten(1)
    t = teacher_embedding.detach().flatten(1)
    t_d = pairwise_distances(t)
    t_d = t_d / t_d[t_d > 0].mean()
    s_d = pairwise_distances(s)
    s_d = s_d / s_d[s_d > 0].mean()
    distance = F.smooth_l1_loss(s_d, t_d)
    angle = F.smooth_l1_loss(angle_cosines(s), angle_cosines(t))
    return distance_weight * distance + angle_weight * angle


def hint_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """FitNets (Romero et al. 2015): MSE between the (regressed) student feature and the teacher's."""
    s, t = pool_to_smaller(student_feature, teacher_feature.detach())
    return F.mse_loss(s, t)


def nst_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Neuron selectivity transfer (Huang & Wang 2017, as RepDistiller's and mdistiller's NST): the squared MMD
    between the two sets of channels under the polynomial kernel k(x, y) = (xᵀy)² (d = 2, c = 0), each
    channel's map flattened and L2-normalised over the spatial positions; means over batch and channel pairs.
    The larger map is average-pooled to the smaller; channel counts may differ.
    """
    s, t = pool_to_smaller(student_feature, teacher_feature.detach())
    s, t = F.normalize(s.flatten(2), dim=2), F.normalize(t.flatten(2), dim=2)

    def kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a @ b.transpose(1, 2)).pow(2).mean()

    return kernel_mean(t, t) + kernel_mean(s, s) - 2 * kernel_mean(s, t)


def pkt_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018, as RepDistiller's cosine_similarity_loss):
    the cosine similarities of the batch's embeddings, mapped to [0, 1] and normalised per row into conditional
    probabilities p(j | i); the mean over all (i, j) of p_t · log((p_t + eps) / (p_s + eps)). Widths may differ.
    """

    def conditional(e: torch.Tensor) -> torch.Tensor:
        e = e.flatten(1)
        e = e / (torch.linalg.vector_norm(e, dim=1, keepdim=True) + eps)
        e = torch.where(torch.isnan(e), torch.zeros_like(e), e)
        sim = (e @ e.t() + 1.0) / 2.0
        return sim / sim.sum(1, keepdim=True)

    p_s, p_t = conditional(student_embedding), conditional(teacher_embedding.detach())
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def sp_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019, as RepDistiller's Similarity): the batch's b×b Gram
    matrices of the flattened features, each row L2-normalised; ‖G_t − G_s‖²_F / b². Any widths and sizes.
    """
    b = student_feature.shape[0]
    s, t = student_feature.flatten(1), teacher_feature.detach().flatten(1)
    g_s, g_t = F.normalize(s @ s.t(), dim=1), F.normalize(t @ t.t(), dim=1)
    return (g_t - g_s).pow(2).sum() / (b * b)


def finite(x: torch.Tensor) -> torch.Tensor:
    """Non-finite entries set to 0 (mdistiller's removenan)."""
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def kdsvd_loss(student_features: list[torch.Tensor], teacher_features: list[torch.Tensor], k: int = 1) -> torch.Tensor:
    """KD-SVD (Lee et al., ECCV 2018), exactly as mdistiller's kdsvd_loss, over consecutive tapped layers.

    Each map (b, c, h, w) is read as a (c·h)×w matrix (mdistiller's `view(b, c*h, w)`: its right singular
    vectors live in the width positions, so channel counts may differ) and decomposed in ≥ fp32; the teacher
    keeps its top k right singular vectors, the student its top k+3, each L2-normalised, singular values
    normalised over the k. Each teacher vector takes the student vector of largest |cosine|, with that
    cosine's sign; both are scaled by the teacher's singular values. Between each layer and the one before,
    the RBF matrices exp(−(v_i − v_j)²/8) of the student must match the teacher's: Σ squared difference
    (non-finite entries dropped), / batch. kdcl additions: a spatially larger map is average-pooled to the
    other's size first (mdistiller needs equal widths), and a non-finite gradient entry reaching a feature
    map through the SVD (degenerate singular values, e.g. an all-zero map) is set to 0, the backward
    counterpart of mdistiller's forward removenan.
    """
    k = int(k)

    def right_singular(feature: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = feature.shape
        x = feature.reshape(b, c * h, w)
        x = x.to(torch.promote_types(x.dtype, torch.float32))  # at least fp32: no SVD in half precision
        if x.requires_grad:
            x.register_hook(finite)
        _, sv, vh = torch.linalg.svd(x, full_matrices=False)  # what torch.svd(x) computes: V = Vhᵀ
        sv, v = finite(sv), finite(vh.transpose(-2, -1))
        return F.normalize(sv[:, :n], dim=1), F.normalize(v[:, :, :n], dim=1)

    losses, previous = [], None
    for student_feature, teacher_feature in zip(student_features, teacher_features, strict=True):
        s_map, t_map = pool_to_smaller(student_feature, teacher_feature.detach())
        sv_t, v_t = right_singular(t_map, k)
        _, v_s = right_singular(s_map, k + 3)
        cosine = v_s.transpose(-2, -1) @ v_t
        best = cosine.abs().max(1, keepdim=True).values
        v_s = v_s @ torch.where(best == cosine.abs(), torch.sign(cosine), torch.zeros_like(cosine))
        v_t, v_s = v_t * sv_t.unsqueeze(1), v_s * sv_t.unsqueeze(1)
        if previous is not None:
            v_sb, v_tb = previous
            s_rbf = torch.exp(-(v_s.unsqueeze(2) - v_sb.unsqueeze(1)).pow(2) / 8)
            t_rbf = torch.exp(-(v_t.unsqueeze(2) - v_tb.unsqueeze(1)).pow(2) / 8)
            losses.append(finite((s_rbf - t_rbf).pow(2)).sum())
        previous = v_s, v_t
    return sum(losses, torch.zeros((), device=student_features[0].device)) / student_features[0].shape[0]


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """x in float32 when it is in half or bfloat16 precision (mixed-precision training), else as it is."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def vid_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor,
             regressor: Callable[[torch.Tensor], torch.Tensor], log_scale: torch.Tensor,
             eps: float = 1e-5) -> torch.Tensor:  # fmt: skip
    """Variational information distillation (Ahn et al., CVPR 2019, as RepDistiller's VIDLoss and mdistiller's
    vid_loss): the teacher's feature t is Gaussian around the regressed student feature μ = regressor(s) with a
    learned per-channel variance σ²_c = softplus(log_scale_c) + eps; the loss is its negative log-likelihood
    without the constant, ½((μ − t)²/σ² + log σ²), averaged over batch, channels and positions. The larger map
    is average-pooled to the smaller first (before the regressor, as the reference code does)."""
    s, t = pool_to_smaller(student_feature, teacher_feature.detach())
    mean, t = at_least_fp32(regressor(s)), at_least_fp32(t)  # a bf16 log σ² and mean lose the small terms
    variance = (F.softplus(at_least_fp32(log_scale)) + eps).view(1, -1, 1, 1).to(mean)
    return (0.5 * ((mean - t) ** 2 / variance + torch.log(variance))).mean()


def ofd_margin(norm_weight: torch.Tensor, norm_bias: torch.Tensor) -> torch.Tensor:
    """OFD's per-channel margin (Heo et al., ICCV 2019, as mdistiller's OFD): the teacher's pre-ReLU response of
    channel c read as N(β_c, γ_c²) from its batch norm's affine parameters; the margin is the expectation of
    its negative part, E[x | x < 0] = β − |γ|·φ(β/|γ|)/Φ(−β/|γ|), or −3|γ| where Φ(−β/|γ|) ≤ 0.001."""
    std, mean = norm_weight.detach().abs(), norm_bias.detach()
    below = torch.special.ndtr(-mean / std)  # P(x < 0)
    expected = mean - std * torch.exp(-((mean / std) ** 2) / 2) / math.sqrt(2 * math.pi) / below
    return torch.where(below > 0.001, expected, -3 * std)  # a zero γ (dead channel) gives a finite margin too


def ofd_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """OFD's partial L2 (mdistiller's feat_loss) between the connected student feature s and the teacher's
    pre-ReLU feature t, average-pooled to the student's size: the target is max(t, margin), and a student
    response below a non-positive target costs nothing (the ReLU would zero both). Summed over channels and
    positions, averaged over the batch."""
    s = at_least_fp32(student_feature)  # a bf16 sum over every position loses precision
    t = F.adaptive_avg_pool2d(at_least_fp32(teacher_feature.detach()), s.shape[-2:])
    m = margin.view(1, -1, 1, 1).to(s)
    to_margin = (s > m) & (t <= m)  # the teacher below the margin: the target is the margin
    to_teacher = ((s > t) & (t > m) & (t <= 0)) | (t > 0)  # else the teacher, where it is positive or exceeded
    return ((s - m) ** 2 * to_margin + (s - t) ** 2 * to_teacher).sum() / s.shape[0]


def crd_scores(anchor: torch.Tensor, rows: torch.Tensor, temperature: float) -> torch.Tensor:
    """CRD's unnormalised critic (RepDistiller's ContrastMemory): exp(⟨memory row, anchor⟩ / T) for each of an
    anchor's (b, K+1, d) rows: its positive's memory first, then K negatives'."""
    return torch.exp(torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2) / temperature)


def nce_loss(scores: torch.Tensor, n_data: int, eps: float = 1e-7) -> torch.Tensor:
    """CRD's NCE loss (Tian et al., ICLR 2020, eq. 18; RepDistiller's ContrastLoss) on normalised scores P (b, K+1),
    positive first, against uniform noise 1/N: −Σ_b [log P₀/(P₀ + K/N) + Σ_k log (K/N)/(P_k + K/N)] / b."""
    noise = (scores.shape[1] - 1) / n_data
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps))
    negative = torch.log(noise / (scores[:, 1:] + noise + eps))
    return -(positive.sum() + negative.sum()) / scores.shape[0]


def crd_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor, student_rows: torch.Tensor,
             teacher_rows: torch.Tensor, normalisers: tuple[torch.Tensor | float, torch.Tensor | float], temperature: float = 0.07,
             n_data: int = 1) -> torch.Tensor:  # fmt: skip
    """Contrastive representation distillation (Tian et al., ICLR 2020, as RepDistiller's CRDLoss and mdistiller's
    crd_loss), both directions: the student's embedding against the teacher-side memory rows of its positive and
    K negatives, and the teacher's against the student-side rows; each critic exp(⟨·,·⟩/T) divided by its
    normalising constant Z, then the NCE loss. Embeddings are L2-normalised (b, d); rows (b, K+1, d)."""
    z_student, z_teacher = normalisers
    out_student = crd_scores(student_embedding, teacher_rows, temperature) / z_student
    out_teacher = crd_scores(teacher_embedding, student_rows, temperature) / z_teacher
    return nce_loss(out_student, n_data) + nce_loss(out_teacher, n_data)


def hcl_loss(student_features: list[torch.Tensor], teacher_features: list[torch.Tensor]) -> torch.Tensor:
    """ReviewKD's hierarchical context loss (Chen et al., CVPR 2021, as mdistiller's hcl_loss), summed over levels:
    at each level the MSE of the full maps at weight 1, then of both maps average-pooled to 4×4, 2×2 and 1×1 at
    weights ½, ¼, ⅛, each pooled size taken only when it is below the map's height (so a 4×4 map gets 2×2 at ½ and
    1×1 at ¼, a 1×1 map its MSE alone), divided by the sum of the weights used. Maps of equal shapes."""

    def level(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sizes = [size for size in (4, 2, 1) if size < s.shape[2]]
        weights = [0.5 ** (i + 1) for i in range(len(sizes))]
        pooled = [F.mse_loss(F.adaptive_avg_pool2d(s, n), F.adaptive_avg_pool2d(t, n)) * w
                  for n, w in zip(sizes, weights, strict=True)]  # fmt: skip
        return (F.mse_loss(s, t) + sum(pooled)) / (1.0 + sum(weights))

    return sum(level(s, t.detach()) for s, t in zip(student_features, teacher_features, strict=True))
