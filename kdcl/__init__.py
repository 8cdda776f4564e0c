"""kdcl: knowledge distillation with curriculum learning, as a config-driven experiment runner."""

__version__ = "0.1.0"
