"""`kdcl data prepare FOLDER OUT_DIR [size=256] [format=raw|jpeg] [workers=2] [overwrite=true]`: the arguments
checked, then a prepared, streamable copy of the folder written by kdcl/data/prepared.py (read by data=prepared)."""

from __future__ import annotations

import time
from pathlib import Path

from kdcl.common.errors import KdclError, did_you_mean

ACTIONS = ("prepare",)
KEYS = ("size", "format", "workers", "overwrite")
USAGE = "kdcl data prepare FOLDER OUT_DIR [size=256] [format=raw|jpeg] [workers=2] [overwrite=true]"


def positive(key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise KdclError(f"kdcl data prepare: {key}={value} must be a positive whole number")
    return number


def parse_prepare(args: list[str]) -> dict:
    """FOLDER OUT_DIR, then KEY=VALUE arguments; every mistake is one line."""
    paths = [a for a in args if "=" not in a]
    if len(paths) != 2 or any(a.startswith("-") for a in paths) or args[:2] != paths:
        raise KdclError(f"kdcl data prepare takes a folder and an out-dir first: {USAGE}")
    values: dict[str, str] = {}
    for item in args[2:]:
        key, _, value = item.partition("=")
        if key not in KEYS:
            raise KdclError(f"kdcl data prepare does not take '{item}'{did_you_mean(key, KEYS)}; usage: {USAGE}")
        values[key] = value
    overwrite = values.get("overwrite", "false").lower()
    if overwrite not in ("true", "false"):
        raise KdclError(f"kdcl data prepare: overwrite={values['overwrite']} must be true or false")
    fmt = values.get("format", "raw")
    if fmt not in ("raw", "jpeg"):
        raise KdclError(f"kdcl data prepare: format={fmt} is not a format{did_you_mean(fmt, ('raw', 'jpeg'))}; "
                        "use raw (decoded pixels) or jpeg (smaller, decoded at every read)")  # fmt: skip
    return {"root": Path(paths[0]), "out": Path(paths[1]), "size": positive("size", values.get("size", "256")),
            "fmt": fmt, "workers": positive("workers", values.get("workers", "2")), "overwrite": overwrite == "true"}  # fmt: skip


def data_command(args: list[str]) -> dict:
    if not args or args[0] not in ACTIONS:
        word = args[0] if args else ""
        raise KdclError(f"kdcl data needs an action{did_you_mean(word, ACTIONS)}: {USAGE}")
    from kdcl.data.prepared import prepare

    request = parse_prepare(args[1:])
    start = time.perf_counter()
    manifest = prepare(**request)
    counts = ", ".join(f"{name} {spec['count']}" for name, spec in manifest["splits"].items())
    print(f"prepared {request['out']}: {len(manifest['classes'])} classes, {counts} images, {manifest['format']} "
          f"at shorter side ≤ {manifest['storage_size']} px, in {time.perf_counter() - start:.1f} s; "
          f"read it with: kdcl train data=prepared data.root={request['out']}", flush=True)  # fmt: skip
    return manifest
