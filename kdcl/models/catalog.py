"""What named timm models cost at a dataset's input size: `kdcl models PATTERN --cost` and
scripts/student_candidates.py. Models are built with random weights (cost does not depend on them) for
the data's classes, channels and image size, and measured by kdcl/models/cost.py like a run's models.
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


def input_shape(overrides: list[str]) -> InputShape:
    """The composed config's data (default: digits), batch sizes and runtimes (`report.*`)."""
    from hydra.errors import HydraException

    from kdcl.cli import compose
    from kdcl.config.checks import check_data, check_report, latency_batches, latency_runtimes, schema_error
    from kdcl.data import KdclDataModule

    try:
        cfg = compose(overrides)
    except HydraException as exc:
        typed = schema_error(exc)
        raise (typed or KdclError(f"kdcl models --cost: bad override ({str(exc).splitlines()[0]})")) from None
    check_data(cfg.data)
    check_report(cfg)
    source = KdclDataModule(cfg.data, seed=cfg.seed).load()
    batches, runtimes = latency_batches(cfg) or [1, 64], latency_runtimes(cfg) or ["onnxruntime", "eager"]
    return InputShape(cfg.data.name, source.num_classes, source.in_chans, int(cfg.data.image_size), batches, runtimes)


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


def cost_table(costs: list[NamedCost], shape: InputShape) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: params, MMACs, median ms per runtime and batch size (spread in the JSON)."""
    from kdcl.reporting.summary import SHORT, fmt_ms

    lat = [(r, str(b)) for r in shape.runtimes for b in shape.batches]
    headers = ["model", "params", "MMACs", *(f"{SHORT.get(r, r)} ms@{b}" for r, b in lat)]
    rows = []
    for c in costs:
        if c.cost is None:
            rows.append([c.name, "-", "-", *(["-"] * len(lat))])
            continue
        ms = [c.cost.latency[r].ms.get(b) if r in c.cost.latency else None for r, b in lat]
        rows.append([c.name, f"{c.params / 1e6:.2f} M", f"{c.cost.macs / 1e6:.1f}",
                     *(fmt_ms(t.median_ms if t else None) for t in ms)])  # fmt: skip
    return headers, rows
