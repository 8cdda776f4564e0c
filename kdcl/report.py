"""Run summaries: summary.json, summary.md and the terminal table."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from kdcl.io import atomic_write_json, atomic_write_text

COLUMNS = ("stage", "model", "teachers", "params", "test acc", "epochs", "seconds")


def stage_row(s: dict) -> list[str]:
    return [
        s["name"],
        s["model"],
        ", ".join(s["teachers"]) or "-",
        f"{s['params'] / 1e6:.2f} M",
        f"{100 * s['test_acc']:.2f} %",
        str(s["epochs"]),
        f"{s['seconds']:.0f}",
    ]


def markdown_table(stages: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(stage_row(s)) + " |" for s in stages]
    return "\n".join(lines) + "\n"


def write_summary(cfg: DictConfig, run_dir: Path, stages: list[dict]) -> dict:
    summary = {
        "run_dir": str(run_dir),
        "pipeline": cfg.pipeline.name,
        "data": cfg.data.name,
        "seed": int(cfg.seed),
        "stages": [
            {
                k: s[k]
                for k in (
                    "name",
                    "model",
                    "params",
                    "test_acc",
                    "test_loss",
                    "best_val_acc",
                    "teachers",
                    "epochs",
                    "trained",
                    "checkpoint",
                    "seconds",
                )
            }  # fmt: skip
            for s in stages
        ],
    }
    atomic_write_json(run_dir / "summary.json", summary)
    title = f"# kdcl run: pipeline {summary['pipeline']} on {summary['data']} (seed {summary['seed']})\n\n"
    atomic_write_text(run_dir / "summary.md", title + markdown_table(stages))
    print_table(summary["stages"], f"pipeline {summary['pipeline']} · data {summary['data']} · seed {summary['seed']}")
    return summary


def print_table(stages: list[dict], title: str) -> None:
    table = Table(title=title)
    for c in COLUMNS:
        table.add_column(c, justify="right" if c in ("params", "test acc", "epochs", "seconds") else "left")
    for s in stages:
        table.add_row(*stage_row(s))
    Console(width=120).print(table)
