"""timm backbones: creation from config, aliases, weight loading and frozen teachers."""

from kdcl.models.factory import (
    FrozenTeacher,
    check_model_cfg,
    check_model_name,
    count_params,
    create_model,
    load_kdcl_checkpoint,
)

__all__ = [
    "FrozenTeacher",
    "check_model_cfg",
    "check_model_name",
    "count_params",
    "create_model",
    "load_kdcl_checkpoint",
]
