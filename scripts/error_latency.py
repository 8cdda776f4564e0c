"""How long `kdcl train` takes to refuse bad input: median of N runs per case, one case at a time.

    python scripts/error_latency.py [--repeats 3]

Run it on an otherwise idle machine (other torch jobs slow every number). Cases that need no model or
data should answer in about a second; an unknown model name (timm's name list) in two to three;
values only Lightning can judge (devices, strategy, accelerator) pay Lightning's import.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

CASES = {
    "unknown group option": ["teacher=not_a_preset"],
    "unknown key": ["distill.temprature=2"],
    "wrong type": ["optim.lr=abc"],
    "wrong enumeration word": ["curriculum.order=easyfirst"],
    "out of range": ["data.fraction=2"],
    "unknown Trainer argument": ["+trainer.acumulate_grad_batches=4"],
    "nesterov without momentum": ["optim=sgd", "optim.momentum=0"],
    "bad loss-term value": ["distill.terms.kd.weight=-1"],
    "unknown model name (timm)": ["teacher.name=resnet500"],
    "bad Trainer precision": ["trainer.precision=17"],
    "Trainer value only Lightning can judge": ["trainer.devices=0"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cwd:
        print(f"| case | median s (of {args.repeats}) | exit |\n|---|---|---|")
        for name, overrides in CASES.items():
            times, codes = [], set()
            for _ in range(args.repeats):
                start = time.perf_counter()
                proc = subprocess.run([sys.executable, "-m", "kdcl.cli", "train", *overrides], cwd=cwd,
                                      capture_output=True, text=True)  # fmt: skip
                times.append(time.perf_counter() - start)
                codes.add(proc.returncode)
            print(
                f"| {name} (`{' '.join(overrides)}`) | {statistics.median(times):.2f} | {','.join(map(str, codes))} |"
            )


if __name__ == "__main__":
    main()
