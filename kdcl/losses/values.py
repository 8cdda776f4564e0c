"""The numbers of a loss-terms config (weights ≥ 0, temperatures > 0, ...), checked without torch so that
`kdcl train` refuses a bad value at once. Which kinds and parameter names exist needs the term registry
(terms.py, which imports torch); `parse_terms` there calls this first.
"""

from __future__ import annotations

from collections.abc import Mapping

from kdcl.common.errors import KdclError

# parameters that must be > 0 (all others ≥ 0)
POSITIVE = {"temperature", "p", "t_min", "k", "negatives", "dim", "max_bank_mb", "init_variance",
            "max_mid_channels"}  # fmt: skip
# whole numbers (KDSVD's singular vectors, CRD's negatives and embedding width, ReviewKD's fusion width)
INTEGER = {"k", "negatives", "dim", "max_mid_channels"}
NOT_NUMBERS = ("kind", "weight", "schedule", "student_tap", "teacher_tap")


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_term(name: str, spec, key: str) -> None:
    if spec is None:
        raise KdclError(f"{key}.{name} is null; remove the term with ~{key}.{name} or set its weight to 0")
    if not isinstance(spec, Mapping):
        raise KdclError(f"{key}.{name} must hold the term's settings (weight, parameters), not {spec!r}")
    weight = spec.get("weight", 1.0)
    if not is_number(weight) or weight < 0:
        raise KdclError(f"{key}.{name}.weight={weight} must be a number ≥ 0")
    for param, value in spec.items():
        if param in NOT_NUMBERS:
            continue
        positive = param in POSITIVE
        if not is_number(value) or value < 0 or (positive and value == 0):
            raise KdclError(f"{key}.{name}.{param}={value} must be a number {'> 0' if positive else '≥ 0'}")
        if param in INTEGER and value != int(value):
            raise KdclError(f"{key}.{name}.{param}={value} must be a whole number ≥ 1")
    if "t_max" in spec and is_number(spec.get("t_min", 1.0)) and not spec["t_max"] > spec.get("t_min", 1.0):
        raise KdclError(f"{key}.{name}.t_max={spec['t_max']} must be above t_min={spec.get('t_min', 1.0)}")
    for fraction in ("label_smoothing", "momentum"):
        if not spec.get(fraction, 0.0) < 1:
            raise KdclError(f"{key}.{name}.{fraction}={spec[fraction]} must be in [0, 1)")


def check_term_values(terms_cfg, key: str = "distill.terms") -> None:
    """Every term holds settings, every weight and numeric parameter is in range, one weight is positive."""
    if not terms_cfg:
        raise KdclError(f"{key} is empty; give at least one term, e.g. {key}.ce.weight=1")
    if not isinstance(terms_cfg, Mapping):
        raise KdclError(f"{key} must map term names to their settings, not {terms_cfg!r}")
    for name, spec in terms_cfg.items():
        check_term(str(name), spec, key)
    if not any(spec.get("weight", 1.0) > 0 for spec in terms_cfg.values()):
        raise KdclError(f"{key}: every weight is 0; give at least one term a positive weight")
