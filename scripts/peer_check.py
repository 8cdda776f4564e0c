"""kdcl end to end against torchdistill (the peer) and a hand-written loop (the floor), one job at a time.

The job (issue 28's table): a ResNet-50 teacher given as a checkpoint, distilled into a ResNet-18 on
Fashion-MNIST at 28 px for 3 epochs, no augmentation, batch 128, AdamW; 10 000 training images, 6 000
validation images checked after every epoch, the 10 000 official test images at the end for teacher and
student. Every variant is a fresh process timed from outside, from its start to its exit:

  peer            torchdistill's DistillationBox with its KDLoss (T = 4; its α weighs the hard-label term: 0.1,
                  kdcl's ce weight), its training loop as in its examples/torchvision/image_classification.py,
                  which also saves the student (with optimizer and scheduler) whenever validation improves;
                  run with --peer-python (an environment that has torchdistill: not a kdcl dependency)
  floor           a hand-written PyTorch loop training the student on hard labels (no teacher at all)
  kdcl first      `kdcl train … distill.teacher_outputs=auto` with an empty shared cache
  kdcl second     the same command again: the shared cache holds the given teacher's outputs and test
  kdcl online     `distill.teacher_outputs=online` (the teacher runs on every batch, as the peer's does)

The peer and the floor read the same images as in-memory tensors (no per-image decoding), so the loader
costs them what it costs kdcl. The teacher is trained here once (1 epoch, the floor's loop) and written as a
plain state dict that both kdcl (`teacher.checkpoint=`) and the peer load.

    python scripts/peer_check.py all OUT --peer-python /path/to/env-with-torchdistill/bin/python
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

FMNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
TRAIN, VAL, EPOCHS, BATCH, EVAL_BATCH, LR, SEED = 10_000, 6_000, 3, 128, 512, 6e-3, 0
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's training-set statistics
TEACHER, STUDENT = "resnet50", "resnet18"


def idx(name: str) -> np.ndarray:
    """One idx file of Fashion-MNIST (the format's 4-byte magic, sizes, then raw bytes)."""
    raw = gzip.open(FMNIST / name).read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def tensors(images: str, labels: str, rows: slice) -> TensorDataset:
    x = torch.from_numpy(idx(images)[rows].astype(np.float32) / 255.0).unsqueeze(1)
    return TensorDataset((x - MEAN) / STD, torch.from_numpy(idx(labels)[rows].astype(np.int64)))


def splits() -> dict[str, TensorDataset]:
    """The first 10 000 training images to train on, the last 6 000 to validate on, the official test set."""
    return {"train": tensors("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", slice(0, TRAIN)),
            "val": tensors("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", slice(-VAL, None)),
            "test": tensors("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", slice(None))}  # fmt: skip


def model(name: str) -> nn.Module:
    return timm.create_model(name, num_classes=10, in_chans=1)


@torch.inference_mode()
def accuracy(net: nn.Module, data: TensorDataset) -> float:
    net.eval()
    hits = sum(int((net(x).argmax(1) == y).sum()) for x, y in DataLoader(data, EVAL_BATCH))
    net.train()
    return hits / len(data)


def hand_loop(net: nn.Module, data: dict, epochs: int) -> list[float]:
    """The floor: the student on hard labels, AdamW + one-cycle, validation after each epoch; epoch seconds."""
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=0.05)
    loader = DataLoader(data["train"], BATCH, shuffle=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, LR, total_steps=epochs * len(loader), pct_start=0.15)
    seconds = []
    for epoch in range(epochs):
        start = time.perf_counter()
        for x, y in loader:
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch}: val acc {accuracy(net, data['val']):.4f}", flush=True)
        seconds.append(time.perf_counter() - start)
    return seconds


def prepare(out: Path) -> Path:
    """The teacher every variant is given: ResNet-50 trained 1 epoch by the floor's loop, a plain state dict."""
    path = out / f"teacher_{TEACHER}.pth"
    if not path.is_file():
        torch.manual_seed(SEED)
        net, data = model(TEACHER), splits()
        hand_loop(net, data, 1)
        print(f"teacher test acc {accuracy(net, data['test']):.4f}", flush=True)
        torch.save(net.state_dict(), path)
    return path


def floor(out: Path) -> dict:
    torch.manual_seed(SEED)
    data = splits()
    net = model(STUDENT)
    epochs = hand_loop(net, data, EPOCHS)
    return {"epochs": epochs, "student_test_acc": accuracy(net, data["test"])}


