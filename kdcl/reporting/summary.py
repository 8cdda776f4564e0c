"""Run summaries: summary.json, summary.md and the terminal table.

For every model of the run: test accuracy, the validation curve and learning speed (kdcl/reporting/speed.py),
parameters, MACs, CPU latency in each measured runtime (ONNX Runtime, eager PyTorch), and against the pipeline's first model (the teacher): compression ratio,
accuracy gap and speed-up in `latency.speedup_runtime`. Class-incremental runs add accuracy on every
task seen so far and forgetting.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from kdcl.common.io import atomic_write_json, atomic_write_text
from kdcl.common.tables import markdown_table, print_table
from kdcl.reporting import card_metrics
from kdcl.reporting.card import card_headers, card_row, reliability_plot
from kdcl.reporting.speed import CURVE_KEY, SPEED_KEYS

SUMMARY_KEYS = ("name", "model", "params", "macs", "latency", "test_acc", "test_loss", "best_val_acc",
                "teachers", "init", "epochs", "trained", "checkpoint", "seconds", "teacher_store",
                "test_reused", CURVE_KEY, *SPEED_KEYS)  # fmt: skip
# only in the rows of the stages that have them: pipeline.order=matched; a mutual stage's peers (pipeline=dml)
OPTIONAL_KEYS = ("matched_temperature", "mutual", "peers")


def card_keys() -> tuple[str, ...]:
    """What each stage row copies from its report card: the last checkpoint's accuracy and the table's metrics."""
    return ("test_acc_last", *card_metrics.summary_keys())


def medians(stage: dict, runtime: str) -> dict[str, float]:
    """{batch: median ms} of a stage in one runtime ({} when not measured there)."""
    ms = ((stage.get("latency") or {}).get(runtime) or {}).get("ms") or {}
    return {b: t["median_ms"] for b, t in ms.items()}


def compression(stages: list[dict], speedup_runtime: str) -> list[dict]:
    """Each stage's summary entry, with its compression ratio, accuracy gap and speed-up (per batch size,
    in `speedup_runtime`) against the first model."""
    ref = stages[0]
    ref_ms = medians(ref, speedup_runtime)
    rows = []
    for s in stages:
        row = {k: s.get(k) for k in SUMMARY_KEYS} | {k: s[k] for k in OPTIONAL_KEYS if s.get(k) is not None}
        row["compression"] = ref["params"] / s["params"]
        row["acc_gap"] = s["test_acc"] - ref["test_acc"]  # negative: the model is less accurate than the reference
        row["speedup"] = {b: ref_ms[b] / ms for b, ms in medians(s, speedup_runtime).items() if b in ref_ms}
        rows.append(row)
    return rows


def runtimes_measured(rows: list[dict]) -> dict[str, dict]:
    """{runtime: {version, threads}} of the runtimes the run's latencies were measured in, in report order."""
    found: dict[str, dict] = {}
    for row in rows:
        for name, lat in (row.get("latency") or {}).items():
            if lat.get("ms") and name not in found:
                found[name] = {"version": lat.get("version"), "threads": lat.get("threads")}
    return {name: found[name] for name in sorted(found, key=lambda n: (n != "onnxruntime", n))}


def task_accuracy(per_class: dict, classes: list[int]) -> float:
    correct = sum(per_class["correct"][c] for c in classes)
    total = sum(per_class["total"][c] for c in classes)
    return correct / total if total else float("nan")


def incremental(stages: list[dict]) -> list[dict] | None:
    """Per class-incremental stage: accuracy on each task seen so far, on all of them, and forgetting
    (mean over old tasks of the best earlier accuracy minus the current one; Chaudhry et al. 2018)."""
    if not stages or not all(s.get("classes") for s in stages):
        return None
    tasks = [s["classes"] for s in stages]
    rows, history = [], []
    for k, s in enumerate(stages):
        accs = [task_accuracy(s["test_per_class"], t) for t in tasks[: k + 1]]
        history.append(accs)
        drops = [max(h[j] for h in history[j:k]) - accs[j] for j in range(k)]
        rows.append({
            "stage": s["name"],
            "task_acc": accs,
            "seen_acc": s["test_acc"],
            "forgetting": sum(drops) / len(drops) if drops else 0.0,
        })  # fmt: skip
    return rows


SHORT = {"onnxruntime": "ort", "eager": "eager"}


def fmt_ms(ms: float | None) -> str:
    """Milliseconds with two significant decimals below 1 ms (ONNX Runtime at batch 1), one above."""
    if ms is None:
        return "-"
    return f"{ms:.2f}" if ms < 1 else f"{ms:.1f}"


def latency_batches(rows: list[dict]) -> list[str]:
    batches = {b: None for row in rows for lat in (row.get("latency") or {}).values() for b in (lat.get("ms") or {})}
    return sorted(batches, key=int)


def columns(rows: list[dict], runtimes: list[str], speedup_runtime: str) -> list[str]:
    """One latency column per runtime and one speed-up column, each listing every batch size (a table that
    fits a terminal): `ort ms@1/64` holds "0.21 / 5.3"."""
    batches = "/".join(latency_batches(rows))
    lat = [f"{SHORT.get(r, r)} ms@{batches}" for r in runtimes]
    speed = [f"{SHORT.get(speedup_runtime, speedup_runtime)} speed-up@{batches}"] if batches else []
    return ["stage", "model", "teachers", "params", "MMACs", *lat, "test acc", "Δ acc", "compr.", *speed, "epochs", "s"]


