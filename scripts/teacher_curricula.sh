#!/usr/bin/env bash
# Issue 25: curricula over teachers against their controls (docs/benchmarks.md, "Curricula over teachers").
# Usage: scripts/teacher_curricula.sh teacher short long report      (steps run in the order given)
#   teacher: one ResNet-18 trained to overconfidence, keeping its anchors' epochs; softness: its training accuracy
#   and output entropy per kept epoch; short | long: every arm at the short (3) or long (12) student budget, five
#   seeds each, one process per arm (an arm already done is skipped); report: kdcl report per budget, every arm
#   against plain KD, and born-again against plain training for its generations' epochs.
# OUT=dir (default ./fm25), SEEDS=0,1,2,3,4, EXTRA="trainer.limit_train_batches=2 ..." for a dry run.
set -euo pipefail
K=${KDCL:-kdcl}
OUT=${OUT:-$PWD/fm25}
EXTRA=${EXTRA:-}
SEEDS=${SEEDS:-0,1,2,3,4}
# 2 940 training images at their native 28 px; 1 200 to pick checkpoints; the first 4 096 official test images.
# data.split_seed=0: every seed trains on the teacher's own training images (seeds vary initialisation and order),
# the images it is overconfident on.
DATA="data=fashion_mnist data.image_size=28 data.fraction=0.05 data.val_fraction=0.02 data.split_seed=0 latency.batches=[] trainer.limit_test_batches=8 progress_bar=lines"
TEACHER_EPOCHS=15
ROUTE="pipeline.epochs=$TEACHER_EPOCHS pipeline.anchors=3"  # anchors teacher@5, teacher@10, then the teacher
EARLY=5                                                     # the early-stopped teacher: teacher@5
TEACHER=$OUT/teacher/stages/00-teacher/checkpoints/last.ckpt
arm() {  # arm DIR NAME ARGS...: one arm at every seed, one process; the student is timm's test_resnet (0.37 M),
  # trained for STUDENT_EPOCHS epochs in all (over its stages)
  local dir=$1 name=$2; shift 2
  if [ -f "$OUT/$dir/$name/sweep.json" ]; then echo "arm $dir/$name: done before"; return; fi
  # a failed seed (exit 5; its failure.json says why) is reported and the next arm runs
  $K train -m $DATA $EXTRA student.name=test_resnet teacher.checkpoint=$TEACHER pipeline.student_epochs=$STUDENT_EPOCHS \
    "$@" seed=$SEEDS hydra.sweep.dir=$OUT/$dir/$name 'hydra.sweep.subdir=s${seed}' || echo "arm $dir/$name failed ($?)"
}
arms() {  # arms B: every arm and control with the student's same B epochs (b$B/), born-again apart (b$B-born_again/)
  local b=$1
  STUDENT_EPOCHS=$b
  arm b$b scratch distill=none                                 # no teacher
  arm b$b kd distill=kd                                        # plain KD from the final teacher (the direct-KD control)
  arm b$b anchors pipeline=anchors $ROUTE                      # RCO: teacher@5 → teacher@10 → teacher
  arm b$b anchors_reverse pipeline=anchors $ROUTE pipeline.order=reverse
  arm b$b anchors_shuffled pipeline=anchors $ROUTE pipeline.order=shuffled
  arm b$b anchors_matched pipeline=anchors $ROUTE pipeline.order=matched
  arm b$b early pipeline.teacher_epoch=$EARLY                  # Cho & Hariharan: the early-stopped teacher alone
  arm b$b takd pipeline=takd pipeline.epochs=$b                # assistant resnet10t (4.9 M), B epochs
  arm b$b takd_labels pipeline=takd pipeline.epochs=$b pipeline.assistants_distill=false
  arm b$b dgkd pipeline=dgkd pipeline.epochs=$b
  arm b$b dgkd_labels pipeline=dgkd pipeline.epochs=$b pipeline.assistants_distill=false
  # born-again: generations 0 (labels), 1, 2 of B epochs each, against plain training for their 3B epochs
  STUDENT_EPOCHS=$((3 * b))
  arm b$b-born_again born_again pipeline=born_again
  arm b$b-born_again plain pipeline=born_again pipeline.plain=true
}
for step in "$@"; do
  started=$(date +%s); echo "== $step started $(date -u +%H:%M:%S)"
  case $step in
    teacher)
      $K train $DATA $EXTRA '~pipeline.stages.student' trainer.max_epochs=$TEACHER_EPOCHS \
        "+pipeline.stages.teacher.keep_epochs=[$EARLY,10]" hydra.run.dir=$OUT/teacher ;;
    softness) python "$(dirname "$0")/teacher_softness.py" $OUT/teacher ;;
    short) arms 3 ;;
    long) arms 12 ;;
    report)
      for b in 3 12; do
        $K report $OUT/b$b baseline=distill=kd
        $K report $OUT/b$b-born_again baseline=pipeline.plain=true
      done ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "== $step took $(( $(date +%s) - started )) s"
done
