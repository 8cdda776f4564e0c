"""The learned modules of feature terms: FitNets' bridge, VID's regressor and variances, OFD's connector, CRD's
embeddings and memory bank, ReviewKD's attention-based fusion.

A term kind may name a factory (`register_term(..., learned=...)`) that builds one module per (teacher, tap pair)
from a `LearnedSpec`: the tapped shapes, the term's parameters and what else the method reads; or, with
`learned_per_teacher=True`, one module per teacher from the list of its pairs' specs (ReviewKD fuses all the
student's tapped levels at once). The modules live
in `DistillLoss.learned`, a sub-module of the stage's LightningModule: they train with the student (its
optimizer takes every trainable parameter of the module), are saved in the stage's checkpoints, and are never
exported (`kdcl export` and later stages read the `model.` weights alone). The term's function receives them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdcl.common.errors import KdclError
from kdcl.losses import functional as LF


@dataclass(frozen=True)
class LearnedSpec:
    where: str  # the term's config key (distill.terms.<name>), for error messages
    student: torch.Size  # the student tap's feature shape, from attach's one-example forward
    teacher: torch.Size  # the teacher tap's
    params: dict[str, Any] = field(default_factory=dict)  # the term's parameters, defaults filled in
    teacher_norm: nn.Module | None = None  # pre-activation taps: the teacher's last batch norm before the tap
    labels: torch.Tensor | None = None  # terms that need example indices: the training labels by position
    shape_only: bool = False  # the meta-device check before any data is loaded (kdcl/run/validate.py)


def make_bridge(spec: LearnedSpec) -> nn.Module:
    """FitNets' regressor: 1×1 conv + BN for feature maps, linear for vectors."""
    s, t = spec.student, spec.teacher
    if len(s) != len(t):
        raise KdclError(
            f"{spec.where}: the student tap {tuple(s)} and teacher tap {tuple(t)} must both be maps or both vectors"
        )
    if len(s) == 4:
        return nn.Sequential(nn.Conv2d(s[1], t[1], kernel_size=1, bias=False), nn.BatchNorm2d(t[1]))
    return nn.Linear(s[-1], t[-1])


