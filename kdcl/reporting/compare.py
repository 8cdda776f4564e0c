"""`kdcl report DIR [baseline=KEY=VALUE]`: compare the runs under DIR (a multirun sweep, or any folder of runs).

Jobs are grouped by their Hydra overrides without the seed, so `-m distill=kd,none seed=0,1,2` gives
two groups of three; each stage's test accuracy is averaged over the group (mean ± sample std), and the
final model's latency and speed-up against the first (in each run's `latency.speedup_runtime`) are the
median over the group's runs. The final model's chosen and last-epoch accuracy get 95 % intervals, and
with a baseline paired tests (kdcl/reporting/compare_stats.py); so do its learning-speed metrics (validation
accuracy at 25/50/100 % of the epochs, area under the validation curve: kdcl/reporting/speed.py). Writes
report.csv, report.md, report.json, report.png (final-stage accuracy against parameters) and report_curves.png
(the final model's validation curve over all its stages per setting: mean and min–max over seeds) into DIR.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path
from textwrap import fill

import yaml

from kdcl.common.errors import KdclError
from kdcl.common.io import atomic_write_json, atomic_write_text
from kdcl.common.plots import saved_figure
from kdcl.common.tables import markdown_table, print_table
from kdcl.config.upgrade import renamed
from kdcl.reporting.compare_stats import (
    CHECKPOINTS,
    COMPARE_HEADERS,
    PAIRED,
    SPREAD_HEADERS,
    Comparison,
    baseline_row,
    by_seed,
    compare,
    compare_table,
    spread_table,
    spreads,
)
from kdcl.reporting.speed import CURVE_KEY, FRACTIONS, SPEED_KEYS, LearningSpeed
from kdcl.reporting.summary import fmt_ms, medians

NOT_A_SETTING = ("seed=", "hydra.", "progress_bar=", "trainer.progress_bar=", "paths.", "name=", "resume=")


REPORT_NOTE = (
    "Test accuracy, mean ± std over runs. The final model's CPU latency (ms per batch) and speed-up "
    "against the first model: median over runs, in the runtime named (each run's latency.speedup_runtime). "
    "Learning speed of the final model, mean ± std over seeds: val AUC = the mean of its validation accuracy "
    "over the epochs (area under the per-epoch curve, step rule, over the number of epochs); val@P = validation "
    "accuracy after the last epoch not after P % of the stage's epochs (at least the first). `-`: not recorded "
    "(a run from before the curve was kept, or a stage that did not train)."
)
SPEED_HEADERS = {"val_auc": "val AUC %", **{f"val_acc_at_{p}": f"val@{p} %" for p in FRACTIONS}}


def find_runs(root: Path) -> list[Path]:
    return sorted((p.parent for p in root.rglob("summary.json")), key=lambda p: (len(p.parts), str(p)))


def overrides_of(run: Path) -> list[str]:
    path = run / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(path.read_text()) if path.is_file() else []
    except yaml.YAMLError:
        overrides = []
    if not isinstance(overrides, list):
        overrides = []
    overrides = [renamed(str(o)) or str(o) for o in overrides]  # a run from before a key moved groups with today's
    return sorted(o for o in overrides if not o.lstrip("+~").startswith(NOT_A_SETTING))


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def collect(root: Path) -> tuple[list[dict], list[str]]:
    """(one row per group: its settings, seeds, per-stage accuracy mean ± std; the settings all runs share)."""
    runs = find_runs(root)
    overrides = {run: overrides_of(run) for run in runs}
    shared = set.intersection(*(set(o) for o in overrides.values())) if len(runs) > 1 else set()
    groups: dict[str, list[dict]] = {}
    runs_of: dict[str, list[Path]] = {}
    for run in runs:  # settings every run shares say nothing about the differences: shown once, not per row
        key = " ".join(o for o in overrides[run] if o not in shared) or "(defaults)"
        groups.setdefault(key, []).append(json.loads((run / "summary.json").read_text()))
        runs_of.setdefault(key, []).append(run)
    common = [o for o in overrides[runs[0]] if o in shared] if runs else []
    rows = []
    for key, summaries in groups.items():
        stages = [s["name"] for s in summaries[0]["stages"]]
        row = {"settings": key, "runs": len(summaries), "seeds": sorted({s["seed"] for s in summaries})}
        for name in stages:
            accs = [next(st["test_acc"] for st in s["stages"] if st["name"] == name) for s in summaries
                    if any(st["name"] == name for st in s["stages"])]  # fmt: skip
            row[name] = mean_std(accs)
        final = summaries[0]["stages"][-1]
        row["final_stage"], row["final_model"], row["final_params"] = final["name"], final["model"], final["params"]
        row["stages"], row["overrides"] = stages, overrides[runs_of[key][0]]
        row.update(final_latency(summaries))
        row["final_seeds"] = {c: by_seed(summaries, final["name"], k) for c, k in CHECKPOINTS.items()}
        row["final_seeds"].update(chain_speed_by_seed(summaries, final["name"]))
        row["final_curves"] = {
            int(s["seed"]): curve_of(s, final["name"]) for s in summaries if curve_of(s, final["name"])
        }
        row["final_spread"] = spreads(row["final_seeds"])
        rows.append(row)
    return rows, common


def curve_of(summary: dict, stage: str) -> list[float | None]:
    """The validation curve of the stage's model over all its training in one run's summary: the curves of the
    stages it continued from (`init`: anchors, a fine-tune), then its own; [] for a run recorded before curves
    were kept. Its learning speed is then the model's over its whole student budget, not its last stage's."""
    rows, curve, name = {st["name"]: st for st in summary["stages"]}, [], stage
    while name in rows:  # `init` names an earlier stage: the walk ends
        own = list(rows[name].get(CURVE_KEY) or [])
        if curve:  # an earlier stage's epochs it did not validate (stopped early) keep the later stages' places
            own += [None] * (int(rows[name].get("epochs") or 0) - len(own))
        curve = own + curve
        name = rows[name].get("init")
    return curve if any(v is not None for v in curve) else []


def chain_budget(summary: dict, stage: str) -> int:
    """The epochs of the stage and of the stages it continued from (`init`)."""
    rows, epochs, name = {st["name"]: st for st in summary["stages"]}, 0, stage
    while name in rows:
        epochs += int(rows[name].get("epochs") or 0)
        name = rows[name].get("init")
    return epochs


def chain_speed_by_seed(summaries: list[dict], stage: str) -> dict[str, dict[int, float]]:
    """{speed key: {seed: value}} of the stage's model over its whole training (curve_of); a single stage's equal
    what the stage recorded."""
    out: dict[str, dict[int, float]] = {key: {} for key in SPEED_KEYS}
    for summary in summaries:
        curve = curve_of(summary, stage)
        if not curve:
            continue
        speed = LearningSpeed.from_curve(curve, chain_budget(summary, stage) or None).to_json()
        for key in SPEED_KEYS:
            if speed[key] is not None:
                out[key][int(summary["seed"])] = float(speed[key])
    return out


def speed_cell(row: dict, key: str) -> str:
    spread = row["final_spread"][key]
    return fmt((spread.mean, spread.std), spread.n) if spread is not None else "-"


def final_latency(summaries: list[dict]) -> dict:
    """The final model's latency (ms) and speed-up per batch size, median over runs, in the runtime the
    runs' speed-up used (runs written before ONNX Runtime was timed: none)."""
    runtime = summaries[0].get("speedup_runtime")
    finals = [s["stages"][-1] for s in summaries]
    ms = [medians(f, runtime) for f in finals] if runtime else []
    batches = sorted({b for m in ms for b in m}, key=int)
    return {
        "runtime": runtime or "-",
        "final_ms": {b: statistics.median(m[b] for m in ms if b in m) for b in batches},
        "speedup": {b: statistics.median(f["speedup"][b] for f in finals if b in (f.get("speedup") or {}))
                    for b in batches if any(b in (f.get("speedup") or {}) for f in finals)},
    }  # fmt: skip


