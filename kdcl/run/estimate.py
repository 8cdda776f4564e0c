"""Time and disk of one stage, estimated from what it will do (`StageWork`) and its models' measured steps
(kdcl.models.cost.StepTimes). Pure arithmetic: kdcl/run/preview.py gathers the inputs.

The time counts the stage's batches times the measured step of each model that runs on them; what no
step measures (a Trainer's set-up, the ONNX export that latency needs) is a constant measured on the
2-core VM of docs/benchmarks.md, so on another machine it is only the right order. The disk counts the
bytes of what the stage writes: checkpoints from the state dict and optimizer state, stores from their
shapes, logs from the steps they record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kdcl.data.datamodule import lone_last_batch
from kdcl.models.cost import StepTimes, latency_seconds
from kdcl.models.predictions import batch_limit

# constants measured on the 2-core AMD EPYC VM (docs/benchmarks.md, "Know before you run")
STAGE_SETUP_S = 1.5  # a stage's Trainer, loggers and callbacks, its metrics and records
EXPORT_FIRST_S = 4.0  # the first ONNX export of a process imports and warms the exporter
EXPORT_PER_MODULE_S = 0.05  # then each export takes about this per leaf module
REPORT_S = 3.0  # a job's summary, plots and trackers
CHECKPOINT_WRITE_BYTES_PER_S = 400e6  # torch.save through the atomic writer
CHECKPOINT_SAVES_PER_EPOCH = 1.5  # last.ckpt every epoch, best.ckpt in the epochs that improve (about half)
CHECKPOINT_EXTRA_BYTES = 30_000  # hyper-parameters (the whole config) and Lightning's records
LOG_BYTES_PER_STAGE = 20_000  # TensorBoard's hparams and epoch scalars, metrics.json
LOG_BYTES_PER_LOGGED_STEP = 400  # each logged step's scalars
REPORT_BYTES = 120_000  # the run's records, summary, report card and its plot
OPTIMIZER_STATES = {"adamw": 2, "sgd": 1}  # tensors per parameter (AdamW: two moments; SGD: momentum)


@dataclass(frozen=True)
class Counts:
    """The examples a stage sees and how they are batched."""

    train: int
    val: int
    test: int
    batch: int
    eval_batch: int
    limits: tuple  # trainer.limit_train_batches, limit_val_batches, limit_test_batches

    def steps(self) -> int:
        lone = lone_last_batch(self.train, self.batch)  # a last batch of one example is dropped
        return batch_limit(self.limits[0], math.ceil(self.train / self.batch) - lone)

    def val_batches(self) -> int:
        return batch_limit(self.limits[1], math.ceil(self.val / self.eval_batch))

    def test_batches(self) -> int:
        return batch_limit(self.limits[2], math.ceil(self.test / self.eval_batch))

    def passes(self, examples: int) -> int:
        """Evaluation batches of one pass over `examples` (stores, views, scores)."""
        return math.ceil(examples / self.eval_batch)


@dataclass(frozen=True)
class StageWork:
    """What a stage will do, as a preview determines it."""

    trains: bool
    epochs: int
    counts: Counts
    model: StepTimes
    teachers: tuple[StepTimes, ...]
    mode: str  # online | cached | views: how the teachers' logits are read
    builds_store: bool  # this job runs the store's (or the views') pass; False: the shared cache has it
    fills_first: bool  # a cached store is filled in one pass before training (a curriculum), not in epoch 1
    views: int  # K with views
    view_bytes: int  # one teacher's view store (kdcl.teachers.views.store_bytes)
    logit_bytes: int  # bytes per stored logit (fp32; bf16 under bf16-mixed)
    classes: int
    scoring: tuple[tuple[StepTimes, int], ...]  # models that score the curriculum, each with the examples it scores
    test_cached: bool  # a given checkpoint's test (and card) read from the shared cache
    in_summary: bool  # has a report card
    last_differs: bool  # the card passes the last checkpoint too (select=best: usually another model)
    latency: tuple[tuple[int, ...], tuple[str, ...]]  # latency.batches, latency.runtimes
    first_export: bool  # the job's first ONNX export
    optimizer: str
    keep: str  # checkpoint.keep
    epoch_checkpoints: int  # weights-only checkpoints kept for later stages (name@E)
    log_every: int


@dataclass(frozen=True)
class Estimate:
    """A stage's estimated seconds by part, and bytes: left in the run directory, added to the shared
    cache, and the most the run directory holds while the stage runs (on top of earlier stages)."""

    seconds: dict[str, float]
    run_bytes: int
    cache_bytes: int
    peak_bytes: int

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())


def teacher_seconds(w: StageWork) -> float:
    """The teachers' share: online on every batch, or one store (views) pass unless the cache has it."""
    forward = sum(t.forward_s for t in w.teachers)
    passes = sum(t.eval_s for t in w.teachers) * w.counts.passes(w.counts.train)
    if w.mode == "online":
        return w.epochs * w.counts.steps() * forward
    if not w.builds_store:
        return 0.0
    if w.mode == "views":
        return passes * w.views
    return passes if w.fills_first else w.counts.steps() * forward  # cached: filled in epoch 1


