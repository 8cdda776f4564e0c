"""`kdcl report`'s statistics (kdcl/reporting/stats.py) on the final model of each setting: mean, std and 95 % t
interval over seeds of its chosen (best-validation) and last-epoch checkpoints' test accuracy, and with
`baseline=KEY=VALUE` every setting against the baseline, paired by seed, Holm-corrected across settings — on
those two accuracies and on the learning-speed metrics (kdcl/reporting/speed.py), each metric its own family.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import yaml

from kdcl.common.errors import KdclError
from kdcl.config.upgrade import renamed
from kdcl.reporting.speed import SPEED_KEYS
from kdcl.reporting.stats import ALPHA, MAX_SEEDS, Paired, Spread, holm, paired, t_interval

CHECKPOINTS = {"chosen": "test_acc", "last": "test_acc_last"}  # which checkpoint → its key in summary.json
# every metric compared against the baseline → its key in summary.json: the two test accuracies, learning speed
PAIRED = {**CHECKPOINTS, **{key: key for key in SPEED_KEYS}}


@dataclass(frozen=True)
class Comparison:
    settings: str
    metric: str  # a key of PAIRED: chosen | last (test accuracy of that checkpoint) | val_auc | val_acc_at_P
    paired: Paired
    holm_p: float
    significant: bool  # Holm-adjusted paired t-test p < ALPHA

    def to_json(self) -> dict:
        return {**asdict(self), "paired": {**asdict(self.paired), "diff": asdict(self.paired.diff)}}


def by_seed(summaries: list[dict], stage: str, key: str) -> dict[int, float]:
    """{seed: the stage's `key` accuracy} over a group's runs (a seed run twice: the later run counts)."""
    out = {}
    for s in summaries:
        row = next((st for st in s["stages"] if st["name"] == stage), None)
        if row is not None and row.get(key) is not None:
            out[int(s["seed"])] = float(row[key])
    return out


def spreads(seeds: dict[str, dict[int, float]]) -> dict[str, Spread | None]:
    return {name: t_interval(list(values.values())) if values else None for name, values in seeds.items()}


def as_setting(override: str) -> tuple[str, object]:
    """KEY=VALUE as (key, value read as YAML): a sweep records `pipeline.plain=true` as Hydra writes it back,
    `pipeline.plain=True`, and `seed=01` is `seed=1`; the baseline a user types matches either."""
    key, _, value = override.partition("=")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    return key, parsed if isinstance(parsed, (str, int, float, bool, type(None))) else value


def baseline_row(rows: list[dict], baseline: str) -> dict:
    """The one setting whose overrides include every `KEY=VALUE` of `baseline` (space-separated)."""
    wanted = [renamed(w) or w for w in baseline.split()]  # an old key names the same setting (overrides_of)
    if not wanted or any("=" not in w for w in wanted):
        raise KdclError(f"baseline={baseline} must name a setting as KEY=VALUE, e.g. baseline=curriculum=none")
    matches = [r for r in rows if {as_setting(w) for w in wanted} <= {as_setting(o) for o in r["overrides"]}]
    if len(matches) == 1:
        return matches[0]
    listed = "; ".join(r["settings"] for r in rows)
    if not matches:
        raise KdclError(f"baseline={baseline} is not a setting of this sweep; its settings: {listed}")
    found = "; ".join(r["settings"] for r in matches)
    raise KdclError(f"baseline={baseline} matches {len(matches)} settings ({found}); name one, e.g. "
                    f"baseline='{matches[0]['settings']}'")  # fmt: skip


def compare(rows: list[dict], base: dict) -> list[Comparison]:
    """Every other setting against `base` on each metric of PAIRED that both have values of (runs recorded
    before a metric existed have none); Holm across settings, per metric."""
    out = []
    for metric in PAIRED:
        if not base["final_seeds"][metric]:
            continue
        others = [r for r in rows if r is not base and r["final_seeds"][metric]]
        tests = [paired(r["final_seeds"][metric], base["final_seeds"][metric]) for r in others]
        adjusted = holm([t.t_p for t in tests])
        for r, t, p in zip(others, tests, adjusted, strict=True):
            out.append(Comparison(r["settings"], metric, t, p, not math.isnan(p) and p < ALPHA))
    return out


# rendering -----------------------------------------------------------------------------------------
def pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def pvalue(p: float | None) -> str:
    return "-" if p is None or math.isnan(p) else (f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}")


def spread_cells(s: Spread | None) -> list[str]:
    if s is None:
        return ["-", "-"]
    return [f"{pct(s.mean)} ± {pct(s.std)}", f"[{pct(s.low)}, {pct(s.high)}]"]


SPREAD_HEADERS = ["settings", "final stage", "seeds", "chosen acc %", "chosen 95 % CI", "last acc %", "last 95 % CI"]


def spread_table(rows: list[dict]) -> list[list[str]]:
    return [[r["settings"], r["final_stage"], str(len(r["final_seeds"]["chosen"])),
             *spread_cells(r["final_spread"]["chosen"]), *spread_cells(r["final_spread"]["last"])] for r in rows]  # fmt: skip


COMPARE_HEADERS = ["settings", "metric", "seeds", "Δ acc pt [95 % CI]", "p t-test", "p sign", "p Wilcoxon", "p Holm",
                   "sig.", "seeds needed"]  # fmt: skip


def compare_table(comparisons: list[Comparison]) -> list[list[str]]:
    """One row per setting and metric; sign and Wilcoxon only from kdcl.reporting.stats.EXACT_TESTS_FROM paired seeds."""
    body = []
    for c in comparisons:
        d, needed = c.paired.diff, c.paired.seeds_needed
        seeds_text = str(needed) if needed is not None else ("no Δ" if d.mean == 0 else f">{MAX_SEEDS}")
        interval = f" [{100 * d.low:+.2f}, {100 * d.high:+.2f}]" if not math.isnan(d.low) else ""
        body.append([c.settings, c.metric, str(len(c.paired.seeds)), f"{100 * d.mean:+.2f}{interval}",
                     pvalue(c.paired.t_p), pvalue(c.paired.sign_p), pvalue(c.paired.wilcoxon_p), pvalue(c.holm_p),
                     "*" if c.significant else "", seeds_text])  # fmt: skip
    return body
