"""The GPU check (issue 27): kdcl's GPU path run end to end in under 10 minutes on one machine, as it is.

Steps, each a subprocess with its own time limit (a step that fails or runs out of time is recorded with
its last error line, and the next one runs):

  tests   the suite's GPU-marked tests (tests/gpu: a tiny run under bf16 + channels-last + compile, the
          views pass in bf16 against fp32)
  pair    `kdcl train trainer=gpu` (bf16-mixed, channels-last) with speed.compile=true on the default
          ResNet-18 → MobileNetV3 digits job: wall time, test accuracies from the run's summary.json
  views   the views pass of that run's teacher in bf16 and in fp32 on the same data and views: how far
          the bf16 store is from the fp32 store, against the tolerance below
  ddp     the same job under trainer=ddp on every GPU present (devices=1 with one GPU)
  bench   scripts/bench.py on the GPU: per-step time of KD from stored outputs over the student alone (c/a)
  fashion the default pair on Fashion-MNIST (data=fashion_mnist, trainer=gpu), when its files are here

Without a GPU it says so in one line, writes the JSON (status "no_gpu") and the table, and exits 0 before
any heavy work. Writes gpu_check.json, gpu_check.md and gpu_check.log (each step's log tail) into --out
(default $OUT, else outputs/gpu_check/<time>); the runs themselves go to --work. Exit status: 0 when no
step failed, 1 otherwise. Run it as scripts/gpu_check.sh, which picks the interpreter and sets PYTHONPATH:

    scripts/gpu_check.sh [--out DIR] [--work DIR] [--budget SECONDS] [--fashion-root DIR] [--wheels DIR]

This file imports nothing beyond the standard library at the top: the orchestration must start (and say
"no GPU") even where kdcl's dependencies are missing. `views_agreement` is also used by tests/gpu.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The bf16 views store against the fp32 store of the same teacher, data and views. bf16 keeps 8 significant
# bits: one rounding moves a value by at most 2^-9 (0.2 %) of it, and autocast rounds each layer's inputs and
# weights once (products accumulate in fp32), so the logits move by about a percent of their scale. Measured
# on a CPU (oneDNN's bf16 autocast, the same scheme), teachers trained on digits: a test_resnet (97.5 % test
# accuracy) over 2 586 views and a briefly trained ResNet-18 moved by at most 1.2 and 1.8 % of their largest
# |logit| (mean 0.2 %) and kept the fp32 class on 99.4 and 99.5 % of views, every other one a near-tie (top-2
# margin under 2·max |Δ|): a teacher that has learned passes 99 %, a half-trained one may not. 5 % leaves room
# for other kernels (cuDNN's; its fp32 reference itself runs convolutions in TF32), while a real fault (a wrong
# cast, a layer at the wrong precision) moves logits by tens of percent.
AGREEMENT_MIN = 0.99  # views whose bf16 argmax is the fp32 argmax
MAX_ABS_DIFF_REL = 0.05  # max |bf16 logit − fp32 logit| over every view and class, ÷ max |fp32 logit|
VIEWS_K = 8  # views per example (data.views' default)
KD_TEMPERATURE = 4.0  # the kd preset's: the KL the student is trained against is reported at it

# import name → the package to install, for the one-line "missing" message
PACKAGES = {"torch": "torch", "torchvision": "torchvision", "pytorch_lightning": "pytorch-lightning",
            "hydra": "hydra-core", "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime", "timm": "timm",
            "torchmetrics": "torchmetrics", "tensorboard": "tensorboard", "sklearn": "scikit-learn",
            "scipy": "scipy", "rich": "rich", "safetensors": "safetensors", "numpy": "numpy", "yaml": "pyyaml",
            "matplotlib": "matplotlib", "pytest": "pytest"}  # fmt: skip
KDCL_NEEDS = [name for name in PACKAGES if name != "pytest"]  # pyproject.toml's dependencies
FASHION_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")  # fmt: skip
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # as kdcl/data/sources.py looks
STEP_LIMIT_S = {"tests": 150, "pair": 180, "views": 40, "ddp": 70, "bench": 60, "fashion": 75}  # within --budget
MIN_STEP_S = 20  # a step left less than this by the budget is skipped, not started


@dataclass
class Step:
    name: str
    what: str
    status: str = "skipped"  # passed | failed (a time-out too: its error says so) | skipped
    wall_s: float | None = None
    command: list[str] | None = None
    log: str | None = None
    error: str | None = None  # why it failed or was skipped: one line
    limit_s: float | None = None  # its time limit: its own, or what the budget leaves
    result: dict = field(default_factory=dict)


@dataclass
class Context:
    python: str
    env: dict
    out: Path
    work: Path
    gpus: int
    missing: list[str]
    deadline: float
    fashion_root: Path | None
    steps: dict[str, Step] = field(default_factory=dict)


# -- running a step ------------------------------------------------------------------------------------------


def last_error_line(text: str) -> str:
    """The line that says what went wrong: the last one naming an error, else the last non-empty one."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"error|exception|traceback|killed|out of memory", line, re.I):
            return line[:300]
    return lines[-1][:300] if lines else "(no output)"


