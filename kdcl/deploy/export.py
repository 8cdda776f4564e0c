"""What `kdcl export` writes: a run's model alone — no teachers, no optimizer state — for plain timm
(safetensors) or ONNX Runtime (onnx, optionally int8), with a sidecar (model.json) holding what a deployer
needs.

Every file is checked before the command returns: the safetensors file is loaded back with plain
`timm.create_model` the way the sidecar says, the ONNX graph is run in ONNX Runtime; both are compared
with the checkpoint's model on the run's test images. Files are written into a temporary directory next
to `out` and renamed at the end, so a refused or failed export leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from kdcl import __version__
from kdcl.common.errors import KdclError
from kdcl.common.io import atomic_write_json
from kdcl.deploy.locate import Located, StageModel, load_stage, locate
from kdcl.models.input_norm import InputNorm, input_norm_of, normalised_input
from kdcl.models.predictions import evaluating

FORMATS = ("safetensors", "onnx")
QUANTIZE = ("int8",)
SIDECAR = "model.json"
CALIBRATION_IMAGES = 256  # training images ONNX Runtime's calibrator sees (a few hundred suffice for min/max)
TIMM_TOLERANCE = 1e-5  # |logit| difference allowed between the checkpoint's model and timm loading the export
ONNX_TOLERANCE = 1e-4  # ... and ONNX Runtime running it (other kernels, other summation order), × max(1, |logit|)


@dataclass(frozen=True)
class ExportRequest:
    target: str
    stage: str | None = None
    format: str = "safetensors"
    out: Path | None = None
    quantize: str | None = None
    overwrite: bool = False


@dataclass(frozen=True)
class Comparison:
    """An exported model against the checkpoint's, on the stage's test images."""

    max_abs_diff: float
    max_abs_logit: float
    test_acc: float
    reference_acc: float
    examples: int


def output_dir(req: ExportRequest, located: Located) -> Path:
    """`out`, else <run>/export/<stage>-<format>[-int8] (next to the checkpoint when one was given)."""
    if req.out is not None:
        return req.out
    base = located.run_dir if located.run_dir is not None else located.checkpoint.parent
    return base / "export" / f"{located.stage}-{req.format}{'-' + req.quantize if req.quantize else ''}"


def check_output(out: Path, overwrite: bool) -> None:
    """An existing `out` is refused unless overwrite=true, and then only an earlier export (or an empty
    directory) is replaced: overwrite=true never deletes a folder kdcl did not write."""
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise KdclError(f"out={out} already exists; choose another out=DIR or add overwrite=true to replace it")
    if out.is_dir() and not out.is_symlink() and (not any(out.iterdir()) or (out / SIDECAR).is_file()):
        return
    raise KdclError(f"out={out} exists and is not a kdcl export (no {SIDECAR}); overwrite=true only replaces one")


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh directory that becomes `out` when the block succeeds and disappears when it fails."""
    created = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in created:  # parents this export created, innermost first, if still empty
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def model_norm(loaded: StageModel) -> InputNorm:
    """How the model normalises its input: what an exported file expects to be done before it."""
    norm = input_norm_of(loaded.model)
    assert norm is not None, "kdcl builds every model with its normalisation"
    return norm


def labelled_test_images(loaded: StageModel) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The stage's test images, normalised as the model normalises them, with their labels."""
    loader = DataLoader(loaded.test_set, batch_size=int(loaded.located.cfg.data.eval_batch_size), shuffle=False)
    for x, y in loader:
        yield model_norm(loaded).apply(loaded.data.scale(x)), y


def predictions(logits: np.ndarray, seen: list[int] | None) -> np.ndarray:
    """Argmax over the classes the stage predicts among (a class-incremental stage: the seen ones)."""
    if seen is None:
        return logits.argmax(1)
    return np.asarray(seen)[logits[:, seen].argmax(1)]


def compare(loaded: StageModel, forward: Callable[[torch.Tensor], np.ndarray]) -> Comparison:
    """Logits of `forward` against the checkpoint's model on every test image, and both accuracies."""
    diff = scale = 0.0
    correct = reference_correct = n = 0
    seen = loaded.seen_classes
    with evaluating(loaded.model, torch.device("cpu")):  # on the CPU, where the exported file runs
        for x, y in labelled_test_images(loaded):
            reference = loaded.model(x).numpy()
            logits = forward(x)
            diff, scale = max(diff, float(np.abs(logits - reference).max())), max(scale, float(np.abs(reference).max()))
            correct += int((predictions(logits, seen) == y.numpy()).sum())
            reference_correct += int((predictions(reference, seen) == y.numpy()).sum())
            n += len(y)
    return Comparison(diff, scale, correct / n, reference_correct / n, n)


