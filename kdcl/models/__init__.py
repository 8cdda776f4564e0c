"""timm backbones: creation from config, aliases, weight loading and frozen teachers.

The names below are loaded on first use (PEP 562), so `kdcl.models.taps` or `kdcl.models.names` can be
imported without importing timm (several seconds): config checks stay fast.
"""

from importlib import import_module

_FROM_FACTORY = (
    "FrozenTeacher",
    "check_model_cfg",
    "count_params",
    "create_model",
    "load_kdcl_checkpoint",
    "model_from_checkpoint",
)
__all__ = [*_FROM_FACTORY, "check_model_name"]


def __getattr__(name: str):
    if name in _FROM_FACTORY:
        return getattr(import_module("kdcl.models.factory"), name)
    if name == "check_model_name":
        return import_module("kdcl.models.names").check_model_name
    raise AttributeError(f"module 'kdcl.models' has no attribute {name!r}")
