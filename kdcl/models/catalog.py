"""What named timm models cost at a dataset's input size: `kdcl models PATTERN --cost` and
scripts/student_candidates.py. Models are built with random weights (cost does not depend on them) for
the data's classes, channels and image size, and measured by kdcl/models/cost.py like a run's models.
The input shape read from the config and the table come from kdcl/commands/models.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdcl.common.errors import KdclError
from kdcl.models.cost import ModelCost, model_cost

MAX_MODELS = 50  # each model is exported and timed: seconds apiece


@dataclass(frozen=True)
class InputShape:
    """The data a model would be trained on, as the cost measurement needs it."""

    data: str
    num_classes: int
    in_chans: int
    image_size: int
    batches: list[int]
    runtimes: list[str]


@dataclass(frozen=True)
class NamedCost:
    name: str
    params: int | None = None
    cost: ModelCost | None = None
    error: str | None = None  # why the model could not be built or run at this input size


def measure(name: str, shape: InputShape) -> NamedCost:
    import timm

    from kdcl.models.factory import count_params, timm_kwargs

    try:
        model = timm.create_model(name, **timm_kwargs(name, shape.num_classes, shape.in_chans, shape.image_size))
        cost = model_cost(model, shape.in_chans, shape.image_size, shape.batches, shape.runtimes)
    except Exception as exc:  # e.g. a model that downsamples a 32×32 input to nothing
        return NamedCost(name, error=(str(exc).strip().splitlines() or [type(exc).__name__])[0][:120])
    return NamedCost(name, count_params(model), cost)


def matching(pattern: str) -> list[str]:
    import timm

    names = timm.list_models(pattern)
    if len(names) > MAX_MODELS:
        raise KdclError(f"'{pattern}' matches {len(names)} timm models; --cost builds, exports and times each "
                        f"(seconds apiece): narrow the pattern to at most {MAX_MODELS}")  # fmt: skip
    return names
