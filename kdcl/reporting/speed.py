"""Learning speed of a trained stage, from its validation-accuracy curve (one value per epoch).

- `val_acc_at_P` (P = 25, 50, 100): the validation accuracy after epoch k = floor(P % × E), E the stage's
  epochs (its budget). A fraction between two epochs is rounded down: the last epoch *not after* that share of
  the budget (25 % of 10 epochs = 2.5 → epoch 2). A fraction that falls before the first epoch ends (25 % of 1, 2
  or 3 epochs) takes epoch 1, the first point there is. Where epoch k was not validated (the stage stopped early,
  or validates every n epochs) the latest validated epoch before k counts; none: None.
- `val_auc`: the normalised area under the curve by the step rule: each epoch's accuracy held for that whole
  epoch, the area divided by the epochs validated, i.e. the mean of the curve. It lies in [0, 1] like an
  accuracy; a model that learns sooner has a larger one at the same final accuracy.

A stage that trained no epoch (a given checkpoint) or a run recorded before the curve was kept has None.
Pure functions of numbers; the stage's callback (kdcl/run/stage.py) collects the curve.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

FRACTIONS = (25, 50, 100)  # budget fractions, in %, of `val_acc_at_P`
SPEED_KEYS = ("val_auc", *(f"val_acc_at_{p}" for p in FRACTIONS))  # the scalar fields, in report order
CURVE_KEY = "val_curve"


def budget_epoch(percent: int, epochs: int) -> int:
    """The 1-based epoch that `percent` % of an `epochs`-epoch budget reaches: rounded down, at least 1."""
    return max(1, epochs * percent // 100)


@dataclass(frozen=True)
class LearningSpeed:
    """A stage's validation curve (accuracy after epoch 1, 2, …; None where an epoch was not validated)
    and the speed metrics derived from it (see the module's docstring)."""

    val_curve: list[float | None] = field(default_factory=list)
    val_auc: float | None = None
    val_acc_at_25: float | None = None
    val_acc_at_50: float | None = None
    val_acc_at_100: float | None = None

    @classmethod
    def from_curve(cls, curve: list[float | None], epochs: int | None = None) -> LearningSpeed:
        """`curve[e - 1]`: validation accuracy after epoch e; `epochs`: the stage's budget (default: the
        curve's length)."""
        curve = [None if v is None else float(v) for v in curve]
        seen = [v for v in curve if v is not None]
        if not seen:
            return cls(curve)
        budget = epochs if epochs else len(curve)
        at = {}
        for p in FRACTIONS:
            before = [v for v in curve[: budget_epoch(p, budget)] if v is not None]
            at[f"val_acc_at_{p}"] = before[-1] if before else None
        return cls(curve, sum(seen) / len(seen), **at)

    def to_json(self) -> dict:
        return asdict(self)


def curve_from_epochs(values: dict[int, float]) -> list[float | None]:
    """{0-based epoch: accuracy} as a curve up to the last validated epoch, None where one was not validated."""
    return [values.get(e) for e in range(max(values) + 1)] if values else []