def peer_config() -> dict:
    """torchdistill's train config for online KD, as its sample configs write it (KDLoss, T = 4; α = 0.1 weighs
    cross-entropy and 1 − α the KL term, as kdcl's distill=kd weighs ce 0.1 and kd 0.9)."""
    loader = {"class_or_func": torch.utils.data.RandomSampler, "kwargs": {}}
    sequential = {"class_or_func": torch.utils.data.SequentialSampler, "kwargs": {}}
    kd = {"criterion": {"key": "KDLoss", "kwargs": {"student_module_path": ".", "student_module_io": "output",
                                                     "teacher_module_path": ".", "teacher_module_io": "output",
                                                     "temperature": 4.0, "alpha": 0.1, "reduction": "batchmean"}},
          "weight": 1.0}  # fmt: skip
    return {
        "log_freq": 1000, "num_epochs": EPOCHS,
        "train_data_loader": {"dataset_id": "train", "sampler": loader, "kwargs": {"batch_size": BATCH}},
        "val_data_loader": {"dataset_id": "val", "sampler": sequential, "kwargs": {"batch_size": EVAL_BATCH}},
        "teacher": {"forward_proc": "forward_batch_only", "sequential": [], "requires_grad": False,
                    "frozen_modules": []},
        "student": {"forward_proc": "forward_batch_only", "adaptations": None, "sequential": [],
                    "requires_grad": True, "frozen_modules": []},
        "optimizer": {"key": "AdamW", "kwargs": {"lr": LR, "weight_decay": 0.05}},
        "scheduler": {"key": "OneCycleLR", "kwargs": {"max_lr": LR, "total_steps": EPOCHS * (TRAIN // BATCH + 1),
                                                       "pct_start": 0.15}, "scheduling_step": 1},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": kd}}},
    }  # fmt: skip


def peer(out: Path, teacher_path: Path) -> dict:
    """torchdistill's DistillationBox and its example's epoch loop (forward_process, post_forward_process)."""
    from torchdistill.common.main_util import load_ckpt, save_ckpt, set_seed
    from torchdistill.core.distillation import get_distillation_box

    set_seed(SEED)
    data = splits()
    teacher, student = model(TEACHER), model(STUDENT)
    teacher.load_state_dict(torch.load(teacher_path, weights_only=True))
    box = get_distillation_box(teacher, student, data, peer_config(), torch.device("cpu"), None, False, 1)
    seconds, best = [], 0.0
    for epoch in range(box.num_epochs):
        start = time.perf_counter()
        box.pre_epoch_process(epoch=epoch)
        for x, y, supp in box.train_data_loader:
            box.post_forward_process(loss=box.forward_process(x, y, supp))
        val = accuracy(box.student_model, data["val"])
        print(f"epoch {epoch}: val acc {val:.4f}", flush=True)
        if val > best:  # as its example does: the student, optimizer and scheduler whenever validation improves
            best = val
            save_ckpt(box.student_model, box.optimizer, box.lr_scheduler, best, None, str(out / "peer_student.pt"))
        box.post_epoch_process()
        seconds.append(time.perf_counter() - start)
    load_ckpt(str(out / "peer_student.pt"), model=student, strict=True)  # its example tests the best epoch's student
    return {"epochs": seconds, "teacher_test_acc": accuracy(teacher, data["test"]),
            "student_test_acc": accuracy(student, data["test"])}  # fmt: skip


def kdcl_command(teacher_path: Path, run_dir: Path, cache: Path, mode: str) -> list[str]:
    fraction = (TRAIN - 0.5) / 54_000  # kdcl keeps ceil(fraction × the 54 000 left after its 6 000 validation images)
    return [str(Path(sys.executable).parent / "kdcl"), "train", "data=fashion_mnist", "data.image_size=28",
            f"data.fraction={fraction:.9f}", f"data.batch_size={BATCH}", f"data.eval_batch_size={EVAL_BATCH}",
            f"teacher={TEACHER}", f"teacher.checkpoint={teacher_path}", f"student={STUDENT}",
            f"trainer.max_epochs={EPOCHS}", f"distill.teacher_outputs={mode}", f"seed={SEED}",
            f"paths.cache_dir={cache}", f"hydra.run.dir={run_dir}", "progress_bar=lines"]  # fmt: skip


def timed(command: list[str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as f:
        subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def kdcl_row(run_dir: Path, wall: float) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    timing = summary["timing"]
    student = timing["stages"]["student"]
    return {"wall": wall, "training": student["train"], "fixed": wall - student["train"], "timing": timing,
            "student_test_acc": summary["stages"][-1]["test_acc"]}  # fmt: skip


def run_all(out: Path, peer_python: str) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    teacher_path = prepare(out)
    rows, script = [], str(Path(__file__).resolve())
    for name, command in [("torchdistill 1.1.5, online KD", [peer_python, script, "peer", str(out)]),
                          ("hand-written loop, no KD (floor)", [sys.executable, script, "floor", str(out)])]:  # fmt: skip
        wall = timed(command, out / f"{name.split()[0]}.log")
        result = json.loads((out / f"{command[2]}.json").read_text())
        rows.append({"name": name, "wall": wall, "training": sum(result["epochs"]),
                     "fixed": wall - sum(result["epochs"]), **result})  # fmt: skip
    shutil.rmtree(out / "cache", ignore_errors=True)
    for name, mode, run in [("kdcl `auto`, first job", "auto", "kdcl-first"),
                            ("kdcl `auto`, second job (shared cache warm)", "auto", "kdcl-second"),
                            ("kdcl `online`", "online", "kdcl-online")]:  # fmt: skip
        shutil.rmtree(out / run, ignore_errors=True)
        wall = timed(kdcl_command(teacher_path, out / run, out / "cache", mode), out / f"{run}.log")
        rows.append({"name": name, **kdcl_row(out / run, wall)})
    return rows


def table(rows: list[dict]) -> str:
    peer_wall = rows[0]["wall"]
    lines = ["| | training (s) | whole process (s) | fixed cost (s) | ÷ peer | student test acc |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        acc = r.get("student_test_acc")
        lines.append(f"| {r['name']} | {r['training']:.1f} | {r['wall']:.1f} | {r['fixed']:.1f} | "
                     f"{r['wall'] / peer_wall:.2f} | {'' if acc is None else f'{100 * acc:.2f}'} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["all", "peer", "floor"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--peer-python", default="python", help="a Python that has torchdistill installed")
    args = parser.parse_args()
    if args.what == "peer":
        result = peer(args.out, args.out / f"teacher_{TEACHER}.pth")
    elif args.what == "floor":
        result = floor(args.out)
    if args.what != "all":
        (args.out / f"{args.what}.json").write_text(json.dumps(result))
        return
    rows = run_all(args.out, args.peer_python)
    (args.out / "peer_check.json").write_text(json.dumps(rows, indent=1))
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(table(rows))


if __name__ == "__main__":
    main()
