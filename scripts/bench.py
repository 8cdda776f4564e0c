"""Step-time benchmark of distillation in kdcl, measured side by side in one process.

For one teacher → student pair at one resolution and batch size, on synthetic data of that shape:

  (a) the student alone on hard labels           (kdcl's LightningModule, Lightning Trainer)
  (b) KD with the teacher run on every batch     (kdcl, distill.teacher_outputs=online)
  (c) KD reading stored teacher outputs          (kdcl, distill.teacher_outputs=cached, every epoch
      after the first)
  (c1) the first epoch of (c): the teachers run on each batch and their outputs are stored
  (d) a hand-written PyTorch loop doing exactly (c)'s computation (same model, loss, optimizer,
      schedule and data loader) — what kdcl's machinery costs on top of the arithmetic
  plus one teacher pass over the data before training (what a teacher-scored curriculum runs, and
  what then fills the store), per example: the median of three passes.

With `--augment` (random crop with padding + flip, drawn on the device as kdcl's data.on_device does),
instead:

  (A) the student alone with that augmentation
  (B) KD with the teacher run on every augmented batch          (online)
  (V) KD replaying stored teacher views                          (distill.teacher_outputs=views):
      each example's view of the epoch rebuilt on the device from its stored parameters, the
      teacher's logits read, no teacher forward
  plus the views pass: the teacher on `--views` (K) views of every example, timed once; per epoch of
  `--epoch-examples` it is compared with the teacher's share of an online epoch (B − A), and the
  epochs after which it has paid for itself are (pass) / ((B − V) per epoch).

Each variant runs `--warmup` steps, then `--steps` timed steps (wall time from one batch start to the
next: data, forward, backward, optimizer, hooks, logging), `--rounds` times in a rotated order, and
reports the median over all timed steps. On a GPU the clock is read after torch.cuda.synchronize().
Prints a table with c/a, b/a, c/d and c1/b, the teacher's cost per epoch each way, and writes JSON.

    python scripts/bench.py --teacher resnet18 --student mobilenetv3_small_100 --size 28 --batch 128
    python scripts/bench.py --teacher resnet18 --student mobilenetv3_small_100 --augment --views 8
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import pytorch_lightning as pl
import timm
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Subset, TensorDataset

from kdcl.data.datamodule import random_crop_flip
from kdcl.losses import DistillLoss
from kdcl.losses.functional import ce_loss, kd_loss
from kdcl.models.predictions import dataset_logits
from kdcl.teachers.outputs import TeacherOutputs
from kdcl.teachers.views import TeacherViews, TeacherViewStore, ViewSpec, draw_views, view_pass
from kdcl.training.module import DistillationModule
from kdcl.training.optim import build_optimizer

KD_TERMS = {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}}  # the kd preset
OPTIM = OmegaConf.create({"name": "adamw", "lr": 3e-3, "weight_decay": 0.05, "scheduler": "onecycle", "warmup": 0.15})


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory_mb() -> float | None:
    """GPU: peak allocated since the last reset. CPU: None — the process's peak resident set only
    grows, so it cannot be told apart per variant (reported once for the whole run)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return None


class StepTimer(pl.Callback):
    def __init__(self):
        self.times: list[float] = []
        self.last: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        sync()
        now = time.perf_counter()
        if self.last is not None:
            self.times.append(now - self.last)
        self.last = now


def make_model(name: str, args) -> torch.nn.Module:
    model = timm.create_model(name, num_classes=args.classes, in_chans=args.chans)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


class AugmentedBatches(pl.LightningDataModule):
    """Batches of (image, label, position) augmented on the device after transfer, as kdcl's datamodule
    does: random crops + flips (`views` None), or each example's stored view of the epoch (views)."""

    def __init__(self, data, batch: int, pad: int, views: TeacherViews | None = None):
        super().__init__()
        self.data, self.batch, self.pad, self.views = data, batch, pad, views

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch, shuffle=True, drop_last=True)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y, i = batch
        if self.views is not None:
            x, rows = self.views.replay(x, i, self.trainer.current_epoch)
            return x, y, rows
        return random_crop_flip(x, self.pad, True), y, i


