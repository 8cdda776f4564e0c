#!/usr/bin/env bash
# Issue 25: curricula over teachers against their controls (docs/benchmarks.md, "Curricula over teachers").
# Usage: scripts/teacher_curricula.sh teacher short long report      (steps run in the order given)
#   teacher: one ResNet-18 trained to overconfidence, keeping its anchors' epochs; softness: its training accuracy
#   and output entropy per kept epoch; short | long: every arm at the short (3) or long (12) student budget, five
#   seeds each, one process per arm; report: kdcl report per budget, every arm against plain KD.
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
arm() {  # arm BUDGET NAME ARGS...: one arm at every seed, one process; the student is timm's test_resnet (0.37 M)
  local budget=$1 name=$2; shift 2
  if [ -f "$OUT/b$budget/$name/sweep.json" ]; then echo "arm $name b$budget: done before"; return; fi
  # a failed seed (exit 5; its failure.json says why) is reported and the next arm runs
  $K train -m $DATA $EXTRA student.name=test_resnet teacher.checkpoint=$TEACHER pipeline.student_epochs=$budget "$@" \
    seed=$SEEDS hydra.sweep.dir=$OUT/b$budget/$name 'hydra.sweep.subdir=s${seed}' || echo "arm $name b$budget failed ($?)"
}
arms() {  # arms BUDGET: every arm and control with the same student epochs
  local b=$1
  arm $b scratch distill=none                                  # no teacher (= born-again's plain control)
  arm $b kd distill=kd                                         # plain KD from the final teacher (the direct-KD control)
  arm $b anchors pipeline=anchors $ROUTE                       # RCO: teacher@5 → teacher@10 → teacher
  arm $b anchors_reverse pipeline=anchors $ROUTE pipeline.order=reverse
  arm $b anchors_shuffled pipeline=anchors $ROUTE pipeline.order=shuffled
  arm $b anchors_matched pipeline=anchors $ROUTE pipeline.order=matched
  arm $b early pipeline.teacher_epoch=$EARLY                   # Cho & Hariharan: the early-stopped teacher alone
  arm $b takd pipeline=takd pipeline.epochs=$b                 # assistant resnet10t (4.9 M), B epochs
  arm $b takd_labels pipeline=takd pipeline.epochs=$b pipeline.assistants_distill=false
  arm $b dgkd pipeline=dgkd pipeline.epochs=$b
  arm $b dgkd_labels pipeline=dgkd pipeline.epochs=$b pipeline.assistants_distill=false
  arm $b born_again pipeline=born_again                        # generations 0, 1, 2 of B/3 epochs each
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
      for b in 3 12; do $K report $OUT/b$b baseline=distill=kd; done ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "== $step took $(( $(date +%s) - started )) s"
done
