#!/usr/bin/env bash
# Issue 16 experiments (docs/benchmarks.md, "Where does the curriculum help?"). Usage: NOISE=0.2 scripts/curriculum_questions.sh grid; scripts/curriculum_questions.sh teachers short ctkd ensemble
#   steps: teachers | grid (NOISE=0.0 | 0.2 | 0.4, spelt as the teachers' directories are) | short | ctkd | ensemble
# EXTRA="trainer.limit_train_batches=2 ..." OUT=/tmp/dry for a dry run.
set -euo pipefail
K=${KDCL:-kdcl}   # the VM ran: env PYTHONPATH=<worktree> <venv>/bin/python -m kdcl.cli
OUT=${OUT:-$PWD/fm16}
EXTRA=${EXTRA:-}
SEEDS=${SEEDS:-0,1,2,3,4}
DATA="data=fashion_mnist data.image_size=28 data.fraction=0.2 data.val_fraction=0.02 latency.batches=[] trainer.limit_test_batches=8 progress_bar=lines"
teacher_ckpt() { echo "$OUT/teachers/$1/stages/00-teacher/checkpoints/best.ckpt"; }
students() {  # students NOISE EPOCHS DIR ARGS...: one setting at every seed, one process
  local noise=$1 epochs=$2 dir=$3; shift 3
  $K train -m $DATA $EXTRA student.name=test_resnet data.label_noise=$noise teacher.checkpoint=$(teacher_ckpt n$noise) \
    +pipeline.stages.student.fraction=0.17 pipeline.stages.student.epochs=$epochs "$@" seed=$SEEDS \
    hydra.sweep.dir=$OUT/$dir 'hydra.sweep.subdir=s${seed}'
}
five_rows() {  # five_rows NOISE EPOCHS DIR: scratch, KD, KD + easy-first (out-of-fold), hard-first (same scores), random
  local noise=$1 epochs=$2 dir=$3
  students $noise $epochs $dir/scratch distill=none curriculum=none
  students $noise $epochs $dir/kd distill=kd curriculum=none
  students $noise $epochs $dir/easy distill=kd curriculum=linear curriculum.source=folds curriculum.folds=2 curriculum.fold_epochs=2
  students $noise $epochs $dir/hard distill=kd curriculum=linear curriculum.order=hard_first curriculum.scorer=file \
    "curriculum.scores_file=$OUT/$dir/easy/s\${seed}/stages/03-student/scores.pt"
  students $noise $epochs $dir/random distill=kd curriculum=linear curriculum.order=random
}
for step in "$@"; do
  started=$(date +%s); echo "== $step ${NOISE:-} started $(date -u +%H:%M:%S)"
  case $step in
    teachers)  # one ResNet-18 per noise level (on that level's noisy labels), and a second at noise 0 (seed 1)
      $K train -m $DATA $EXTRA '~pipeline.stages.student' trainer.max_epochs=2 data.label_noise=0,0.2,0.4 \
        hydra.sweep.dir=$OUT/teachers 'hydra.sweep.subdir=n${data.label_noise}'
      $K train $DATA $EXTRA '~pipeline.stages.student' trainer.max_epochs=2 seed=1 hydra.run.dir=$OUT/teachers/n0.0-seed1 ;;
    grid) shift_noise=${NOISE:?set NOISE}; five_rows $shift_noise 5 grid/n$shift_noise ;;
    short) five_rows 0.0 2 short ;;
    ctkd) students 0.0 5 extras/ctkd distill=ctkd curriculum=none ;;
    ensemble)
      $K train -m $DATA $EXTRA student.name=test_resnet pipeline=ensemble pipeline.epochs=5 pipeline.student_fraction=0.17 \
        "pipeline.teachers=[{name:resnet18,checkpoint:$(teacher_ckpt n0.0)},{name:resnet18,checkpoint:$(teacher_ckpt n0.0-seed1)}]" \
        seed=$SEEDS hydra.sweep.dir=$OUT/extras/ensemble 'hydra.sweep.subdir=s${seed}' ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "== $step ${NOISE:-} took $(( $(date +%s) - started )) s"
done