def lightning_variant(args, data, teacher, outputs, terms, augment: bool = False) -> list[float]:
    torch.manual_seed(0)
    student = make_model(args.student, args)
    hparams = {"in_chans": args.chans, "image_size": args.size}
    teachers = [teacher] if teacher is not None else []
    module = DistillationModule(student, teachers, DistillLoss(terms), OPTIM, "bench", args.classes, hparams,
                                teacher_outputs=outputs)  # fmt: skip
    if args.compile:
        module.model = torch.compile(module.model)
        for t in module.teachers:
            t.model = torch.compile(t.model)
    timer = StepTimer()
    trainer = pl.Trainer(max_steps=args.warmup + args.steps + 1, accelerator="auto", devices=1, precision=args.precision,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0,
                         log_every_n_steps=10)  # fmt: skip
    if augment:
        views = outputs if isinstance(outputs, TeacherViews) else None
        trainer.fit(module, datamodule=AugmentedBatches(data, args.batch, max(1, args.size // 8), views))
    else:
        trainer.fit(module, DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True))
    return timer.times[args.warmup : args.warmup + args.steps]


def plain_loop(args, data, cached) -> list[float]:
    """(c) by hand: student forward, 0.1·CE + 0.9·KD on the stored logits, backward, AdamW, one-cycle."""
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    student = make_model(args.student, args).to(device).train()
    if args.compile:
        student = torch.compile(student)
    steps = args.warmup + args.steps + 1
    opt_cfg = build_optimizer([p for p in student.parameters()], OPTIM, steps, "lr")
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    cached = cached.to(device)
    dtype = torch.bfloat16 if args.precision.startswith("bf16") else None
    times, last = [], None
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True)
    for step, (x, y, i) in enumerate(loader):
        sync()
        now = time.perf_counter()
        if last is not None:
            times.append(now - last)
        last = now
        if step >= steps:
            break
        x, y, i = x.to(device, non_blocking=True), y.to(device, non_blocking=True), i.to(device)
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None):
            logits = student(x)
            loss = 0.1 * ce_loss(logits, y) + 0.9 * kd_loss(logits, cached[0, i], 4.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return times[args.warmup : args.warmup + args.steps]


def setup(args) -> dict:
    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"cpu ({platform.processor() or platform.machine()})"
    )
    return {**vars(args), "out": str(args.out), "device": device, "threads": torch.get_num_threads(),
            "torch": torch.__version__}  # fmt: skip


def run_rotated(args, variants: dict) -> tuple[dict, dict]:
    """Every variant `--rounds` times in a rotated order: (timed steps, peak GPU memory) per variant."""
    names, times, peaks = list(variants), {k: [] for k in variants}, dict.fromkeys(variants, 0.0)
    for r in range(args.rounds):  # a rotated order each round: drift of a shared machine hits every variant
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            got = variants[name]()
            times[name] += got
            peak = peak_memory_mb()
            peaks[name] = None if peak is None else max(peaks[name], peak)
            print(f"round {r + 1}: {name:>24} {1000 * statistics.median(got):8.1f} ms/step", flush=True)
    return times, peaks