def comparison_json(c: Comparison) -> dict:
    return {"test_acc": c.test_acc, "test_examples": c.examples, "max_abs_logit_diff": c.max_abs_diff}


def calibration_images(loaded: StageModel, count: int = CALIBRATION_IMAGES) -> torch.Tensor:
    """`count` training images (a seeded choice, without augmentation), normalised as in training."""
    from kdcl.data.datamodule import unaugmented

    train = unaugmented(loaded.data.train_set)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(int(loaded.located.cfg.seed)))
    subset = Subset(train, order[:count].tolist())
    x = torch.cat([x for x, _ in DataLoader(subset, batch_size=count, shuffle=False)])
    return model_norm(loaded).apply(loaded.data.scale(x))


def timm_recipe(loaded: StageModel) -> dict:
    """How plain timm rebuilds the model from the safetensors file. The overlay's num_classes and
    input_size keep timm's pretrained loader from dropping the classifier or converting the first conv
    (it does both when they differ from the architecture's ImageNet defaults); mean, std, crop_pct and
    interpolation make `timm.data.resolve_data_config` give the preprocessing kdcl trained with."""
    from kdcl.models.factory import timm_kwargs

    hp, norm = loaded.located.hparams, model_norm(loaded)
    size = int(loaded.located.cfg.data.image_size)
    kwargs = timm_kwargs(hp["model"]["name"], hp["num_classes"], hp["in_chans"], size)
    overlay = {"num_classes": hp["num_classes"], "input_size": [hp["in_chans"], size, size],
               "mean": list(norm.mean), "std": list(norm.std), "crop_pct": 1.0, "interpolation": "bilinear"}  # fmt: skip
    return {"name": hp["model"]["name"], "kwargs": kwargs, "pretrained_cfg_overlay": overlay}


def load_with_timm(recipe: dict, file: Path) -> torch.nn.Module:
    """The model exactly as a user loads it with plain timm from the export and its sidecar."""
    import timm

    overlay = {**recipe["pretrained_cfg_overlay"], "file": str(file)}
    model = timm.create_model(recipe["name"], pretrained=True, pretrained_cfg_overlay=overlay, **recipe["kwargs"])
    return model.eval()


def write_safetensors(loaded: StageModel, tmp: Path) -> dict:
    """model.safetensors, loaded back with plain timm and compared with the checkpoint's model."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in loaded.model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    recipe = timm_recipe(loaded)
    reloaded = load_with_timm(recipe, tmp / "model.safetensors")

    def forward(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return reloaded(x).numpy()

    result = compare(loaded, forward)
    if result.max_abs_diff > TIMM_TOLERANCE * max(1.0, result.max_abs_logit):
        raise KdclError(f"timm.create_model loads the export differently from the checkpoint (logits differ by "
                        f"{result.max_abs_diff:.2g}); {recipe['name']} cannot be exported to safetensors as is")  # fmt: skip
    return {"file": "model.safetensors", "size_bytes": (tmp / "model.safetensors").stat().st_size,
            "timm": recipe, "verified": comparison_json(result)}  # fmt: skip


def latency_batches_of(loaded: StageModel) -> list[int]:
    """The run's latency.batches ([1, 64] when the run skipped latency)."""
    from kdcl.config.checks import latency_batches

    return latency_batches(loaded.located.cfg) or [1, 64]


def onnx_entry(loaded: StageModel, path: Path, result: Comparison) -> dict:
    """One ONNX file's sidecar entry: size, test accuracy and ONNX Runtime latency."""
    from kdcl.models.cost import onnx_latency

    size = int(loaded.located.cfg.data.image_size)
    latency = onnx_latency(path, loaded.data.in_chans, size, latency_batches_of(loaded))
    return {"file": path.name, "size_bytes": path.stat().st_size, "verified": comparison_json(result),
            "latency": {"runtime": latency.version, "threads": latency.threads,
                        "ms": {b: vars(t) for b, t in latency.ms.items()}}}  # fmt: skip


def write_onnx(loaded: StageModel, tmp: Path) -> dict:
    """model.onnx (dynamic batch axis), run in ONNX Runtime on every test image against PyTorch."""
    from kdcl.models.onnx_graph import INPUT, OUTPUT, export_onnx, run_session, session

    size = int(loaded.located.cfg.data.image_size)
    graph = export_onnx(loaded.model, loaded.data.in_chans, size)
    path = tmp / "model.onnx"
    path.write_bytes(graph.model)
    sess = session(path)
    result = compare(loaded, lambda x: run_session(sess, x))
    if result.max_abs_diff > ONNX_TOLERANCE * max(1.0, result.max_abs_logit):
        raise KdclError(f"ONNX Runtime's logits differ from PyTorch's by {result.max_abs_diff:.2g} on the test images "
                        f"(exporter: {graph.exporter}); this model does not export faithfully")  # fmt: skip
    entry = onnx_entry(loaded, path, result)
    return {**entry, "opset": graph.opset, "exporter": graph.exporter,
            "input": {"name": INPUT, "shape": ["batch", loaded.data.in_chans, size, size], "dtype": "float32"},
            "output": {"name": OUTPUT, "shape": ["batch", loaded.data.num_classes]}}  # fmt: skip


