"""Distillation losses: pure tensor functions (functional.py) and config-built named terms (terms.py)."""

from kdcl.losses.terms import TERMS, DistillLoss, register_term

__all__ = ["TERMS", "DistillLoss", "register_term"]