def run_logged(ctx: Context, step: Step, cmd: list[str]) -> int | None:
    """Run `cmd` in the repo root with its output in the step's log; None when it ran out of time. Its own
    process group, killed whole on time-out: DDP ranks and compile workers go with it."""
    log = ctx.work / "logs" / f"{step.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    step.command, step.log, limit = cmd, str(log), step.limit_s
    print(f"gpu_check: {step.name}: {step.what} (limit {limit:.0f} s)", flush=True)
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ctx.env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            rc, text = proc.wait(timeout=limit), None
        except subprocess.TimeoutExpired:
            rc, text = None, log.read_text(errors="replace")  # before the kill: what it was doing
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # Lightning stops on SIGTERM ...
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # ... and what is left of the group goes (ranks, compile workers)
        proc.wait()
    step.wall_s = round(time.perf_counter() - start, 1)
    text = text or log.read_text(errors="replace")
    if rc is None:
        step.status, step.error = "failed", f"timed out after {limit:.0f} s; last line: {last_error_line(text)}"
    elif rc != 0:
        step.status, step.error = "failed", f"exit {rc}: {last_error_line(text)}"
    else:
        step.status = "passed"
    return rc


def time_left(ctx: Context, name: str) -> float | None:
    """The step's limit within what is left of the budget; None when too little is left to start it."""
    left = ctx.deadline - time.monotonic() - 5  # 5 s for writing the results
    limit = min(STEP_LIMIT_S[name], left)
    return limit if limit >= MIN_STEP_S else None


def kdcl_train(ctx: Context, step: Step, overrides: list[str]) -> None:
    """`python -m kdcl train` into a fresh run directory under --work; test accuracies from its summary.json.
    Latency is left out (it times the CPU, not the GPU) and the shared cache is the check's own."""
    run_dir = ctx.work / step.name
    cmd = [ctx.python, "-m", "kdcl", "train", *overrides, "progress_bar=lines", "latency.batches=[]",
           f"paths.output_dir={ctx.work}", f"hydra.run.dir={run_dir}"]  # fmt: skip
    if run_logged(ctx, step, cmd) == 0:
        step.result = run_accuracies(run_dir)