class CalibrationImages:
    """ONNX Runtime's CalibrationDataReader protocol: batches of normalised training images."""

    def __init__(self, images: torch.Tensor, batch: int = 32):
        from kdcl.models.onnx_graph import INPUT

        self.batches = iter([{INPUT: images[i : i + batch].numpy()} for i in range(0, len(images), batch)])

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def write_int8(loaded: StageModel, tmp: Path, fp32: dict) -> dict:
    """model.int8.onnx: ONNX Runtime's post-training static quantization, re-tested on the test set.

    ONNX Runtime's own tools rather than torchao: the int8 model is an ONNX graph the deployer runs in the
    same runtime as the fp32 one, calibrated on the exact graph. QDQ format (the one ONNX Runtime advises),
    weights int8 per channel, activations uint8 (MinMax): ONNX Runtime's x86 int8 kernels are u8s8, and
    s8s8 ran 5–7× slower than fp32 on our CPU; u8s8 about as fast as fp32 (see docs/benchmarks.md)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    from kdcl.models.onnx_graph import run_session, session

    prepared, path = tmp / ".model.prepared.onnx", tmp / "model.int8.onnx"
    quant_pre_process(str(tmp / fp32["file"]), str(prepared))  # shape inference + graph fusions first, as advised
    images = calibration_images(loaded)
    quantize_static(str(prepared), str(path), CalibrationImages(images), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
    prepared.unlink()
    sess = session(path)
    result = compare(loaded, lambda x: run_session(sess, x))
    entry = onnx_entry(loaded, path, result)
    return {**entry, "method": "onnxruntime.quantization.quantize_static: QDQ, int8 weights per channel, uint8 "
            "activations, MinMax calibration", "calibration_images": len(images),
            "acc_drop": fp32["verified"]["test_acc"] - result.test_acc,
            "size_ratio": fp32["size_bytes"] / entry["size_bytes"]}  # fmt: skip


def versions(fmt: str) -> dict:
    import timm

    found = {"kdcl": __version__, "torch": torch.__version__, "timm": timm.__version__}
    if fmt == "onnx":
        import onnx
        import onnxruntime

        found.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return found


def base_sidecar(loaded: StageModel, fmt: str) -> dict:
    """What any deployer needs, whatever the format."""
    located, source = loaded.located, loaded.data.load()
    hp, size = located.hparams, int(located.cfg.data.image_size)
    names = source.class_names or tuple(str(i) for i in range(hp["num_classes"]))
    return {
        "format": fmt,
        "timm_name": hp["model"]["name"],
        "num_classes": hp["num_classes"],
        "classes": list(names),
        "seen_classes": loaded.seen_classes,
        "in_chans": hp["in_chans"],
        "image_size": size,
        "mean": list(model_norm(loaded).mean),
        "std": list(model_norm(loaded).std),
        "normalisation": model_norm(loaded).source,  # data: the training images' statistics | pretrained: the weights'
        "preprocess": f"resize to {size}×{size} (bilinear), scale to [0, 1], subtract mean, divide by std; NCHW float32",
        "run": str(located.run_dir) if located.run_dir else None,
        "stage": located.stage,
        "checkpoint": str(located.checkpoint),
        "data": located.cfg.data.name,
        "run_test_acc": located.run_test_acc,
        "versions": versions(fmt),
    }


def export_model(req: ExportRequest) -> tuple[dict, Path]:
    """Check the request (format, run, stage, output) before loading any model, then write and verify every
    file; returns the sidecar and the output directory."""
    if req.format == "onnx":
        from kdcl.models.onnx_graph import require_onnx

        require_onnx("kdcl export format=onnx")
    located = locate(req.target, req.stage)
    out = output_dir(req, located)
    check_output(out, req.overwrite)
    loaded = load_stage(located)
    sidecar = base_sidecar(loaded, req.format)
    # the exported file takes normalised input, as timm models do (the sidecar's mean and std)
    with staging(out) as tmp, normalised_input(loaded.model):
        if req.format == "safetensors":
            sidecar["safetensors"] = write_safetensors(loaded, tmp)
        else:
            sidecar["onnx"] = write_onnx(loaded, tmp)
            if req.quantize:
                sidecar["int8"] = write_int8(loaded, tmp, sidecar["onnx"])
        sidecar["test_acc"] = sidecar[req.format]["verified"]["test_acc"]
        atomic_write_json(tmp / SIDECAR, sidecar)
    return sidecar, out
