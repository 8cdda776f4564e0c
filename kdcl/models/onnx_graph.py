"""A model as an ONNX graph (torch.onnx's exporter) and ONNX Runtime sessions on the CPU.

Shared by `kdcl export` and the latency measurement (kdcl/models/cost.py), so the graph a deployer
gets is the graph whose latency the report shows. onnx, onnxscript and onnxruntime are the optional
extra `kdcl[export]`: `missing_onnx_packages` says whether they are there without importing them.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdcl.common.errors import KdclError

INPUT, OUTPUT = "input", "logits"
BATCH_AXIS = "batch"
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
INSTALL_HINT = "pip install 'kdcl[export]'"


def missing_onnx_packages() -> list[str]:
    return [name for name in ONNX_PACKAGES if find_spec(name) is None]


def require_onnx(what: str) -> None:
    """One line naming the extra to install, before any work, when the ONNX packages are missing."""
    missing = missing_onnx_packages()
    if missing:
        raise KdclError(f"{what} needs {', '.join(missing)} (not installed): {INSTALL_HINT}")


@dataclass(frozen=True)
class OnnxGraph:
    """A serialised ONNX model with a dynamic batch axis: input `input` (N, C, H, W) → `logits` (N, classes)."""

    model: bytes
    opset: int
    exporter: str  # "dynamo" (torch.export) or "torchscript" (the older tracer, where dynamo fails)


def plain_copy(model: nn.Module) -> nn.Module:
    """An fp32, eval-mode, contiguous CPU copy without torch.compile's wrapper (speed.* switches): what is
    exported is the model's computation, not the training-time settings it ran with."""
    model = copy.deepcopy(model).cpu().float().eval()
    model.to(memory_format=torch.contiguous_format)
    if getattr(model, "_compiled_call_impl", None) is not None:  # nn.Module.compile keeps it here
        model._compiled_call_impl = None
    return model


def opset_of(proto) -> int:
    return next(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def export_onnx(model: nn.Module, in_chans: int, image_size: int) -> OnnxGraph:
    """The model as ONNX: torch.export-based (dynamo) exporter, the TorchScript exporter where it fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporters' deprecation and tracing notices: not about the user's model
        return exported(model, in_chans, image_size)


def exported(model: nn.Module, in_chans: int, image_size: int) -> OnnxGraph:
    import onnx

    for name in ("onnx_ir", "onnxscript", "torch.onnx"):  # their INFO lines (graph passes) are not the user's concern
        logging.getLogger(name).setLevel(logging.WARNING)
    model = plain_copy(model)
    example = (torch.zeros(2, in_chans, image_size, image_size),)  # 2, not 1: a size-1 axis is specialised
    names = dict(input_names=[INPUT], output_names=[OUTPUT])
    try:
        program = torch.onnx.export(model, example, dynamo=True, dynamic_shapes=({0: BATCH_AXIS},), verbose=False,
                                    **names)  # fmt: skip
        proto, exporter = program.model_proto, "dynamo"
    except Exception as dynamo_exc:  # an operator torch.export cannot trace: the older exporter may
        buffer = io.BytesIO()
        try:
            torch.onnx.export(model, example, buffer, dynamo=False, dynamic_axes={INPUT: {0: BATCH_AXIS},
                              OUTPUT: {0: BATCH_AXIS}}, **names)  # fmt: skip
        except Exception:
            reason = str(dynamo_exc).strip().splitlines()[0][:200] if str(dynamo_exc).strip() else "?"
            raise KdclError(f"torch.onnx.export cannot export this model ({reason})") from None
        proto, exporter = onnx.load_from_string(buffer.getvalue()), "torchscript"
    return OnnxGraph(proto.SerializeToString(), opset_of(proto), exporter)


def session(model: bytes | Path, threads: int | None = None):
    """A CPU ONNX Runtime session using `threads` intra-op threads (default: as many as torch uses, so
    the two runtimes are compared on the same cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initialisers are not the user's concern
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_session(sess, x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Logits for a float batch."""
    array = x.numpy() if isinstance(x, torch.Tensor) else x
    return sess.run([OUTPUT], {INPUT: np.ascontiguousarray(array, dtype=np.float32)})[0]