def fmt(ms: tuple[float, float] | None, runs: int) -> str:
    if ms is None:
        return "-"
    return f"{100 * ms[0]:.2f} ± {100 * ms[1]:.2f}" if runs > 1 else f"{100 * ms[0]:.2f}"


def write_report(root: Path, baseline: str | None = None) -> list[dict]:
    root = Path(root)
    if not root.is_dir():
        raise KdclError(f"report: '{root}' is not a directory; give a run or multirun directory (outputs/multirun/...)")
    from kdcl.reporting.jobs import job_label
    from kdcl.reporting.search import failed_jobs, is_search, write_search_report

    if is_search(root):
        write_search_report(root)
    failed = failed_jobs(root)
    for job in failed:
        print(f"failed: job {job_label(job)} {' '.join(job['overrides'])}: {job['error']}")
    rows, common = collect(root)
    if not rows:
        raise KdclError(f"report: no finished runs (summary.json) under '{root}'; give a run or multirun directory")
    comparisons = compare(rows, baseline_row(rows, baseline)) if baseline else []
    stage_names = list(dict.fromkeys(n for r in rows for n in r["stages"]))
    batches = sorted({b for r in rows for b in r["final_ms"]}, key=int)
    header = ["settings", "runs", *[f"{n} acc %" for n in stage_names], "final model", "params (M)",
              *SPEED_HEADERS.values(), "runtime", *[f"ms@{b}" for b in batches],
              *[f"speed-up@{b}" for b in batches]]  # fmt: skip
    table_rows = [
        [
            r["settings"],
            str(r["runs"]),
            *[fmt(r.get(n), r["runs"]) for n in stage_names],
            r["final_model"],
            f"{r['final_params'] / 1e6:.2f}",
            *[speed_cell(r, k) for k in SPEED_HEADERS],
            r["runtime"],
            *[fmt_ms(r["final_ms"].get(b)) for b in batches],
            *[f"{r['speedup'][b]:.1f}×" if b in r["speedup"] else "-" for b in batches],
        ]  # fmt: skip
        for r in rows
    ]
    atomic_write_text(root / "report.csv", report_csv(rows, stage_names, batches))
    md = markdown_table(header, table_rows) + statistics_section(rows, comparisons, baseline)
    if failed:
        md += f"\n## Failed jobs ({len(failed)})\n\n" + "".join(
            f"- {job_label(j)} `{' '.join(j['overrides'])}`: {j['error']}\n" for j in failed
        )
    atomic_write_text(root / "report.md", f"# kdcl report: {root}\n\n{REPORT_NOTE}\n\n" + md)
    atomic_write_json(root / "report.json", report_json(rows, comparisons, baseline))
    plot(rows, root / "report.png")
    curves = curves_plot(rows, root / "report_curves.png")
    title = f"{len(rows)} groups · {sum(r['runs'] for r in rows)} runs · test accuracy (mean ± std)"
    print_table(header, table_rows, title, left=("settings", "final model"))
    print_table(SPREAD_HEADERS, spread_table(rows), "final model over seeds: mean ± std, 95 % t interval",
                left=SPREAD_HEADERS[:2])  # fmt: skip
    if comparisons:
        print_table(COMPARE_HEADERS, compare_table(comparisons), f"against baseline {baseline}, paired by seed",
                    left=COMPARE_HEADERS[:2])  # fmt: skip
    if common:
        print(f"settings of every run: {' '.join(common)}")
    print(
        f"wrote {root / 'report.md'}, report.csv, report.json, report.png" + (", report_curves.png" if curves else "")
    )
    return rows


