#!/usr/bin/env bash
# kdcl's GPU check (issue 27): bf16, channels-last, compile, the views pass in bf16, DDP, the stored-output
# KD step ratio and Fashion-MNIST, in under 10 minutes on one GPU; without a GPU it says so and exits 0.
# Runs as it is from a copy of the repo (no install): the steps run `python -m kdcl` with the repo on
# PYTHONPATH. The steps and their results: scripts/gpu_check.py.
#   scripts/gpu_check.sh [--out DIR] [--work DIR] [--budget SECONDS] [--fashion-root DIR] [--wheels DIR]
set -u
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The repo's .venv where it works here (a .venv copied from another machine may point at an interpreter
# that is not there, or one without torch), else the machine's python3.
python=python3
has_torch="import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"
if [ -x "$root/.venv/bin/python" ] && "$root/.venv/bin/python" -c "$has_torch" >/dev/null 2>&1; then
  python="$root/.venv/bin/python"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
cd "$root" && exec "$python" scripts/gpu_check.py "$@"
