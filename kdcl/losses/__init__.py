"""Distillation losses: pure tensor functions (functional.py), config-built named terms (terms.py), the
learned modules some terms own (learned.py) and their numbers' checks (values.py, torch-free). The names
below load terms.py (and torch) on first use."""

from importlib import import_module

__all__ = ["TERMS", "DistillLoss", "register_term"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(import_module("kdcl.losses.terms"), name)
    raise AttributeError(f"module 'kdcl.losses' has no attribute {name!r}")