def statistics_section(rows: list[dict], comparisons: list[Comparison], baseline: str | None) -> str:
    text = ("\n## Final model over seeds\n\nTest accuracy of the chosen (best-validation) and the last epoch's "
            "checkpoint: mean ± sample std, 95 % t interval of the mean.\n\n" + markdown_table(SPREAD_HEADERS, spread_table(rows)))  # fmt: skip
    if comparisons:
        text += (f"\n## Against the baseline `{baseline}`, paired by seed\n\nMetrics: `chosen`/`last`, the test "
                 "accuracy of that checkpoint; `val_auc`, `val_acc_at_P`, the learning speed (above). "
                 "Δ = setting − baseline (points) with "
                 "its 95 % t interval; paired t-test, and from 6 paired seeds the exact sign test and Wilcoxon's; "
                 "`*`: significant at 0.05 after Holm's correction across settings, per metric (paired t). Seeds needed: "
                 "how many a paired t-test needs for 80 % power at the observed Δ and spread.\n\n"
                 + markdown_table(COMPARE_HEADERS, compare_table(comparisons)))  # fmt: skip
    return text


def report_json(rows: list[dict], comparisons: list[Comparison], baseline: str | None) -> dict:
    settings = [{"settings": r["settings"], "final_stage": r["final_stage"],
                 "seeds": {c: {str(k): v for k, v in r["final_seeds"][c].items()} for c in PAIRED},
                 "curves": {str(k): v for k, v in r["final_curves"].items()},
                 "spread": {c: (s.__dict__ if s else None) for c, s in r["final_spread"].items()}} for r in rows]  # fmt: skip
    return {"baseline": baseline, "settings": settings, "comparisons": [c.to_json() for c in comparisons]}