def augmented(args, data, x, y, teacher, results: dict) -> None:
    """--augment: (A) student alone, (B) online KD, (V) stored views, all with crop + flip; the views pass."""
    n = len(y)
    spec = ViewSpec(args.views, 0, max(1, args.size // 8), True, None, args.precision.startswith("bf16"), False)
    sync()
    start = time.perf_counter()
    stored = view_pass(teacher, TensorDataset(x, y), draw_views(n, spec), lambda t: t, 512, spec)
    sync()
    pass_s = time.perf_counter() - start
    results["views_pass_ms_per_example"] = 1000 * pass_s / n  # all K views of one example

    def views() -> TeacherViews:
        return TeacherViews([TeacherViewStore(None, stored, args.classes)], spec)

    variants = {
        "A_student_alone_aug": lambda: lightning_variant(args, data, None, None, {"ce": {"weight": 1.0}}, True),
        "B_kd_online_aug": lambda: lightning_variant(args, data, teacher, None, KD_TERMS, True),
        "V_kd_views_aug": lambda: lightning_variant(args, data, teacher, views(), KD_TERMS, True),
    }
    times, peaks = run_rotated(args, variants)
    for name in variants:
        results[name] = {"median_ms": 1000 * statistics.median(times[name]), "steps": len(times[name]),
                         "peak_memory_mb": peaks[name] and round(peaks[name], 1)}  # fmt: skip
    a, b, v = (results[k]["median_ms"] for k in variants)
    steps_per_epoch = args.epoch_examples / args.batch
    share = (b - a) * steps_per_epoch / 1000
    views_pass = results["views_pass_ms_per_example"] * args.epoch_examples / 1000
    saved = (b - v) * steps_per_epoch / 1000
    results["ratios"] = {"V/A": v / a, "B/A": b / a}
    results["per_epoch_s"] = {"teacher_share_of_online_kd (B-A)": share, "views_pass": views_pass,
                              "views_pass / (K x share)": views_pass / (args.views * share) if share > 0 else None,
                              "saved_per_epoch (B-V)": saved,
                              "epochs_to_pay_off": views_pass / saved if saved > 0 else None}  # fmt: skip
    results["setup"] = setup(args)
    print(f"\n{args.teacher} → {args.student}, {args.size}x{args.size}x{args.chans}, batch {args.batch}, crop + flip, "
          f"K={args.views}, {args.precision} on {results['setup']['device']}")  # fmt: skip
    print("| variant | ms/step |\n|---|---|")
    for k in variants:
        print(f"| {k} | {results[k]['median_ms']:.1f} |")
    e = results["per_epoch_s"]
    print(f"\nV/A = {v / a:.3f} (target ≤ 1.10)   B/A = {b / a:.3f}")
    print(f"per epoch of {args.epoch_examples} examples: teacher's share of online KD (B-A) {share:.1f} s; views pass "
          f"(K={args.views}) {views_pass:.1f} s = {e['views_pass / (K x share)'] or float('nan'):.2f} × K × share; "
          f"saved per epoch (B-V) {saved:.1f} s; pays off after {e['epochs_to_pay_off'] or float('nan'):.1f} epochs")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    path = (
        args.out
        / f"bench-views-{args.teacher}-{args.student}-{args.size}-{args.batch}-K{args.views}-{args.precision}.json"
    )
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="resnet18")
    parser.add_argument("--student", default="mobilenetv3_small_100")
    parser.add_argument("--size", type=int, default=28, help="image side (Fashion-MNIST's native 28)")
    parser.add_argument("--chans", type=int, default=1)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128, help="kdcl's default for Fashion-MNIST")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every variant, in a rotated order")
    parser.add_argument(
        "--epoch-examples", type=int, default=54000, help="examples per epoch (Fashion-MNIST's train part)"
    )
    parser.add_argument("--precision", default="32-true", help="Lightning precision, e.g. bf16-mixed on a GPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile student and teacher")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument("--augment", action="store_true", help="crop + flip on the device: student, online KD, views")
    parser.add_argument("--views", type=int, default=8, help="--augment: stored views per example (K)")
    args = parser.parse_args()

    n = args.batch * (args.warmup + args.steps + 2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, args.chans, args.size, args.size, generator=g)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.classes, (n,), generator=g)
    data = TensorDataset(x, y, torch.arange(n))  # (image, label, position), as kdcl's cached batches

    torch.manual_seed(1)
    teacher = make_model(args.teacher, args).eval().requires_grad_(False)
    results: dict = {}
    teacher = teacher.to("cuda" if torch.cuda.is_available() else "cpu")
    if args.augment:
        return augmented(args, data, x, y, teacher, results)
    dataset_logits(teacher, Subset(TensorDataset(x, y), range(min(512, n))), lambda t: t, batch_size=512)  # warm-up
    pass_s = []
    for _ in range(3):
        sync()
        start = time.perf_counter()
        cached = dataset_logits(teacher, TensorDataset(x, y), lambda t: t, batch_size=512)[None]
        sync()
        pass_s.append(time.perf_counter() - start)
    results["teacher_pass_ms_per_example"] = 1000 * statistics.median(pass_s) / n

    def stored() -> TeacherOutputs:
        return TeacherOutputs(n, logits=cached.clone(), filled=torch.ones(n, dtype=torch.bool))

    variants = {
        "a_student_alone": lambda: lightning_variant(args, data, None, None, {"ce": {"weight": 1.0}}),
        "b_kd_online": lambda: lightning_variant(args, data, teacher, None, KD_TERMS),
        "c1_kd_cached_first_epoch": lambda: lightning_variant(args, data, teacher, TeacherOutputs(n), KD_TERMS),
        "c_kd_cached": lambda: lightning_variant(args, data, teacher, stored(), KD_TERMS),
        "d_plain_pytorch_cached": lambda: plain_loop(args, data, cached),
    }
    times, peaks = run_rotated(args, variants)
    for name in variants:
        results[name] = {"median_ms": 1000 * statistics.median(times[name]), "steps": len(times[name]),
                         "peak_memory_mb": peaks[name] and round(peaks[name], 1)}  # fmt: skip
    results["process_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    a, b, c1, c, d = (results[k]["median_ms"] for k in variants)
    steps_per_epoch = args.epoch_examples / args.batch
    results["ratios"] = {"c/a": c / a, "b/a": b / a, "c/d": c / d, "c1/b": c1 / b}
    results["per_epoch_s"] = {
        "teacher_share_of_online_kd (b-a)": (b - a) * steps_per_epoch / 1000,
        "storing_in_the_first_epoch (c1-a)": (c1 - a) * steps_per_epoch / 1000,
        "teacher_pass": results["teacher_pass_ms_per_example"] * args.epoch_examples / 1000,
    }
    results["setup"] = setup(args)
    print()
    print(f"{args.teacher} → {args.student}, {args.size}x{args.size}x{args.chans}, batch {args.batch}, "
          f"{args.precision}{', compiled' if args.compile else ''} on {results['setup']['device']}")  # fmt: skip
    print("| variant | ms/step | peak memory (MB) |\n|---|---|---|")
    for k in variants:
        peak = results[k]["peak_memory_mb"]
        print(f"| {k} | {results[k]['median_ms']:.1f} | {'-' if peak is None else f'{peak:.0f}'} |")
    print(f"process peak resident memory: {results['process_peak_rss_mb']:.0f} MB")
    r = results["ratios"]
    print(f"\nc/a = {r['c/a']:.3f} (target ≤ 1.10)   b/a = {r['b/a']:.3f}   c/d = {r['c/d']:.3f} (target ≤ 1.05)   "
          f"c1/b = {r['c1/b']:.3f}")  # fmt: skip
    e = results["per_epoch_s"]
    print(f"per epoch of {args.epoch_examples} examples, the teacher's share of online KD (b-a): "
          f"{e['teacher_share_of_online_kd (b-a)']:.1f} s; storing its outputs in the first epoch (c1-a): "
          f"{e['storing_in_the_first_epoch (c1-a)']:.1f} s; one pass before training: {e['teacher_pass']:.1f} s")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{args.teacher}-{args.student}-{args.size}-{args.batch}-{args.precision}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
