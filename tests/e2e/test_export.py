"""`kdcl export`: the student of the session's tiny run, alone, for plain timm and for ONNX Runtime.

The safetensors file is loaded in a subprocess that cannot import kdcl, the ONNX files are run with
onnxruntime directly; both are compared with the model `kdcl eval` rebuilds from the checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from kdcl.deploy.locate import load_stage, locate
from tests.conftest import summary_of

# Plain timm and the sidecar, nothing else: kdcl is made unimportable first.
TIMM_ONLY = """
import sys
sys.modules["kdcl"] = None
import json, numpy as np, timm, torch
side = json.load(open(sys.argv[1] + "/model.json"))
recipe = side["safetensors"]["timm"]
overlay = dict(recipe["pretrained_cfg_overlay"], file=sys.argv[1] + "/model.safetensors")
model = timm.create_model(side["timm_name"], pretrained=True, pretrained_cfg_overlay=overlay,
                          num_classes=side["num_classes"], in_chans=side["in_chans"]).eval()
config = timm.data.resolve_data_config({}, model=model)
with torch.inference_mode():
    np.save(sys.argv[3], model(torch.from_numpy(np.load(sys.argv[2]))).numpy())
print(json.dumps({"config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
                  "kdcl_loaded": any(m.startswith("kdcl") and sys.modules[m] for m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def student(tiny_run):
    """The model `kdcl eval` tests (its own loader), the run's test images normalised as the sidecar says, their
    labels."""
    loaded = load_stage(locate(str(tiny_run), None))
    batches = list(torch.utils.data.DataLoader(loaded.test_set, batch_size=512))
    images, y = torch.cat([loaded.data.scale(xb) for xb, _ in batches]), torch.cat([yb for _, yb in batches])
    with torch.inference_mode():
        logits = loaded.model(images).numpy()  # kdcl's model takes images in [0, 1] and normalises them itself
    source = loaded.data.load()  # the exports take input normalised by the sidecar's mean and std (the data's)
    x = (images - torch.tensor(source.mean).view(1, -1, 1, 1)) / torch.tensor(source.std).view(1, -1, 1, 1)
    return {"loaded": loaded, "x": x.numpy(), "y": y.numpy(), "logits": logits}


def student_acc(tiny_run) -> float:
    return next(s["test_acc"] for s in summary_of(tiny_run)["stages"] if s["name"] == "student")


def test_safetensors_export_loads_in_plain_timm_with_the_logits_of_kdcl_eval(tiny_run, student, tmp_path, kdcl_main):
    out = tmp_path / "st"
    result = kdcl_main(["export", str(tiny_run), "format=safetensors", f"out={out}"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    np.save(tmp_path / "x.npy", student["x"])
    proc = subprocess.run([sys.executable, "-c", TIMM_ONLY, str(out), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["kdcl_loaded"] is False
    timm_logits = np.load(tmp_path / "y.npy")
    assert np.abs(timm_logits - student["logits"]).max() <= 1e-5
    assert (timm_logits.argmax(1) == student["y"]).mean() == pytest.approx(student_acc(tiny_run))
    side = json.loads((out / "model.json").read_text())
    source = student["loaded"].data.load()
    assert side["timm_name"] == "test_efficientnet" and side["stage"] == "student" and side["run"] == str(tiny_run)
    size = int(student["loaded"].located.cfg.data.image_size)  # the size it was trained at (tests: 16)
    assert side["classes"] == [str(i) for i in range(10)] and (side["in_chans"], side["image_size"]) == (1, size)
    assert side["mean"] == pytest.approx(list(source.mean)) and side["std"] == pytest.approx(list(source.std))
    assert side["test_acc"] == pytest.approx(student_acc(tiny_run))
    # timm's own data config, from the sidecar's overlay, is the preprocessing kdcl trained with
    config = report["config"]
    assert config["input_size"] == [1, size, size] and config["mean"] == pytest.approx(list(source.mean))


def test_onnx_export_matches_pytorch_and_int8_is_retested(tiny_run, student, tmp_path, kdcl_main):
    import onnx
    import onnxruntime as ort

    out = tmp_path / "onnx"
    result = kdcl_main(["export", str(tiny_run), "format=onnx", "quantize=int8", f"out={out}"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.int8.onnx", "model.json", "model.onnx"]
    side = json.loads((out / "model.json").read_text())
    fp32 = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = fp32.run(None, {"input": student["x"]})[0]  # the whole test set: the batch axis is dynamic
    assert np.abs(fp32.run(None, {"input": student["x"][:1]})[0] - logits[:1]).max() <= 1e-4
    assert np.abs(logits - student["logits"]).max() <= 1e-4
    accuracy = (logits.argmax(1) == student["y"]).mean()
    assert accuracy == pytest.approx(student_acc(tiny_run)) and side["onnx"]["verified"]["test_acc"] == accuracy
    opset = next(o.version for o in onnx.load(str(out / "model.onnx")).opset_import if o.domain in ("", "ai.onnx"))
    assert side["onnx"]["opset"] == opset
    int8 = ort.InferenceSession(str(out / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    quantized = int8.run(None, {"input": student["x"]})[0]
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out / "model.int8.onnx")).graph.node)
    int8_acc = (quantized.argmax(1) == student["y"]).mean()
    q = side["int8"]
    assert q["verified"]["test_acc"] == pytest.approx(int8_acc) and q["acc_drop"] == pytest.approx(accuracy - int8_acc)
    assert q["size_bytes"] == (out / "model.int8.onnx").stat().st_size < (out / "model.onnx").stat().st_size
    assert set(q["latency"]["ms"]) == set(side["onnx"]["latency"]["ms"]) == {"1", "64"}
    assert all(t["median_ms"] > 0 and t["repeats"] >= 3 for t in q["latency"]["ms"].values())


def tree(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize(
    "case, message",
    [
        ("not a run", "is not a kdcl run directory"),
        ("unknown stage", "stage=techer is not a finished stage"),
        ("unknown format", "format=tflite is not an export format"),
        ("output exists", "already exists; choose another out=DIR or add overwrite=true"),
        ("overwrite a folder kdcl did not write", "is not a kdcl export"),
    ],
)
def test_bad_export_input_is_one_line_and_writes_nothing(tiny_run, tmp_path, kdcl_main, case, message):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    args = {
        "not a run": [str(tmp_path / "notes")],
        "unknown stage": [str(tiny_run), "stage=techer"],
        "unknown format": [str(tiny_run), "format=tflite"],
        "output exists": [str(tiny_run), f"out={tmp_path / 'notes'}"],
        "overwrite a folder kdcl did not write": [str(tiny_run), f"out={tmp_path / 'notes'}", "overwrite=true"],
    }[case]
    before = (tree(tiny_run), tree(tmp_path))
    result = kdcl_main(["export", *args, f"out={tmp_path / 'new'}"] if "out=" not in " ".join(args) else
                       ["export", *args], tmp_path)  # fmt: skip
    assert result.returncode == 2 and result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (tree(tiny_run), tree(tmp_path)) == before