def report_csv(rows: list[dict], stage_names: list[str], batches: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["settings", "runs", "seeds", *[f"{n}_{s}" for n in stage_names for s in ("acc_mean", "acc_std")],
                     "final_model", "final_params", *[f"final_{k}_{s}" for k in SPEED_KEYS for s in ("mean", "std")],
                     "runtime", *[f"final_ms_{b}" for b in batches],
                     *[f"speedup_{b}" for b in batches]])  # fmt: skip
    for r in rows:
        values = [v for n in stage_names for v in (r.get(n) or ("", ""))]
        latency = [r["final_ms"].get(b, "") for b in batches] + [r["speedup"].get(b, "") for b in batches]
        spreads_ = [r["final_spread"][k] for k in SPEED_KEYS]
        speed = [v for s in spreads_ for v in ((s.mean, s.std) if s is not None else ("", ""))]
        writer.writerow([r["settings"], r["runs"], " ".join(map(str, r["seeds"])), *values, r["final_model"],
                         r["final_params"], *speed, r["runtime"], *latency])  # fmt: skip
    return buf.getvalue()


def legend_label(settings: str) -> str:
    """A setting's whole name, wrapped: cut short, two settings that differ only at the end look alike."""
    return fill(settings, 42)


def outside_legend(ax) -> None:
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def plot(rows: list[dict], path: Path) -> None:
    with saved_figure(path, size=(9, 4.5)) as ax:
        for r in rows:
            mean, std = r[r["final_stage"]]
            ax.errorbar(r["final_params"] / 1e6, 100 * mean, yerr=100 * std, fmt="o", capsize=3,
                        label=legend_label(r["settings"]))  # fmt: skip
        ax.set(xlabel="parameters of the final model (M)", ylabel="test accuracy (%)", title="accuracy against size")
        outside_legend(ax)


def mean_curve(curves: list[list[float | None]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """(epochs 1.., mean, min, max) over the runs' curves, at each epoch that at least one run validated."""
    epochs, mean, low, high = [], [], [], []
    for e in range(max(len(c) for c in curves)):
        values = [c[e] for c in curves if e < len(c) and c[e] is not None]
        if values:
            epochs.append(e + 1)
            mean.append(statistics.fmean(values))
            low.append(min(values))
            high.append(max(values))
    return epochs, mean, low, high


def curves_plot(rows: list[dict], path: Path) -> bool:
    """The final model's validation accuracy (over all its stages) against epoch: one line per setting (mean over its seeds) and
    its min–max band; False, and nothing written, when no run recorded a curve."""
    drawn = [r for r in rows if r["final_curves"]]
    if not drawn:
        return False
    from matplotlib.ticker import MaxNLocator

    with saved_figure(path, size=(9, 4.5)) as ax:
        for i, r in enumerate(drawn):
            epochs, mean, low, high = mean_curve(list(r["final_curves"].values()))
            style = "-" if i < 10 else "--"  # past the ten colours of the cycle, the style tells lines apart
            (line,) = ax.plot(epochs, [100 * v for v in mean], style, marker="o", ms=3,
                              label=legend_label(r["settings"]))  # fmt: skip
            if len(r["final_curves"]) > 1:
                ax.fill_between(epochs, [100 * v for v in low], [100 * v for v in high], color=line.get_color(),
                                alpha=0.2, linewidth=0)  # fmt: skip
        ax.set(xlabel="epoch", ylabel="validation accuracy (%)",
               title="final model's learning curve (mean, min–max over seeds)")  # fmt: skip
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs
        outside_legend(ax)
    return True
