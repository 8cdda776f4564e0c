"""`kdcl export RUN_DIR|CHECKPOINT [stage=NAME] [format=...] [out=DIR] [quantize=int8] [overwrite=true]`: the
arguments checked, then the model written and verified by kdcl/deploy/export.py."""

from __future__ import annotations

from pathlib import Path

from kdcl.common.errors import KdclError, did_you_mean
from kdcl.deploy.export import FORMATS, QUANTIZE, SIDECAR, ExportRequest, export_model
from kdcl.training.trainer import quiet_libraries

KEYS = ("stage", "format", "out", "quantize", "overwrite")
USAGE = (
    "kdcl export RUN_DIR|CHECKPOINT [stage=NAME] [format=safetensors|onnx] [out=DIR] [quantize=int8] [overwrite=true]"
)


def parse_request(args: list[str]) -> ExportRequest:
    """KEY=VALUE arguments after the run directory or checkpoint; every mistake is one line."""
    if not args or args[0].startswith("-") or "=" in args[0]:
        raise KdclError(f"kdcl export needs a run directory or a checkpoint first: {USAGE}")
    values: dict[str, str] = {}
    for item in args[1:]:
        key, sep, value = item.partition("=")
        if not sep or key not in KEYS:
            raise KdclError(f"kdcl export does not take '{item}'{did_you_mean(key, KEYS)}; usage: {USAGE}")
        values[key] = value
    fmt = values.get("format", "onnx" if values.get("quantize") not in (None, "", "none") else "safetensors")
    if fmt not in FORMATS:
        raise KdclError(f"format={fmt} is not an export format{did_you_mean(fmt, FORMATS)}; use safetensors or onnx")
    quantize = values.get("quantize") if values.get("quantize") not in (None, "", "none") else None
    if quantize is not None and quantize not in QUANTIZE:
        raise KdclError(f"quantize={quantize} is not supported; use quantize=int8 (or leave it out)")
    if quantize and fmt != "onnx":
        raise KdclError(f"quantize={quantize} quantizes the ONNX graph; use format=onnx (or leave format out)")
    overwrite = values.get("overwrite", "false").lower()
    if overwrite not in ("true", "false"):
        raise KdclError(f"overwrite={values['overwrite']} must be true or false")
    out = Path(values["out"]) if values.get("out") else None
    return ExportRequest(args[0], values.get("stage") or None, fmt, out, quantize, overwrite == "true")


def export_command(args: list[str]) -> dict:
    """Check everything the user gave (format, run, stage, output) before loading any model, then write."""
    quiet_libraries()
    req = parse_request(args)
    sidecar, out = export_model(req)
    show(sidecar, out)
    return sidecar


def show(sidecar: dict, out: Path) -> None:
    print(f"exported {sidecar['stage']} ({sidecar['timm_name']}) to {out}")
    for key in ("safetensors", "onnx", "int8"):
        entry = sidecar.get(key)
        if entry is None:
            continue
        checked = entry["verified"]
        line = (f"  {entry['file']:<18} {entry['size_bytes'] / 1e6:6.2f} MB  test acc {100 * checked['test_acc']:.2f} % "
                f"on {checked['test_examples']} images, max |Δ logit| vs the checkpoint {checked['max_abs_logit_diff']:.1e}")  # fmt: skip
        if "latency" in entry:
            ms = "  ".join(f"ms@{b} {t['median_ms']:.2f}" for b, t in entry["latency"]["ms"].items())
            line += f"\n  {'':<18} onnxruntime, {entry['latency']['threads']} threads: {ms}"
        if key == "int8":
            line += (
                f"; int8 vs fp32: accuracy {-100 * entry['acc_drop']:+.2f} points, {entry['size_ratio']:.1f}× smaller"
            )
        print(line)
    print(f"  {SIDECAR:<18} timm name, classes, input size, mean/std, run and stage, test accuracy", flush=True)