def latency_s(w: StageWork) -> float:
    """kdcl.models.cost.model_cost's time: per runtime an export (ONNX) and the timed calls per batch."""
    batches, runtimes = w.latency
    if not batches:
        return 0.0
    m, b_eval = w.model, w.counts.eval_batch
    per_image = (m.eval_s - m.single_s) / max(1, b_eval - 1)
    calls = sum(latency_seconds(m.single_s + (b - 1) * per_image) for b in batches)
    export = (EXPORT_FIRST_S if w.first_export else 0.0) + EXPORT_PER_MODULE_S * m.modules
    return len(runtimes) * calls + (export if "onnxruntime" in runtimes else 0.0)


def stage_seconds(w: StageWork) -> dict[str, float]:
    m, c = w.model, w.counts
    test_pass = c.test_batches() * m.eval_s
    seconds = {"set-up": STAGE_SETUP_S + m.build_s + sum(t.build_s for t in w.teachers),
               "teachers": teacher_seconds(w),
               "scoring": sum(s.eval_s * c.passes(n) for s, n in w.scoring),
               "test": 0.0 if w.test_cached else test_pass,
               "latency": latency_s(w),
               # the card reads the test's own logits; a trained stage's last checkpoint, where it is not the
               # chosen one, passes the test set once more
               "report card": test_pass if (w.last_differs and w.in_summary) else 0.0}  # fmt: skip
    if w.trains:
        seconds["training"] = w.epochs * c.steps() * m.train_s
        seconds["validation"] = w.epochs * c.val_batches() * m.eval_s
        seconds["checkpoints"] = (w.epochs * CHECKPOINT_SAVES_PER_EPOCH * checkpoint_bytes(w, resumable=True)
                                  / CHECKPOINT_WRITE_BYTES_PER_S)  # fmt: skip
    return seconds


def checkpoint_bytes(w: StageWork, resumable: bool) -> int:
    extra = OPTIMIZER_STATES.get(w.optimizer, 2) * w.model.param_bytes if resumable else 0
    return w.model.state_bytes + extra + CHECKPOINT_EXTRA_BYTES


def store_bytes(w: StageWork) -> tuple[int, int]:
    """(in the run directory, in the shared cache) for the stage's stored teacher outputs."""
    if w.mode == "views":
        return 0, (len(w.teachers) * w.view_bytes if w.builds_store else 0)
    if w.mode == "cached":
        size = len(w.teachers) * w.counts.train * w.classes * w.logit_bytes + w.counts.train
        return size, (size if w.builds_store else 0)
    return 0, 0


def estimate(w: StageWork) -> Estimate:
    run_store, cache_store = store_bytes(w)
    logs = LOG_BYTES_PER_STAGE + LOG_BYTES_PER_LOGGED_STEP * (w.epochs * w.counts.steps()) // max(1, w.log_every)
    scores = w.counts.train * 12 if w.scoring else 0  # scores and labels
    checkpoints = peak = 0
    if w.trains:
        kept = checkpoint_bytes(w, resumable=w.keep != "weights")
        epoch_files = w.epoch_checkpoints * checkpoint_bytes(w, resumable=False)
        checkpoints = 2 * kept + epoch_files  # best.ckpt and last.ckpt
        peak = 3 * checkpoint_bytes(w, resumable=True) + epoch_files  # both, and one being written
    test_logits = w.counts.test * w.classes * 4  # the test's logits, which the report card reads
    run = checkpoints + run_store + logs + scores + test_logits
    return Estimate(stage_seconds(w), run, cache_store, max(run, peak + run_store + logs + scores + test_logits))
