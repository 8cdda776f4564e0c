"""Each arm against its own control, paired by seed, from a `kdcl report` directory's report.json: the
difference in the final model's test accuracy (chosen checkpoint) and learning speed (val AUC, val@25/50 %),
with the 95 % t interval, the paired t-test's p and Holm's adjustment over the pairs (per metric), as kdcl
report computes them against one baseline (kdcl.reporting.stats). `kdcl report DIR baseline=...` compares every
setting with one baseline; an experiment whose arms each have a control of their own needs this.

    python scripts/arm_pairs.py SWEEP_DIR ARM=CONTROL [ARM=CONTROL ...]

ARM and CONTROL are sub-directories of SWEEP_DIR (one arm each: its runs over seeds), e.g.
`python scripts/arm_pairs.py fm25/b3 anchors=anchors_reverse anchors=anchors_shuffled takd=takd_labels`.
Run `kdcl report SWEEP_DIR` first. Prints two Markdown tables: each named arm's metrics (mean ± sample std over
its seeds, in the order the arms are first named), then the pairs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kdcl.reporting.compare import overrides_of
from kdcl.reporting.stats import holm, paired, t_interval

METRICS = {"chosen": "test acc", "val_auc": "val AUC", "val_acc_at_25": "val@25", "val_acc_at_50": "val@50"}
SPREAD = {"chosen": "test acc", "val_auc": "val AUC", "val_acc_at_25": "val@25", "val_acc_at_100": "val@100"}


def own(settings: str) -> set[str]:
    """A report row's overrides (`(defaults)`: the row that has none the others lack)."""
    return set() if settings == "(defaults)" else set(settings.split())


def seeds_by_arm(sweep: Path) -> dict[str, dict]:
    """arm directory -> its setting's per-seed metrics in report.json (settings keyed by their overrides)."""
    report = json.loads((sweep / "report.json").read_text())
    by_settings = {s["settings"]: s["seeds"] for s in report["settings"]}
    out = {}
    for arm in sorted(p for p in sweep.iterdir() if p.is_dir()):
        runs = [r.parent for r in arm.rglob("summary.json")]
        shared = set.intersection(*(set(overrides_of(r)) for r in runs)) if runs else set()
        match = [k for k in by_settings if own(k) <= shared]
        if runs and match:
            out[arm.name] = by_settings[max(match, key=lambda k: len(own(k)))]  # all of the arm's own overrides
    return out


def spread_table(arms: dict[str, dict], names: list[str]) -> None:
    """Each arm's metrics over its seeds: mean ± sample std, in %."""
    print("| arm | seeds | " + " | ".join(f"{label} %" for label in SPREAD.values()) + " |")
    print("|---|---:|" + "---:|" * len(SPREAD))
    for name in names:
        cells = []
        for m in SPREAD:
            values = [100 * v for v in arms[name][m].values() if v is not None]
            spread = t_interval(values) if len(values) > 1 else None  # as kdcl report spreads a setting
            cells.append(f"{spread.mean:.2f} ± {spread.std:.2f}" if spread else "-")
        print(f"| {name} | {len(arms[name]['chosen'])} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path)
    parser.add_argument("pairs", nargs="+", help="ARM=CONTROL")
    args = parser.parse_args()
    arms = seeds_by_arm(args.sweep)
    pairs = [tuple(p.split("=", 1)) for p in args.pairs]
    missing = sorted({a for pair in pairs for a in pair} - set(arms))
    if missing:
        raise SystemExit(f"no arm {', '.join(missing)} in {args.sweep} (arms: {', '.join(arms)})")
    spread_table(arms, list(dict.fromkeys(a for pair in pairs for a in pair)))
    print()
    rows = {m: [paired({int(k): v for k, v in arms[a][m].items()}, {int(k): v for k, v in arms[c][m].items()})
                for a, c in pairs] for m in METRICS}  # fmt: skip
    adjusted = {m: holm([r.t_p for r in rows[m]]) for m in METRICS}
    print("| arm | control | " + " | ".join(f"Δ {label} pt [95 % CI], Holm p" for label in METRICS.values()) + " |")
    print("|---|---|" + "---|" * len(METRICS))
    for i, (arm, control) in enumerate(pairs):
        cells = []
        for m in METRICS:
            d = rows[m][i].diff
            cells.append(f"{100 * d.mean:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}] p={adjusted[m][i]:.3f}")
        print(f"| {arm} | {control} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
