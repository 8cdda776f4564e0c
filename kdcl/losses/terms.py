"""Named, weighted, optionally scheduled loss terms built from the `distill.terms` config.

A term is a function `(inputs, **params) -> scalar tensor` registered with `@register_term`; adding a
loss = one function in functional.py, one term here, one conf/distill/*.yaml preset. The total loss is
Σ weight·term; weights and numeric parameters may follow a schedule over the stage (schedules.py).

Feature terms (`features=...`) read intermediate activations through taps named in config
(`student_tap`, `teacher_tap`: a timm feature index, a module path or `embedding`; one or a list).
Terms with a `learned=` factory (learned.py) own a small module per (teacher, tap pair) — FitNets' bridge, VID's
regressor, OFD's connector, CRD's embeddings and memory — or one per teacher over all its tap pairs (ReviewKD's
fusion of every tapped level), which trains with the student but lives in the loss module, so it is never
exported; the term's function receives them as `learned`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdcl.common.errors import KdclError, did_you_mean
from kdcl.losses import functional as LF
from kdcl.losses.learned import LearnedSpec, make_bridge, make_crd, make_ofd, make_review, make_vid
from kdcl.losses.schedules import check_schedule, scheduled
from kdcl.losses.values import POSITIVE, check_term_values
from kdcl.models.taps import FeatureTaps, pre_activation, resolve_tap


@dataclass
class TermInputs:
    student_logits: torch.Tensor
    teacher_logits: list[torch.Tensor]  # one entry per teacher of the stage (may be empty)
    target: torch.Tensor
    # feature terms only: per teacher, the (student feature, teacher feature) pairs of the term's taps
    feature_pairs: list[list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=list)
    # the student's logits the teachers' are compared with, when that is not all of them (a
    # class-incremental stage distils only the old classes' outputs); None: student_logits
    distill_logits: torch.Tensor | None = None
    # class probabilities of a mixed batch (mixup/cutmix: kdcl/data/augment.py); `target` then holds each
    # example's dominant class, for the terms that need one class (dkd)
    soft_target: torch.Tensor | None = None
    # each example's position in the stage's training set (CRD's memory bank); batches carry it when a term
    # needs it (TermKind.needs_index) or teacher outputs are stored
    index: torch.Tensor | None = None

    @property
    def student_for_teacher(self) -> torch.Tensor:
        return self.student_logits if self.distill_logits is None else self.distill_logits


TermFn = Callable[..., torch.Tensor]
# one spec (a tap pair) per module; a list of them (all of a teacher's pairs) with TermKind.learned_per_teacher
LearnedFactory = Callable[[LearnedSpec], nn.Module] | Callable[[list[LearnedSpec]], nn.Module]
Learned = list[list[nn.Module]]  # a term's learned modules, per teacher, per tap pair (as feature_pairs) or one


@dataclass(frozen=True)
class TermKind:
    fn: TermFn
    needs_teacher: bool
    features: int | None  # None: logits only; else the rank the taps must have (4 = maps, 0 = any)
    learned: LearnedFactory | None = None  # builds the term's module per (teacher, tap pair), passed as `learned`
    learned_per_teacher: bool = False  # the factory gets all of a teacher's tap pairs and builds one module (ReviewKD)
    learned_temperature: bool = False  # the loss owns a temperature parameter (CTKD), passed as temperature_logit
    min_taps: int = 1  # tap pairs the term needs (KDSVD relates consecutive layers: 2)
    pre_activation: bool = False  # read each tap before its block's final activation (OFD)
    teacher_pre_activation: bool = False  # the same for the teachers' taps only (ReviewKD, as mdistiller's)
    needs_index: bool = False  # the term reads each example's position in the training set (CRD)
    fixed: tuple[str, ...] = ()  # parameters that size the learned module: set once, never scheduled


TERMS: dict[str, TermKind] = {}
NEEDS_TEACHER: set[str] = set()
TAP_KEYS = ("student_tap", "teacher_tap")


def register_term(
    name: str, needs_teacher: bool = True, features: int | None = None, **kind
) -> Callable[[TermFn], TermFn]:
    """`kind`: TermKind's optional fields (learned, learned_temperature, min_taps, pre_activation, ...)."""

    def add(fn: TermFn) -> TermFn:
        TERMS[name] = TermKind(fn, needs_teacher or features is not None, features, **kind)
        if needs_teacher or features is not None:
            NEEDS_TEACHER.add(name)
        return fn

    return add


