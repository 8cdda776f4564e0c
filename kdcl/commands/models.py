"""`kdcl models [PATTERN] [--cost [data=...]]`: timm's model names and kdcl's aliases; with --cost what each
matching model costs at the data's input size (kdcl/models/catalog.py measures them)."""

from __future__ import annotations

import fnmatch

from kdcl.common.errors import KdclError
from kdcl.config.compose import compose, config_dir
from kdcl.config.upgrade import check_renamed
from kdcl.models.catalog import InputShape, NamedCost, matching, measure


def models(rest: list[str]) -> None:
    import timm
    from omegaconf import OmegaConf

    cost = "--cost" in rest
    args = [a for a in rest if a != "--cost"]
    overrides = [a for a in args if "=" in a]
    if overrides and not cost:
        raise KdclError(f"kdcl models takes {' '.join(overrides)} only with --cost (the data to measure at)")
    check_renamed(overrides)
    pattern = next((a for a in args if "=" not in a), "*")
    aliases = []
    for group in ("teacher", "student"):
        for f in sorted((config_dir() / group).glob("*.yaml")):
            name = OmegaConf.load(f).name
            if fnmatch.fnmatch(f.stem, pattern) or fnmatch.fnmatch(name, pattern):
                aliases.append(f"  {group}={f.stem:<12} → {name}")
    names = timm.list_models(pattern)
    if not names and not aliases:
        raise KdclError(f"no timm model matches '{pattern}'; try a pattern with * such as 'resnet*'")
    if aliases:
        print("kdcl aliases:")
        print("\n".join(aliases))
    if cost:
        return model_costs(pattern, overrides)
    print(f"timm models matching '{pattern}' ({len(names)}; use any as teacher.name=... or student.name=...):")
    width = max((len(n) for n in names), default=0) + 2
    per_line = max(1, 100 // max(width, 1))
    for i in range(0, len(names), per_line):
        print("  " + "".join(n.ljust(width) for n in names[i : i + per_line]).rstrip())


def model_costs(pattern: str, overrides: list[str]) -> None:
    """`kdcl models PATTERN --cost`: each matching model measured at the data's size, one line at a time."""
    from kdcl.common.tables import print_table

    names, shape = matching(pattern), input_shape(overrides)
    print(f"measuring {len(names)} models at {shape.in_chans}×{shape.image_size}×{shape.image_size}, "
          f"{shape.num_classes} classes (data={shape.data}), batches {shape.batches}:", flush=True)  # fmt: skip
    costs = []
    for name in names:
        costs.append(measure(name, shape))
        print(f"  {name}: {costs[-1].error or 'measured'}", flush=True)
    headers, rows = cost_table(costs, shape)
    print_table(headers, rows, f"what each model costs on the CPU (data={shape.data})", left=("model",))
    notes = {lat.note for c in costs if c.cost for lat in c.cost.latency.values() if lat.note}
    for note in sorted(notes):
        print(f"note: {note}")


def input_shape(overrides: list[str]) -> InputShape:
    """The composed config's data (default: digits), batch sizes and runtimes (`latency.*`)."""
    from hydra.errors import HydraException

    from kdcl.config.checks import check_data, check_latency, latency_batches, latency_runtimes, schema_error
    from kdcl.data import KdclDataModule

    try:
        cfg = compose(overrides)
    except HydraException as exc:
        typed = schema_error(exc)
        raise (typed or KdclError(f"kdcl models --cost: bad override ({str(exc).splitlines()[0]})")) from None
    check_data(cfg.data)
    check_latency(cfg)
    source = KdclDataModule(cfg.data, seed=cfg.seed).load()
    batches, runtimes = latency_batches(cfg) or [1, 64], latency_runtimes(cfg) or ["onnxruntime", "eager"]
    return InputShape(cfg.data.name, source.num_classes, source.in_chans, int(cfg.data.image_size), batches, runtimes)


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
