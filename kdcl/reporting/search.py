"""`kdcl report` on a hyper-parameter search (hparams_search=..., Hydra's Optuna sweeper): the trials, the
best settings, each parameter's importance and the optimisation history, computed by Optuna itself.

The sweeper keeps its study in memory; the report rebuilds it from what every trial left in its own
directory (its overrides and its summary), with the search space the jobs recorded (.hydra/hydra.yaml),
parsed by the sweeper's own parser. Needs kdcl[search].
"""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import OmegaConf

from kdcl.common.errors import KdclError
from kdcl.common.io import atomic_write_json, atomic_write_text, read_json
from kdcl.common.tables import markdown_table, print_table
from kdcl.reporting.jobs import FAILURE, job_dirs, job_record, objective, sweep_jobs

HISTORY_PLOT = "search_history.png"
IMPORTANCE_PLOT = "search_importance.png"


def sweeper_config(root: Path):
    """The sweeper's settings as the sweep's jobs recorded them (<job>/.hydra/hydra.yaml), or None."""
    for hydra_file in sorted(Path(root).glob("*/.hydra/hydra.yaml")):
        return OmegaConf.load(hydra_file).hydra.sweeper
    return None


def is_search(root: Path) -> bool:
    """A sweep directory written by the Optuna sweeper (which also writes optimization_results.yaml)."""
    sweeper = sweeper_config(root) if (Path(root) / "optimization_results.yaml").is_file() else None
    return sweeper is not None and "optuna" in str(sweeper.get("_target_", "")).lower()


def search_space(sweeper) -> dict:
    """{key: optuna distribution} from the sweeper's `params`, parsed as the sweeper parses them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    lines = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides(lines)
    return {o.key_or_group: create_optuna_distribution_from_override(o) for o in parsed if o.is_sweep_override()}


def rebuild_study(root: Path):
    """An in-memory Optuna study holding every trial of the search in `root`, and the trials as records."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # add_trial, the plots
    from optuna.trial import TrialState, create_trial

    sweeper = sweeper_config(root)
    space = search_space(sweeper)
    study = optuna.create_study(
        direction=str(sweeper.get("direction", "maximize")).lower(), study_name=sweeper.get("study_name")
    )
    trials = []
    for record in sweep_jobs(root):
        job_dir = root / record["dir"]
        chosen = dict(o.split("=", 1) for o in record["overrides"] if o.split("=", 1)[0] in space)
        params = {k: float(v) for k, v in chosen.items()}
        value = objective(read_json(job_dir / "summary.json")) if record["status"] == "done" else None
        done = value is not None and not math.isnan(value)
        study.add_trial(create_trial(params=params, distributions={k: space[k] for k in params},
                                     value=value if done else None,
                                     state=TrialState.COMPLETE if done else TrialState.FAIL))  # fmt: skip
        trials.append({**record, "params": params, "val_acc": value if done else None})
    return study, trials


def importances(study) -> dict[str, float]:
    """Optuna's parameter importance. Mean decrease in impurity (a random forest over the trials):
    optuna 2.10, the release hydra-optuna-sweeper allows, computes fANOVA wrongly with numpy 2."""
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return {}
    evaluator = optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)
    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))


def plot_search(study, importance: dict[str, float], root: Path) -> None:
    """Optuna's optimisation history; the importances as bars (optuna 2.10's own bar plot needs an older
    matplotlib)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history

    from kdcl.common.io import atomic_write_bytes
    from kdcl.common.plots import saved_figure

    history = plot_optimization_history(study)
    history.set_ylabel("validation accuracy of the final model")
    image = io.BytesIO()
    history.figure.tight_layout()
    history.figure.savefig(image, format="png")
    plt.close(history.figure)
    atomic_write_bytes(root / HISTORY_PLOT, image.getvalue())
    with saved_figure(root / IMPORTANCE_PLOT, size=(6, 0.8 + 0.5 * max(1, len(importance)))) as ax:
        names = list(importance)[::-1]
        ax.barh(names, [importance[n] for n in names])
        ax.set_xlabel("importance (Optuna, mean decrease in impurity)")
        ax.set_title("which settings mattered")


def write_search_report(root: Path) -> dict:
    """Print and write (search.md, search.json, the two plots) what the search in `root` found."""
    try:
        study, trials = rebuild_study(Path(root))
    except ImportError:
        raise KdclError(
            "report on a search needs optuna and hydra-optuna-sweeper: pip install 'kdcl[search]'"
        ) from None
    done = [t for t in trials if t["val_acc"] is not None]
    if not done:
        raise KdclError(f"report: no trial of the search in '{root}' finished; see {root}/sweep.json for their errors")
    importance = importances(study)
    best = study.best_trial
    keys = sorted({k for t in trials for k in t["params"]})
    headers = ["trial", *keys, "val acc %", "status"]
    rows = [[str(t["job"]), *[f"{t['params'][k]:.4g}" if k in t["params"] else "-" for k in keys],
             f"{100 * t['val_acc']:.2f}" if t["val_acc"] is not None else "-",
             t["status"] + (f": {t['error'][:80]}" if t.get("error") else "")] for t in trials]  # fmt: skip
    print_table(headers, rows, f"search: {len(trials)} trials, {len(done)} finished · objective: validation accuracy",
                left=("status",))  # fmt: skip
    best_line = ", ".join(f"{k}={v:.4g}" for k, v in best.params.items())
    print(f"best: trial {best.number}, val acc {100 * best.value:.2f} %: {best_line}")
    if importance:
        print("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in importance.items()))
    plot_search(study, importance, Path(root))
    result = {"trials": trials, "best": {"trial": best.number, "val_acc": best.value, "params": best.params},
              "importance": importance}  # fmt: skip
    atomic_write_json(Path(root) / "search.json", result)
    md = [f"# kdcl search: {root}", "", "Objective: the final model's best validation accuracy (never the test set).",
          "", markdown_table(headers, rows), "", f"Best: trial {best.number}, val acc {100 * best.value:.2f} %: {best_line}",
          "", "Importance (Optuna, mean decrease in impurity): " + (", ".join(f"{k} {v:.2f}" for k, v in importance.items()) or "-"),
          "", f"![history]({HISTORY_PLOT}) ![importance]({IMPORTANCE_PLOT})", ""]  # fmt: skip
    atomic_write_text(Path(root) / "search.md", "\n".join(md))
    print(f"wrote {Path(root) / 'search.md'}, search.json, {HISTORY_PLOT}, {IMPORTANCE_PLOT}")
    return result


def failed_jobs(root: Path) -> list[dict]:
    """The jobs under `root`, at any depth, that recorded a failure."""
    return [job_record(d, root) for d in job_dirs(root) if (d / FAILURE).is_file()]