def mean_over_teachers(fn: Callable[[torch.Tensor], torch.Tensor], teachers: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([fn(t) for t in teachers]).mean()


def over_feature_pairs(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], inp: TermInputs) -> torch.Tensor:
    """Sum over a term's tap pairs (as RepDistiller sums over layers), mean over teachers."""
    return torch.stack([sum(fn(s, t) for s, t in pairs) for pairs in inp.feature_pairs]).mean()


def over_learned_pairs(fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor], inp: TermInputs,
                       learned: Learned) -> torch.Tensor:  # fmt: skip
    """over_feature_pairs, each pair with its own learned module."""
    per_teacher = zip(learned, inp.feature_pairs, strict=True)
    return torch.stack(
        [sum(fn(m, s, t) for m, (s, t) in zip(mods, pairs, strict=True)) for mods, pairs in per_teacher]
    ).mean()


@register_term("ce", needs_teacher=False)
def ce(inp: TermInputs, label_smoothing: float = 0.0) -> torch.Tensor:
    target = inp.target if inp.soft_target is None else inp.soft_target
    return LF.ce_loss(inp.student_logits, target, label_smoothing)


@register_term("kd")
def kd(inp: TermInputs, temperature: float = 4.0) -> torch.Tensor:
    return mean_over_teachers(lambda t: LF.kd_loss(inp.student_for_teacher, t, temperature), inp.teacher_logits)