def run_accuracies(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    stages = {s["name"]: {"model": s["model"], "test_acc": s["test_acc"], "seconds": s.get("seconds")}
              for s in summary["stages"]}  # fmt: skip
    return {"run_dir": str(run_dir), "stages": stages}


# -- the steps -----------------------------------------------------------------------------------------------


def step_tests(ctx: Context, step: Step) -> None:
    cmd = [ctx.python, "-m", "pytest", "tests/gpu", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    run_logged(ctx, step, cmd)
    lines = Path(step.log).read_text().splitlines()
    counted = [line for line in lines if re.search(r"\d+ (passed|failed|skipped)", line)]
    last = counted[-1] if counted else ""  # pytest's closing line: "1 failed, 1 passed in 80.1s"
    counts = step.result = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", last)}
    if step.status == "passed" and (counts.get("skipped") or not counts.get("passed")):
        step.status, step.error = "failed", f"GPU tests skipped or not run: {counts}"  # CUDA unseen by pytest?


def step_pair(ctx: Context, step: Step) -> None:
    kdcl_train(ctx, step, ["trainer=gpu", "trainer.precision=bf16-mixed", "speed.channels_last=true",
                           "speed.compile=true"])  # fmt: skip


def step_views(ctx: Context, step: Step) -> None:
    pair = ctx.steps["pair"]
    if pair.status != "passed":
        step.error = "it reads the teacher the pair step trains, and that step did not pass"
        return
    measured = ctx.work / "views.json"
    cmd = [ctx.python, str(ROOT / "scripts" / "gpu_check.py"), "--views-of", pair.result["run_dir"],
           "--views-out", str(measured)]  # fmt: skip
    if run_logged(ctx, step, cmd) == 0:
        step.result = json.loads(measured.read_text())
        if not step.result["within_tolerance"]:
            step.status, step.error = "failed", f"bf16 store outside the tolerance: {views_text(step.result)}"


def step_ddp(ctx: Context, step: Step) -> None:
    kdcl_train(ctx, step, ["trainer=ddp", f"trainer.devices={ctx.gpus}"])
    step.result["devices"] = ctx.gpus


def step_bench(ctx: Context, step: Step) -> None:
    out = ctx.work / "bench"
    cmd = [ctx.python, "scripts/bench.py", "--teacher", "resnet18", "--student", "mobilenetv3_small_100",
           "--size", "28", "--batch", "128", "--precision", "bf16-mixed", "--channels-last", "--warmup", "5",
           "--steps", "30", "--rounds", "2", "--out", str(out)]  # fmt: skip
    if run_logged(ctx, step, cmd) == 0:
        bench = json.loads(next(out.glob("bench-*.json")).read_text())
        ms = {k: round(v["median_ms"], 2) for k, v in bench.items() if isinstance(v, dict) and "median_ms" in v}
        step.result = {"ratios": {k: round(v, 3) for k, v in bench["ratios"].items()}, "median_ms": ms}


def fashion_files(ctx: Context) -> tuple[Path | None, list[Path]]:
    """The folder holding the four Fashion-MNIST idx files (plain or .gz), looked for where kdcl looks
    with data.root unset (or --fashion-root), and every folder looked in."""
    data_dir = Path(os.environ.get("KDCL_DATA_DIR", "data"))
    data_dir = data_dir if data_dir.is_absolute() else ROOT / data_dir  # kdcl runs in the repo root
    folders = [ctx.fashion_root] if ctx.fashion_root else [DEBIAN_FASHION_MNIST, data_dir / "FashionMNIST" / "raw"]
    for folder in folders:
        if all((folder / s).is_file() or (folder / f"{s}.gz").is_file() for s in FASHION_STEMS):
            return folder, folders
    return None, folders


def step_fashion(ctx: Context, step: Step) -> None:
    folder, looked = fashion_files(ctx)
    if folder is None:
        step.error = f"no Fashion-MNIST files under {' or '.join(str(p) for p in looked)}"
        return
    root = [f"data.root={folder}"] if ctx.fashion_root else []  # else kdcl finds them where we did
    kdcl_train(ctx, step, ["data=fashion_mnist", "data.download=false", *root, "trainer=gpu"])
    step.result["data_dir"] = str(folder)


STEPS = [  # name, what, the packages it needs, how it runs
    ("tests", "the suite's GPU-marked tests (pytest tests/gpu -m gpu)", [*KDCL_NEEDS, "pytest"], step_tests),
    ("pair", "resnet18 → mobilenetv3_small_100 on digits, bf16-mixed + channels-last + compile", KDCL_NEEDS,
     step_pair),
    ("views", f"views pass (K={VIEWS_K}) of the pair's teacher: bf16 store vs fp32 store", KDCL_NEEDS, step_views),
    ("ddp", "the default pair under trainer=ddp on every GPU", KDCL_NEEDS, step_ddp),
    ("bench", "per-step time, KD from stored outputs ÷ student alone (scripts/bench.py)", KDCL_NEEDS, step_bench),
    ("fashion", "the default pair on Fashion-MNIST (10 % of train, 3 epochs), trainer=gpu", KDCL_NEEDS, step_fashion),
]  # fmt: skip


# -- the views measurement (--views-of; tests/gpu imports it) ------------------------------------------------


def views_agreement(teacher, dataset, normalize, k: int = VIEWS_K, batch: int = 512) -> dict:
    """kdcl's views pass (kdcl.teachers.views.view_pass) of one teacher over `dataset` (uint8 images), once in
    bf16 and once in fp32 on the same drawn views: how far the stores are apart, and whether within the
    tolerance above. The crops are padded as data.augment pads them: an eighth of the image side."""
    import dataclasses

    import torch.nn.functional as F

    from kdcl.teachers.views import ViewSpec, draw_views, view_pass

    pad = max(1, dataset[0][0].shape[-1] // 8)
    spec = ViewSpec(k=k, seed=0, pad=pad, hflip=False, topk=None, bf16=False, plain=False)
    params = draw_views(len(dataset), spec)
    fp32 = view_pass(teacher, dataset, params, normalize, batch, spec)["logits"]
    bf16 = view_pass(teacher, dataset, params, normalize, batch, dataclasses.replace(spec, bf16=True))["logits"]
    a, b = fp32.float().flatten(0, 1), bf16.float().flatten(0, 1)  # (views, classes)
    diff = (a - b).abs()
    scale = a.abs().max().item()
    top2 = a.topk(2, -1).values
    disagree = a.argmax(-1) != b.argmax(-1)
    temp = KD_TEMPERATURE
    kl = F.kl_div(F.log_softmax(b / temp, -1), F.log_softmax(a / temp, -1), log_target=True, reduction="batchmean")
    result = {
        "views": a.shape[0],
        "classes": a.shape[1],
        "bf16_store_dtype": str(bf16.dtype).removeprefix("torch."),  # bfloat16: autocast took effect
        "argmax_agreement": 1 - disagree.float().mean().item(),
        "disagreements_at_near_ties": int((disagree & (top2[:, 0] - top2[:, 1] <= 2 * diff.max())).sum()),
        "max_abs_diff": diff.max().item(),
        "mean_abs_diff": diff.mean().item(),
        "max_abs_logit_fp32": scale,
        "max_abs_diff_rel": diff.max().item() / scale if scale > 0 else math.inf,
        f"kl_T{temp:g}": kl.item(),
        "tolerance": {"argmax_agreement_min": AGREEMENT_MIN, "max_abs_diff_rel_max": MAX_ABS_DIFF_REL},
    }
    result["within_tolerance"] = bool(
        result["bf16_store_dtype"] == "bfloat16"
        and result["argmax_agreement"] >= AGREEMENT_MIN
        and result["max_abs_diff_rel"] <= MAX_ABS_DIFF_REL
    )
    return result


def measure_views(run_dir: Path, out: Path) -> None:
    """--views-of: the run's teacher stage, rebuilt from its checkpoint, on the run's training examples."""
    import torch

    from kdcl.deploy.locate import load_stage, locate

    stage = load_stage(locate(str(run_dir), "teacher"))
    model = stage.model
    if stage.located.cfg.speed.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)  # as the run held it
    result = views_agreement(model, stage.data.train_set, stage.data.scale)
    out.write_text(json.dumps(result, indent=2))
    print(views_text(result))


# -- reporting -----------------------------------------------------------------------------------------------


def views_text(r: dict) -> str:
    return (f"argmax agreement {100 * r['argmax_agreement']:.2f} % (≥ {100 * AGREEMENT_MIN:g} %), max |Δlogit| "
            f"{r['max_abs_diff']:.3g} = {100 * r['max_abs_diff_rel']:.2f} % of max |logit| (≤ {100 * MAX_ABS_DIFF_REL:g} %), "
            f"mean |Δ| {r['mean_abs_diff']:.2g}, KL(T={KD_TEMPERATURE:g}) {r[f'kl_T{KD_TEMPERATURE:g}']:.2g}, "
            f"{r['views']} views, store {r['bf16_store_dtype']}")  # fmt: skip


def result_text(step: Step) -> str:
    """The table's result cell."""
    r = step.result
    if step.status != "passed" and step.error:
        return step.error.replace("|", "\\|")
    if "stages" in r:
        accs = ", ".join(f"{name} ({s['model']}) {100 * s['test_acc']:.2f} %" for name, s in r["stages"].items())
        return f"test acc: {accs}" + (f"; {r['devices']} GPU(s)" if "devices" in r else "")
    if "ratios" in r:
        ratios = r["ratios"]
        return f"c/a = {ratios['c/a']:.3f}, b/a = {ratios['b/a']:.3f}, c/d = {ratios['c/d']:.3f}"
    if "argmax_agreement" in r:
        return views_text(r).replace("|", "\\|")
    return ", ".join(f"{n} {k}" for k, n in r.items()) or "-"


def markdown(report: dict, steps: list[Step]) -> str:
    dev = report["device"]
    gpu = (f"{dev['name']} × {dev['count']} ({dev['memory_gb']} GB) · bf16 {'yes' if dev['bf16'] else 'no'}"
           if dev.get("name") else "no GPU")  # fmt: skip
    lines = [f"# kdcl GPU check, {report['started']}", "",
             f"{gpu} · torch {report.get('torch') or '-'} (CUDA {dev.get('cuda') or '-'}) · python {report['python']} · "
             f"commit {report.get('commit') or '-'}", ""]  # fmt: skip
    if report["status"] == "no_gpu":
        return "\n".join([*lines, f"**No GPU**: {report['reason']}. Nothing was checked.", ""])
    lines += ["| step | what | status | wall s | result |", "|---|---|---|---|---|"]
    for s in steps:
        wall = "-" if s.wall_s is None else f"{s.wall_s:.1f}"
        lines.append(f"| {s.name} | {s.what} | {s.status} | {wall} | {result_text(s)} |")
    total = f"{report['total_s']:.0f} s in all (budget {report['budget_s']:.0f} s)"
    lines += ["", f"status: **{report['status']}**, {total}"]
    if report.get("missing"):
        lines.append(f"missing packages: {', '.join(report['missing'])}")
    return "\n".join([*lines, ""])


def write_results(out: Path, report: dict, steps: list[Step]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    report = {**report, "steps": [asdict(s) for s in steps]}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    table = markdown(report, steps)
    (out / "gpu_check.md").write_text(table)
    tails = []  # the logs' ends, beside the table: the run directories (--work) may not outlive the machine
    for s in steps:
        if s.log and Path(s.log).is_file():
            tail = Path(s.log).read_text(errors="replace").splitlines()[-80:]
            tails.append(f"===== {s.name}: {s.status} ({s.log})\n" + "\n".join(tail))
    if tails:
        (out / "gpu_check.log").write_text("\n\n".join(tails) + "\n")
    return table


# -- set-up --------------------------------------------------------------------------------------------------


def probe() -> dict:
    """torch and the GPUs, in this process (the orchestration needs no more of torch than this)."""
    try:
        import torch
    except Exception as exc:  # no torch, or a broken one: nothing on a GPU can run
        return {"torch": None, "reason": f"torch not importable: {type(exc).__name__}: {exc}"}
    info = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if not torch.cuda.is_available():
        return {**info, "reason": f"torch {torch.__version__}, CUDA not available"}
    count = torch.cuda.device_count()
    return {**info, "count": count, "name": torch.cuda.get_device_name(0), "bf16": torch.cuda.is_bf16_supported(),
            "memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)}  # fmt: skip


def missing_packages(python: str, env: dict) -> list[str]:
    """The packages (of PACKAGES) the step interpreter cannot find, by pip name. find_spec imports nothing."""
    code = "import importlib.util as u, json, sys; print(json.dumps([m for m in sys.argv[1:] if not u.find_spec(m)]))"
    proc = subprocess.run([python, "-c", code, *PACKAGES], env=env, capture_output=True, text=True, timeout=60)
    return [PACKAGES[m] for m in json.loads(proc.stdout)] if proc.returncode == 0 else list(PACKAGES.values())


def install_wheels(ctx: Context, wheels: Path) -> None:
    """Packages missing here can travel as wheels (a machine with no internet): install every wheel in
    `wheels` into a folder of --work, put first on the steps' PYTHONPATH."""
    found = sorted(wheels.glob("*.whl"))
    if not ctx.missing or not found:
        return
    site = ctx.work / "site"
    cmd = [ctx.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target", str(site),
           *map(str, found)]  # fmt: skip
    if subprocess.run(cmd, env=ctx.env, capture_output=True, timeout=120).returncode == 0:
        ctx.env["PYTHONPATH"] = os.pathsep.join([str(site), ctx.env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        print(f"gpu_check: installed {len(found)} wheel(s) from {wheels} into {site}", flush=True)
        ctx.missing = missing_packages(ctx.python, ctx.env)


def git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None  # a copy of the tree without git
    return (head + ("+changes" if dirty else "")) or None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="results: gpu_check.json, .md, .log (default $OUT, else "
                        "outputs/gpu_check/<time>)")  # fmt: skip
    parser.add_argument("--work", type=Path, help="the runs and full logs (default <out>/runs; with $OUT, a "
                        "folder under /tmp, so that $OUT holds only the results)")  # fmt: skip
    parser.add_argument("--budget", type=float, default=570.0, help="seconds for all steps together")
    parser.add_argument("--fashion-root", type=Path, help="a folder with the Fashion-MNIST idx files")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="wheels to install missing packages from")
    parser.add_argument("--views-of", type=Path, help=argparse.SUPPRESS)  # internal: the views step's subprocess
    parser.add_argument("--views-out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.views_of:
        measure_views(args.views_of, args.views_out)
        return 0
    started, stamp = time.monotonic(), datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = args.out or Path(os.environ.get("OUT") or ROOT / "outputs" / "gpu_check" / stamp)
    default_work = Path("/tmp") / f"kdcl_gpu_check-{stamp}" if os.environ.get("OUT") else out / "runs"
    report = {"started": datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
              "executable": sys.executable, "commit": git_commit(), "budget_s": args.budget}  # fmt: skip
    device = probe()
    report.update(torch=device.pop("torch"), device=device)
    if "reason" in device:  # no GPU: say so and stop, before any heavy work
        print(f"gpu_check: no GPU ({device['reason']}): nothing to check", flush=True)
        report.update(status="no_gpu", reason=device.pop("reason"), total_s=round(time.monotonic() - started, 1))
        write_results(out, report, [])
        print(f"gpu_check: wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
        return 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ctx = Context(sys.executable, env, out, (args.work or default_work).resolve(), device["count"], [],
                  started + args.budget, args.fashion_root)  # fmt: skip
    ctx.work.mkdir(parents=True, exist_ok=True)
    ctx.missing = missing_packages(ctx.python, ctx.env)
    install_wheels(ctx, args.wheels)
    if ctx.missing:
        print(f"gpu_check: missing packages: {', '.join(ctx.missing)}; skipping the steps that need them (install them, "
              f"or put their wheels in {args.wheels})", flush=True)  # fmt: skip
    print(f"gpu_check: {device['name']} × {device['count']}, torch {report['torch']}; runs in {ctx.work}", flush=True)
    for name, what, needs, run in STEPS:
        step = ctx.steps[name] = Step(name, what)
        lacking = [PACKAGES[m] for m in needs if PACKAGES[m] in ctx.missing]
        if lacking:
            step.error = f"missing {', '.join(lacking)}"
        elif (limit := time_left(ctx, name)) is None:
            step.error = f"under {MIN_STEP_S} s of the {args.budget:.0f} s budget left"
        else:
            step.limit_s = round(limit)
            try:
                run(ctx, step)
            except Exception as exc:  # reading a step's results: recorded like a failed step, the next one runs
                step.status, step.error = "failed", f"{type(exc).__name__}: {exc}"[:300]
        print(f"gpu_check: {name}: {step.status}{f' ({step.wall_s} s)' if step.wall_s else ''}"
              f"{f': {step.error}' if step.error else ''}", flush=True)  # fmt: skip
    steps = list(ctx.steps.values())
    failed = [s.name for s in steps if s.status == "failed"]
    skipped = [s.name for s in steps if s.status == "skipped"]
    status = "failed" if failed else "incomplete" if skipped else "ok"  # incomplete: missing files, packages, time
    report.update(status=status, failed=failed, skipped=skipped, missing=ctx.missing, work=str(ctx.work),
                  total_s=round(time.monotonic() - started, 1))  # fmt: skip
    print(write_results(out, report, steps))
    print(f"gpu_check: wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