class VIDRegressor(nn.Module):
    """VID's mean regressor (three 1×1 convs with ReLUs, the teacher's width in the middle, as RepDistiller builds
    VIDLoss(s, t, t)) and per-channel log-scale, whose softplus is the variance. mdistiller keeps its log-scales
    in a plain list, so they never train there; RepDistiller and the paper learn them, as here."""

    def __init__(self, s_channels: int, t_channels: int, init_variance: float, eps: float):
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(s_channels, t_channels, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(t_channels, t_channels, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(t_channels, t_channels, 1, bias=False),
        )
        start = math.log(math.expm1(init_variance - eps))  # softplus⁻¹: the variance starts at init_variance
        self.log_scale = nn.Parameter(torch.full((t_channels,), start))


def make_vid(spec: LearnedSpec) -> nn.Module:
    init, eps = spec.params["init_variance"], spec.params["eps"]
    if init <= eps:
        raise KdclError(f"{spec.where}.init_variance={init} must be above eps={eps}")
    return VIDRegressor(spec.student[1], spec.teacher[1], init, eps)


class OFDConnector(nn.Module):
    """OFD's connector (1×1 conv + BN, conv initialised N(0, 2/(k²·out)) as mdistiller's ConnectorConvBN) and the
    margin of the teacher's channels, a buffer computed once from the frozen teacher's batch norm."""

    def __init__(self, s_channels: int, t_channels: int, margin: torch.Tensor):
        super().__init__()
        self.connector = nn.Sequential(nn.Conv2d(s_channels, t_channels, 1, bias=False), nn.BatchNorm2d(t_channels))
        nn.init.kaiming_normal_(self.connector[0].weight, mode="fan_out", nonlinearity="relu")
        self.register_buffer("margin", margin)


def make_ofd(spec: LearnedSpec) -> nn.Module:
    norm, channels = spec.teacher_norm, spec.teacher[1]
    if norm is None or not norm.affine or norm.num_features != channels:
        found = "none" if norm is None else f"one of {norm.num_features} channels"
        raise KdclError(f"{spec.where}: OFD's margin needs a batch norm of {channels} channels before the teacher "
                        f"tap's activation, and found {found}; tap a stage of a batch-normalised CNN (a feature index)")  # fmt: skip
    return OFDConnector(spec.student[1], channels, LF.ofd_margin(norm.weight, norm.bias))


class ContrastMemory(nn.Module):
    """CRD's two linear embeddings (then L2-normalised) and its memory bank (RepDistiller's CRDLoss and
    ContrastMemory): each training example's student-side and teacher-side embedding, updated with momentum
    as the example is seen, initialised uniform in ±1/√(d/3). Negatives are drawn, with replacement, uniformly
    from the examples of other classes (the references' 'exact' sampling) by position in `order`, the
    examples sorted by label. `z` holds the two normalising constants, set from the first batch."""

    def __init__(self, s_dim: int, t_dim: int, dim: int, labels: torch.Tensor, negatives: int):
        super().__init__()
        n, bound = len(labels), 1.0 / math.sqrt(dim / 3)
        self.embed_s, self.embed_t = nn.Linear(s_dim, dim), nn.Linear(t_dim, dim)
        self.register_buffer("memory_s", torch.rand(n, dim) * 2 * bound - bound)
        self.register_buffer("memory_t", torch.rand(n, dim) * 2 * bound - bound)
        self.register_buffer("z", torch.full((2,), -1.0))
        counts = torch.bincount(labels)
        self.register_buffer("labels", labels)
        self.register_buffer("order", torch.argsort(labels, stable=True))
        self.register_buffer("counts", counts)
        self.register_buffer("starts", torch.cumsum(counts, 0) - counts)
        self.negatives = negatives
        self.z_ready = False  # whether z is set (a Python flag: no device sync per step once it is)

    def embed(self, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.embed_s(s.flatten(1)), dim=1), F.normalize(self.embed_t(t.flatten(1)), dim=1)

    def sample(self, index: torch.Tensor) -> torch.Tensor:
        """(b, K+1) positions: each example itself, then K examples of other classes."""
        label = self.labels[index]
        others = (len(self.labels) - self.counts[label]).unsqueeze(1)
        draws = torch.rand(len(index), self.negatives, device=index.device, dtype=torch.float64)
        u = torch.minimum((draws * others).long(), others - 1)  # uniform over the others' N − n_c slots
        u = u + self.counts[label].unsqueeze(1) * (u >= self.starts[label].unsqueeze(1))  # skip the own class
        return torch.cat([index.unsqueeze(1), self.order[u]], dim=1)

    def normalisers(self, s: torch.Tensor, t: torch.Tensor, sampled: torch.Tensor,
                    temperature: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Z for each direction: the mean critic × N on the first batch (RepDistiller's), then fixed (a resumed
        stage reads it from the checkpoint)."""
        if not self.z_ready and bool(self.z[0] < 0):
            n = len(self.labels)
            self.z[0] = LF.crd_scores(s.detach(), self.memory_t[sampled], temperature).mean() * n
            self.z[1] = LF.crd_scores(t.detach(), self.memory_s[sampled], temperature).mean() * n
        self.z_ready = True
        return self.z[0], self.z[1]

    @torch.no_grad()
    def update(self, index: torch.Tensor, s: torch.Tensor, t: torch.Tensor, momentum: float) -> None:
        for memory, new in ((self.memory_s, s), (self.memory_t, t)):
            mixed = memory[index] * momentum + new.detach() * (1 - momentum)
            memory.index_copy_(0, index, F.normalize(mixed, dim=1))

    def megabytes(self) -> float:
        return sum(m.numel() * m.element_size() for m in (self.memory_s, self.memory_t)) / 2**20

    def summary(self) -> str:
        n, dim = self.memory_s.shape
        return (f"crd: memory bank of {n} examples × {dim} dims × 2 models = {self.megabytes():.1f} MB, "
                f"{self.negatives} negatives per example")  # fmt: skip


def check_bank(where: str, labels: torch.Tensor, params: dict[str, Any], banks: int = 1) -> None:
    """CRD's memory bank must fit the stage's data (negatives ≤ the examples of other classes, for every example)
    and max_bank_mb, which bounds the term's `banks` together (one per teacher and tap pair); a one-line KdclError
    otherwise. Also run by the plan's checks, before any training."""
    negatives, dim, limit = int(params["negatives"]), int(params["dim"]), params["max_bank_mb"]
    fewest = len(labels) - int(torch.bincount(labels).max())  # examples of other classes, for the largest class
    if negatives > fewest:
        raise KdclError(
            f"{where}.negatives={negatives} is more than the stage's data holds: {len(labels)} training examples, "
            f"of which an example of the largest class has {fewest} of other classes to contrast with; "
            f"set {where}.negatives ≤ {fewest}"
        )
    needed = banks * len(labels) * dim * 2 * 4 / 2**20
    if needed > limit:
        what = "memory bank needs" if banks == 1 else f"{banks} memory banks (one per teacher and tap pair) need"
        each = "" if banks == 1 else " each"
        raise KdclError(
            f"{where}: the {what} {needed:.1f} MB ({len(labels)} examples × {dim} dims × 2 models × 4 bytes{each}), "
            f"over max_bank_mb={limit:g}; lower {where}.dim or raise {where}.max_bank_mb"
        )


def make_crd(spec: LearnedSpec) -> nn.Module:
    negatives, labels = int(spec.params["negatives"]), spec.labels
    if labels is None:
        if not spec.shape_only:
            raise KdclError(f"{spec.where}: CRD needs the training examples' labels and positions (a stage's data)")
        labels = torch.arange(negatives + 1, device="cpu")  # shapes only: no data yet (the plan checks the bank)
    labels = labels.long().cpu()
    check_bank(spec.where, labels, spec.params)
    s_dim, t_dim = spec.student[1:].numel(), spec.teacher[1:].numel()
    return ContrastMemory(s_dim, t_dim, int(spec.params["dim"]), labels, negatives)


class ABF(nn.Module):
    """ReviewKD's attention-based fusion of one level (mdistiller's and the authors' ABF): the student's feature
    through a 1×1 conv + BN to the mid width; below the deepest level, fused with the residual from the level below
    (upsampled, nearest) by two sigmoid attention maps from a 1×1 conv over both; resized (nearest) to the teacher's
    size, then a 3×3 conv + BN to the teacher's width. Returns (the output, the fused mid feature: the residual
    for the next shallower level). Convs initialised kaiming-uniform with a = 1, as there."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))  # fmt: skip
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None,
                out_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, x.shape[-2:], mode="nearest")
            z = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * z[:, :1] + residual * z[:, 1:]
        if x.shape[-2:] != out_size:
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x


class ReviewFusion(nn.Module):
    """ReviewKD's chain of ABFs over all of a student's tapped levels (listed shallow to deep, as the taps), for
    one teacher: the deepest level is transformed alone, each shallower one fused with the residual passed up
    from the level below it ("review": a shallow output sees every deeper student feature)."""

    def __init__(self, s_channels: list[int], t_channels: list[int], mid_channels: int):
        super().__init__()
        last = len(s_channels) - 1
        self.abfs = nn.ModuleList(
            ABF(s, mid_channels, t, fuse=i < last) for i, (s, t) in enumerate(zip(s_channels, t_channels, strict=True))
        )

    def forward(self, student: list[torch.Tensor], sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """One output per level, shallow to deep, each of the teacher's width and `sizes` (its spatial size)."""
        outputs, residual = [], None
        for abf, x, size in zip(reversed(self.abfs), reversed(student), reversed(sizes), strict=True):
            out, residual = abf(x, residual, size)
            outputs.append(out)
        return outputs[::-1]


def make_review(specs: list[LearnedSpec]) -> nn.Module:
    """One ReviewFusion from all of a teacher's tap pairs (TermKind.learned_per_teacher). Mid width: mdistiller's
    min(512, the student's deepest tap's channels), the cap being the term's `max_mid_channels`."""
    for spec in specs:
        if len(spec.student) not in (2, 4) or len(spec.teacher) not in (2, 4):
            raise KdclError(f"{spec.where}: ReviewKD fuses feature maps (and the embedding, as a 1×1 map); the taps "
                            f"give {tuple(spec.student)} and {tuple(spec.teacher)}")  # fmt: skip
    mid = min(int(specs[0].params["max_mid_channels"]), specs[-1].student[1])
    return ReviewFusion([s.student[1] for s in specs], [s.teacher[1] for s in specs], mid)