def learned_from(row: dict) -> str:
    """The teachers column: the stage's teachers, or a mutual peer's fellow peers (↔: they taught each other)."""
    fellows = [p for p in row.get("peers") or () if p != row["name"]]
    return ", ".join(row["teachers"]) or (f"↔ {', '.join(fellows)}" if fellows else "-")


def stage_row(row: dict, batches: list[str], runtimes: list[str]) -> list[str]:
    macs = f"{row['macs'] / 1e6:.1f}" if row.get("macs") is not None else "-"
    speedup = row.get("speedup") or {}
    speed = [" / ".join(f"{speedup[b]:.1f}×" if b in speedup else "-" for b in batches)] if batches else []
    return [
        row["name"],
        row["model"],
        learned_from(row),
        f"{row['params'] / 1e6:.2f} M",
        macs,
        *(" / ".join(fmt_ms(medians(row, r).get(b)) for b in batches) for r in runtimes),
        f"{100 * row['test_acc']:.2f} %",
        f"{100 * row['acc_gap']:+.2f}",
        f"{row['compression']:.1f}×",
        *speed,
        str(row["epochs"]),
        f"{row['seconds']:.0f}",
    ]


def latency_note(measured: dict[str, dict], speedup_runtime: str) -> str:
    """What the latency columns are: runtimes with versions and threads, and what speed-up compares."""
    if not measured:
        return "latency: not measured (latency.batches=[])"
    parts = [f"{SHORT.get(r, r)} = {m['version']}, {m['threads']} threads" for r, m in measured.items()]
    return (f"latency: CPU, ms per batch (median after warm-up; spread in summary.json): {'; '.join(parts)}. "
            f"speed-up: the reference's latency / the model's, in {speedup_runtime}")  # fmt: skip


def incremental_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    n = len(rows)
    headers = ["stage", *(f"task {j + 1}" for j in range(n)), "seen classes", "forgetting"]
    body = [
        [
            r["stage"],
            *(f"{100 * a:.2f}" for a in r["task_acc"]),
            *("" for _ in range(n - len(r["task_acc"]))),
            f"{100 * r['seen_acc']:.2f}",
            f"{100 * r['forgetting']:.2f}",
        ]  # fmt: skip
        for r in rows
    ]
    return headers, body


def with_cards(rows: list[dict], cards: list[dict]) -> list[dict]:
    by_stage, keys = {c["stage"]: c for c in cards}, card_keys()
    return [{**r, **{k: by_stage[r["name"]][k] for k in keys}} if r["name"] in by_stage else r for r in rows]


def store_notes(rows: list[dict]) -> list[str]:
    """One line per stage that read stored teacher views: K, size on disk, the pass's time or reuse."""
    notes = []
    for r in rows:
        store = r.get("teacher_store")
        if store:
            files = ", ".join(e["file"] for e in store["stores"])
            how = f"built by this run, pass {store['pass_s']:.1f} s" if store["built"] else "reused (no pass)"
            notes.append(
                f"{r['name']}: teacher views K={store['views']}, {store['size_mb']:.2f} MB on disk ({files}), {how}"
            )
    return notes


def card_section(cards: list[dict], run_dir: Path) -> str:
    """The report card in summary.md (and on the terminal), with its reliability diagram."""
    reliability_plot(cards, run_dir / "reliability.png")
    headers, body = card_headers(), [card_row(c) for c in cards]
    print_table(headers, body, f"report card · test set · against {cards[0]['stage']}", left=headers[:1])
    return (f"\n## Report card (test set, against `{cards[0]['stage']}`)\n\n{card_metrics.notes()}. "
            "Chosen: the checkpoint tested and handed on (best validation accuracy unless `select: last`).\n\n"
            + markdown_table(headers, body) + "\n![reliability](reliability.png)\n")  # fmt: skip


def write_summary(cfg: DictConfig, run_dir: Path, stages: list[dict], cards: list[dict] | None = None) -> dict:
    speedup_runtime = str((cfg.get("latency") or {}).get("speedup_runtime") or "onnxruntime")
    rows = with_cards(compression(stages, speedup_runtime), cards or [])
    measured = runtimes_measured(rows)
    summary = {
        "run_dir": str(run_dir),
        "pipeline": cfg.pipeline.name,
        "data": cfg.data.name,
        "seed": int(cfg.seed),
        "reference": rows[0]["name"],
        "speedup_runtime": speedup_runtime,
        "latency_runtimes": measured,
        "stages": rows,
    }
    lifelong = incremental(stages)
    if lifelong:
        summary["incremental"] = lifelong
    if cards:
        summary["report_card"] = cards
    atomic_write_json(run_dir / "summary.json", summary)

    title = f"pipeline {summary['pipeline']} · data {summary['data']} · seed {summary['seed']}"
    batches, runtimes = latency_batches(rows), list(measured)
    headers, body = columns(rows, runtimes, speedup_runtime), [stage_row(r, batches, runtimes) for r in rows]
    note = latency_note(measured, speedup_runtime)
    text = f"# kdcl run: {title}\n\nΔ acc, compression and speed-up against `{rows[0]['name']}`; {note}.\n\n"
    text += markdown_table(headers, body)
    print_table(headers, body, title, left=("stage", "model", "teachers"))
    print(note, flush=True)
    for line in store_notes(rows):
        print(line, flush=True)
        text += f"\n{line}\n"
    if lifelong:
        inc_headers, inc_body = incremental_table(lifelong)
        text += "\n## Class-incremental accuracy (test, %)\n\n" + markdown_table(inc_headers, inc_body)
        print_table(inc_headers, inc_body, "accuracy on each task after each stage · forgetting", left=inc_headers[:3])
    if cards:
        text += card_section(cards, run_dir)
    atomic_write_text(run_dir / "summary.md", text)
    return summary