@register_term("dkd")
def dkd(inp: TermInputs, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> torch.Tensor:
    return mean_over_teachers(
        lambda t: LF.dkd_loss(inp.student_for_teacher, t, inp.target, alpha, beta, temperature), inp.teacher_logits
    )


@register_term("dist")
def dist(inp: TermInputs, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0) -> torch.Tensor:
    return mean_over_teachers(
        lambda t: LF.dist_loss(inp.student_for_teacher, t, beta, gamma, temperature), inp.teacher_logits
    )


@register_term("lskd")
def lskd(inp: TermInputs, temperature: float = 2.0) -> torch.Tensor:
    return mean_over_teachers(lambda t: LF.lskd_loss(inp.student_for_teacher, t, temperature), inp.teacher_logits)


@register_term("ctkd", learned_temperature=True)
def ctkd(inp: TermInputs, t_min: float = 1.0, t_max: float = 21.0, reversal: float = 1.0, *,
         temperature_logit: torch.Tensor) -> torch.Tensor:  # fmt: skip
    return mean_over_teachers(
        lambda t: LF.ctkd_loss(inp.student_for_teacher, t, temperature_logit, t_min, t_max, reversal),
        inp.teacher_logits,
    )


@register_term("at", features=4)
def at(inp: TermInputs, p: float = 2.0) -> torch.Tensor:
    return over_feature_pairs(lambda s, t: LF.at_loss(s, t, p), inp)


@register_term("rkd", features=0)
def rkd(inp: TermInputs, distance_weight: float = 25.0, angle_weight: float = 50.0) -> torch.Tensor:
    return over_feature_pairs(lambda s, t: LF.rkd_loss(s, t, distance_weight, angle_weight), inp)


@register_term("fitnet", features=0, learned=make_bridge)
def fitnet(inp: TermInputs, *, learned: Learned) -> torch.Tensor:
    return over_learned_pairs(lambda bridge, s, t: LF.hint_loss(bridge(s), t), inp, learned)


@register_term("nst", features=4)
def nst(inp: TermInputs) -> torch.Tensor:
    return over_feature_pairs(LF.nst_loss, inp)


@register_term("pkt", features=0)
def pkt(inp: TermInputs) -> torch.Tensor:
    return over_feature_pairs(LF.pkt_loss, inp)


@register_term("sp", features=0)
def sp(inp: TermInputs) -> torch.Tensor:
    return over_feature_pairs(LF.sp_loss, inp)


@register_term("kdsvd", features=4, min_taps=2)
def kdsvd(inp: TermInputs, k: int = 1) -> torch.Tensor:
    """One loss over all of the term's tap pairs (consecutive layers are related), mean over teachers."""
    return torch.stack(
        [LF.kdsvd_loss([s for s, _ in pairs], [t for _, t in pairs], k) for pairs in inp.feature_pairs]
    ).mean()


@register_term("vid", features=4, learned=make_vid, fixed=("init_variance",))
def vid(inp: TermInputs, init_variance: float = 5.0, eps: float = 1e-5, *, learned: Learned) -> torch.Tensor:
    return over_learned_pairs(lambda m, s, t: LF.vid_loss(s, t, m.regressor, m.log_scale, eps), inp, learned)


@register_term("ofd", features=4, learned=make_ofd, pre_activation=True)
def ofd(inp: TermInputs, *, learned: Learned) -> torch.Tensor:
    """mdistiller's ofd_loss: the deepest tap pair at weight 1, each shallower one at half the next's."""

    def per_teacher(connectors: list[nn.Module], pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        n = len(pairs)
        return sum(LF.ofd_loss(c.connector(s), t, c.margin) / 2 ** (n - 1 - i)
                   for i, (c, (s, t)) in enumerate(zip(connectors, pairs, strict=True)))  # fmt: skip

    return torch.stack([per_teacher(c, p) for c, p in zip(learned, inp.feature_pairs, strict=True)]).mean()


@register_term("crd", features=0, learned=make_crd, needs_index=True, fixed=("negatives", "dim", "max_bank_mb"))
def crd(inp: TermInputs, temperature: float = 0.07, momentum: float = 0.5, negatives: int = 16384, dim: int = 128,
        max_bank_mb: float = 2048.0, *, learned: Learned) -> torch.Tensor:  # fmt: skip
    """`negatives`, `dim` and `max_bank_mb` size the memory (learned.make_crd). In fp32: exp(⟨·,·⟩/0.07) overflows
    half precision."""
    if inp.index is None:
        raise RuntimeError("crd needs each example's position in the training set (TermInputs.index)")

    def one(bank: nn.Module, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(s.device.type, enabled=False):
            s, t = bank.embed(s.float(), t.detach().float())
            sampled = bank.sample(inp.index)
            z = bank.normalisers(s, t, sampled, temperature)
            loss = LF.crd_loss(s, t, bank.memory_s[sampled], bank.memory_t[sampled], z, temperature, len(bank.labels))
            bank.update(inp.index, s, t, momentum)
        return loss

    return over_learned_pairs(one, inp, learned)


def as_map(feature: torch.Tensor) -> torch.Tensor:
    """A feature map as it is, a vector (the embedding) as a 1×1 map (mdistiller's pooled_feat[..., None, None])."""
    return feature if feature.dim() == 4 else feature[:, :, None, None]


@register_term("reviewkd", features=0, learned=make_review, learned_per_teacher=True, teacher_pre_activation=True,
               fixed=("max_mid_channels",))  # fmt: skip
def reviewkd(inp: TermInputs, max_mid_channels: int = 512, *, learned: Learned) -> torch.Tensor:
    """mdistiller's ReviewKD: one fusion module per teacher turns all the student's tapped levels into one output per
    level (learned.ReviewFusion), each compared with the teacher's feature there by hcl_loss; mean over teachers.
    `max_mid_channels` caps the fusion's width (learned.make_review)."""

    def one(fusion: nn.Module, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        student, teacher = [as_map(s) for s, _ in pairs], [as_map(t) for _, t in pairs]
        return LF.hcl_loss(fusion(student, [t.shape[-2:] for t in teacher]), teacher)

    return torch.stack([one(mods[0], pairs) for mods, pairs in zip(learned, inp.feature_pairs, strict=True)]).mean()


@dataclass
class Term:
    name: str  # the key in distill.terms (shown in logs)
    kind: str  # the registered function (defaults to the name)
    weight: float
    params: dict  # the function's parameters that the config sets
    schedule: dict = field(default_factory=dict)  # parameter ("weight", "temperature", ...) -> schedule spec
    taps: dict = field(default_factory=dict)  # student_tap / teacher_tap -> list of taps

    @property
    def spec(self) -> TermKind:
        return TERMS[self.kind]

    @property
    def active(self) -> bool:
        """Whether the term ever counts: a positive weight, or a weight schedule that may raise it from 0."""
        return self.weight > 0 or "weight" in self.schedule


def as_tap_list(value, key: str) -> list:
    taps = list(value) if isinstance(value, (list, tuple)) else [value]
    if not taps or not all(isinstance(t, (int, str)) and not isinstance(t, bool) for t in taps):
        raise KdclError(f"{key}={value!r} must be a feature index, a module path or 'embedding' (or a list of them)")
    return taps


@functools.cache
def defaults_of(fn: TermFn) -> dict[str, Any]:
    """A loss function's parameter defaults, read once (the loss reads them at every step)."""
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()}


def config_params(fn: TermFn) -> list[str]:
    """The parameters a config may set: all but the inputs and the keyword-only ones the loss supplies."""
    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if p.name != "inp" and p.kind != inspect.Parameter.KEYWORD_ONLY]


def parse_term(name: str, spec, key: str) -> Term:
    """A term whose numbers check_term_values has checked: its kind, parameter names, taps and schedules."""
    spec = dict(spec)
    kind = spec.pop("kind", name)
    if kind not in TERMS:
        raise KdclError(
            f"{key}.{name}: '{kind}' is not a loss term{did_you_mean(kind, TERMS)} (known: {', '.join(sorted(TERMS))})"
        )
    weight = spec.pop("weight", 1.0)
    schedule = spec.pop("schedule", None) or {}
    taps = {}
    if TERMS[kind].features is not None:
        for tap_key in TAP_KEYS:
            if spec.get(tap_key) is None:
                raise KdclError(
                    f"{key}.{name}.{tap_key} is required by '{kind}': a feature index, module path or 'embedding'"
                )
            taps[tap_key] = as_tap_list(spec.pop(tap_key), f"{key}.{name}.{tap_key}")
        if len(taps["student_tap"]) != len(taps["teacher_tap"]):
            raise KdclError(f"{key}.{name}: student_tap and teacher_tap must list the same number of taps")
        if len(taps["student_tap"]) < TERMS[kind].min_taps:
            raise KdclError(
                f"{key}.{name}: '{kind}' relates consecutive layers and needs at least {TERMS[kind].min_taps} taps "
                f"per model (got {len(taps['student_tap'])}); list them, e.g. student_tap=[1,2,3] teacher_tap=[1,2,3]"
            )
    allowed = config_params(TERMS[kind].fn)
    extra = list(TAP_KEYS) if TERMS[kind].features is not None else []
    for param in spec:
        if param not in allowed:
            raise KdclError(
                f"{key}.{name}.{param} is not a parameter of the '{kind}' term{did_you_mean(param, allowed + extra)}; "
                f"it takes: {', '.join(allowed + extra + ['weight', 'schedule'])}"
            )
    if not isinstance(schedule, Mapping):
        raise KdclError(f"{key}.{name}.schedule must map a parameter (weight, temperature, ...) to a schedule")
    for param, sched in schedule.items():
        if param != "weight" and param not in allowed:
            raise KdclError(
                f"{key}.{name}.schedule.{param}: '{kind}' has no numeric parameter {param}; "
                f"schedulable: {', '.join(['weight', *allowed])}"
            )
        if param in TERMS[kind].fixed:
            raise KdclError(f"{key}.{name}.schedule.{param}: {param} sizes the term's learned module and cannot follow "
                            "a schedule; set it as a number")  # fmt: skip
        check_schedule(sched, f"{key}.{name}.schedule.{param}", value_must_be_positive=param in POSITIVE)
    return Term(str(name), kind, float(weight), spec, dict(schedule), taps)


def parse_terms(terms_cfg: Mapping, key: str = "distill.terms") -> list[Term]:
    """Validate the terms config: known kinds and parameters, weights ≥ 0, temperatures > 0, schedules, taps."""
    if isinstance(terms_cfg, DictConfig):
        terms_cfg = OmegaConf.to_container(terms_cfg, resolve=True)
    check_term_values(terms_cfg, key)
    return [parse_term(str(name), spec, key) for name, spec in terms_cfg.items()]


class DistillLoss(nn.Module):
    """Σ weight·term over the configured terms; returns the total and each term's value for logging."""

    def __init__(self, terms: Mapping | tuple[Term, ...] | list[Term], key: str = "distill.terms",
                 labels: Callable[[], torch.Tensor] | None = None):  # fmt: skip
        """`terms`: already parsed (a stage of the plan), or a terms config to parse. `labels`: the training
        examples' labels by position, read when attaching a term that needs them (CRD's memory bank)."""
        super().__init__()
        self.key = key
        parsed = list(terms) if isinstance(terms, (list, tuple)) else parse_terms(terms, key)
        self.terms = [t for t in parsed if t.active]
        self.labels = labels
        self.learned = nn.ModuleDict()  # term name -> its learned modules, one per (teacher, tap pair)
        self.taps: list[FeatureTaps] = []  # [student, teacher 1, ...] once attached
        self.paths: dict[tuple[str, int], list[tuple[str, bool]]] = {}  # (term, model slot) -> resolved taps
        # CTKD: one global temperature per term, as a logit (the paper's code starts it at 1), trained by
        # the stage's optimizer with the student through the term's gradient reversal
        self.temperature_logits = nn.ParameterDict(
            {t.name: nn.Parameter(torch.tensor(1.0)) for t in self.terms if t.spec.learned_temperature}
        )

    @property
    def needs_teacher(self) -> bool:
        return any(t.spec.needs_teacher for t in self.terms)

    @property
    def needs_index(self) -> bool:
        """Whether training batches must carry each example's position (TermInputs.index)."""
        return any(t.spec.needs_index for t in self.terms)

    @property
    def feature_terms(self) -> list[Term]:
        return [t for t in self.terms if t.spec.features is not None]

    def attach(self, student: nn.Module, teachers: list[nn.Module], example: torch.Tensor, names: list[str]) -> None:
        """Hook the tapped modules, check them with one forward of `example`, build the learned modules.

        `names` = the models' names for error messages ([student, teacher 1, ...]). The forward runs
        in eval mode without grad, so batch-norm statistics and the random state are untouched. On the
        meta device (the plan's shape-only check) the learned modules are built on it too, without data.
        """
        if not self.feature_terms:
            self.labels = None  # a closure would not pickle (ddp_spawn sends the module) and holds the data
            return
        models = [student, *teachers]
        norms = {  # (term, slot) -> pre-activation taps' batch norms (OFD's margin), else Nones
            (term.name, slot): self.resolve_taps(term, slot, model, names[slot], example)
            for term in self.feature_terms
            for slot, model in enumerate(models)
        }
        self.taps = [
            FeatureTaps(model, [p for t in self.feature_terms for p in self.paths[(t.name, slot)]])
            for slot, model in enumerate(models)
        ]
        with torch.no_grad():
            for model in models:
                was_training = model.training
                model.train(False)
                model(example)
                model.train(was_training)
        self.taps[0].only_with_grad = True  # from now on: the student stores activations in training steps only
        for term in self.feature_terms:
            modules = []
            for slot in range(1, len(models)):
                specs = []
                for j, (s, t) in enumerate(self.feature_pair_tensors(term, slot)):
                    self.check_shapes(term, s.shape, t.shape, names[0], names[slot])
                    if term.spec.learned is not None:
                        specs.append(self.learned_spec(term, s.shape, t.shape, norms[(term.name, slot)][j], example))
                if specs:
                    modules += self.build_learned(term, specs, example.device)
            if modules:
                self.learned[term.name] = nn.ModuleList(modules).to(example.device)
        self.labels = None  # read once, and a closure would not pickle (ddp_spawn sends the module)
        self.clear()

    def resolve_taps(self, term: Term, slot: int, model: nn.Module, name: str,
                     example: torch.Tensor) -> list[nn.Module | None]:  # fmt: skip
        """Sets the (module path, read input) of each of the term's taps on one model, moved before the block's
        final activation for pre-activation terms (OFD); returns the batch norm before each (else None)."""
        tap_key = "student_tap" if slot == 0 else "teacher_tap"
        paths = [resolve_tap(model, tap, f"{self.key}.{term.name}.{tap_key}", name) for tap in term.taps[tap_key]]
        norms: list[nn.Module | None] = [None] * len(paths)
        if term.spec.pre_activation or (slot > 0 and term.spec.teacher_pre_activation):
            modules = dict(model.named_modules())
            moved = [i for i, (_, read_input) in enumerate(paths) if not read_input]  # not the embedding (pooled)
            found = pre_activation(model, [paths[i][0] for i in moved], example)
            for i, f in zip(moved, found, strict=True):
                paths[i], norms[i] = f.tap, modules[f.norm] if f.norm else None
        self.paths[(term.name, slot)] = paths
        return norms

    def learned_spec(self, term: Term, s: torch.Size, t: torch.Size, norm: nn.Module | None,
                     example: torch.Tensor) -> LearnedSpec:  # fmt: skip
        shape_only = example.device.type == "meta"
        labels = self.labels() if term.spec.needs_index and self.labels is not None and not shape_only else None
        params = {**defaults_of(term.spec.fn), **term.params}
        return LearnedSpec(f"{self.key}.{term.name}", s, t, params, norm, labels, shape_only)

    def build_learned(self, term: Term, specs: list[LearnedSpec], device: torch.device) -> list[nn.Module]:
        """The term's modules for one teacher: one per tap pair, or one over all of them (learned_per_teacher)."""
        with torch.device(device):  # the plan's shape-only check allocates nothing (meta)
            if term.spec.learned_per_teacher:
                return [term.spec.learned(specs)]
            return [term.spec.learned(spec) for spec in specs]

    def check_shapes(self, term: Term, s: torch.Size, t: torch.Size, student: str, teacher: str) -> None:
        rank = term.spec.features
        where = f"{self.key}.{term.name}"
        if rank and (len(s) != rank or len(t) != rank):
            raise KdclError(
                f"{where}: '{term.kind}' needs {rank}-D feature maps but the taps give {student} {tuple(s)} and "
                f"{teacher} {tuple(t)}; tap a convolutional stage (a feature index) instead"
            )

    def feature_pair_tensors(self, term: Term, teacher_slot: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        student, teacher = self.taps[0], self.taps[teacher_slot]
        return [
            (student[s_tap], teacher[t_tap])
            for s_tap, t_tap in zip(self.paths[(term.name, 0)], self.paths[(term.name, teacher_slot)], strict=True)
        ]

    def term_inputs(self, term: Term, inp: TermInputs) -> TermInputs:
        if term.spec.features is None:
            return inp
        return replace(inp, feature_pairs=[self.feature_pair_tensors(term, slot) for slot in range(1, len(self.taps))])

    def learned_of(self, term: Term) -> Learned:
        """The term's learned modules per teacher: per tap pair (the layout of TermInputs.feature_pairs), or one."""
        n = 1 if term.spec.learned_per_teacher else len(self.paths[(term.name, 0)])
        flat = list(self.learned[term.name])
        return [flat[i : i + n] for i in range(0, len(flat), n)]

    def learned_params(self) -> dict[str, int]:
        """Term name -> trainable parameters of its learned modules (they train with the student, never exported)."""
        return {
            name: sum(p.numel() for p in mods.parameters() if p.requires_grad) for name, mods in self.learned.items()
        }

    def summaries(self) -> list[str]:
        """Lines for the stage's log: each term's learned parameters, then what a module reports of itself (CRD's
        memory bank)."""
        sizes = [f"{name} {n / 1e6:.3g} M" for name, n in self.learned_params().items()]
        lines = [f"learned parameters (trained with the student, never exported): {', '.join(sizes)}"] if sizes else []
        return lines + [m.summary() for mods in self.learned.values() for m in mods if hasattr(m, "summary")]

    def scheduled_values(self, progress: float) -> dict[str, float]:
        """`<param>_<term>` -> current value, for every scheduled parameter (logged so schedules are visible)."""
        values = {}
        for t in self.terms:
            for param, spec in t.schedule.items():
                base = t.weight if param == "weight" else t.params.get(param, defaults_of(t.spec.fn)[param])
                values[f"{param}_{t.name}"] = scheduled(base, spec, progress)
        for name, logit in self.temperature_logits.items():  # learned temperatures: their trajectory
            t = next(t for t in self.terms if t.name == name)
            bounds = [t.params.get(b, defaults_of(t.spec.fn)[b]) for b in ("t_min", "t_max")]
            values[f"temperature_{name}"] = float(LF.bounded_temperature(logit.detach(), *bounds))
        return values

    def forward(self, inp: TermInputs, progress: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.feature_terms and not self.taps:
            raise RuntimeError("DistillLoss.attach() must run before a loss with feature terms is used")
        parts, total = {}, 0.0
        for t in self.terms:
            params = {k: scheduled(v, t.schedule.get(k), progress) for k, v in t.params.items()}
            for k in t.schedule.keys() - {"weight"} - params.keys():  # a scheduled default value
                params[k] = scheduled(defaults_of(t.spec.fn)[k], t.schedule[k], progress)
            if t.name in self.temperature_logits:
                params["temperature_logit"] = self.temperature_logits[t.name]
            if t.name in self.learned:
                params["learned"] = self.learned_of(t)
            parts[t.name] = t.spec.fn(self.term_inputs(t, inp), **params)
            total = total + scheduled(t.weight, t.schedule.get("weight"), progress) * parts[t.name]
        self.clear()
        return total, parts

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Checkpoints from before the learned modules were general keep FitNets' bridges under `bridges.`
        (overridden here, as torch's public pre-hook needs torch ≥ 2.5)."""
        for key in [k for k in state_dict if k.startswith(prefix + "bridges.")]:
            state_dict[prefix + "learned." + key.removeprefix(prefix + "bridges.")] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def clear(self) -> None:
        """Drop the captured activations (and the graph they hold) once the loss is computed."""
        for taps in self.taps:
            taps.outputs.clear()
