"""Student candidates at the default data's resolution: parameters, MACs, and CPU latency in eager PyTorch
and in ONNX Runtime, against the default teacher — the measurement behind the default student.

    python scripts/student_candidates.py                       # the default list, data=digits, 3 rounds
    python scripts/student_candidates.py --rounds 5 resnet18 mobilenetv3_small_100
    python scripts/student_candidates.py --data fashion_mnist

Each model is built with random weights for the data's classes and channels (latency does not depend on
the weights), exported once as `kdcl export` exports it, then timed by kdcl/models/cost.py (warm-up,
median of repeats) in `--rounds` rounds, models in a rotated order each round so that a slow spell of a
shared machine does not fall on one model. A cell is the median over rounds of each round's median, ±
half the range of those medians. Run it on an idle machine. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import statistics

import timm
import torch

from kdcl.commands.models import input_shape
from kdcl.models.cost import count_macs, eager_latency, onnx_latency
from kdcl.models.factory import count_params, timm_kwargs
from kdcl.models.onnx_graph import export_onnx

TEACHER = "resnet18"
CANDIDATES = ["mobilenetv3_small_100", "mobilenetv3_small_075", "mobilenetv4_conv_small", "resnet10t",
              "efficientnet_b0", "ghostnet_100", "lcnet_100", "test_efficientnet", "test_resnet"]  # fmt: skip


def rounds_of(models: dict, shape, rounds: int) -> dict[str, dict[str, list[float]]]:
    """{model: {"eager@1": [ms per round], "ort@64": [...]}}, models in a rotated order each round."""
    names, times = list(models), {name: {} for name in models}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            model, graph = models[name]
            for key, lat in (("eager", eager_latency(model, shape.in_chans, shape.image_size, shape.batches)),
                             ("ort", onnx_latency(graph.model, shape.in_chans, shape.image_size, shape.batches))):  # fmt: skip
                for b, t in lat.ms.items():
                    times[name].setdefault(f"{key}@{b}", []).append(t.median_ms)
    return times


def cell(values: list[float]) -> str:
    med, half = statistics.median(values), (max(values) - min(values)) / 2
    return f"{med:.2f} ±{half:.2f}" if med < 10 else f"{med:.1f} ±{half:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=[TEACHER, *CANDIDATES])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    shape = input_shape([f"data={args.data}"])
    models = {}
    for name in args.models:
        model = timm.create_model(name, **timm_kwargs(name, shape.num_classes, shape.in_chans, shape.image_size))
        models[name] = (model.eval(), export_onnx(model, shape.in_chans, shape.image_size))
    times = rounds_of(models, shape, args.rounds)
    import onnxruntime

    print(f"data={shape.data}: {shape.in_chans}×{shape.image_size}×{shape.image_size}, {shape.num_classes} classes; "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads in both runtimes; "
          f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, timm {timm.__version__}; "
          f"{args.rounds} rounds\n")  # fmt: skip
    b = [str(x) for x in shape.batches]
    print("| model | params | MMACs | " + " | ".join(f"eager ms@{x}" for x in b) + " | "
          + " | ".join(f"ORT ms@{x}" for x in b) + " | " + " | ".join(f"ORT speed-up@{x}" for x in b) + " |")  # fmt: skip
    print("|---" * (3 + 3 * len(b)) + "|")
    ref = {x: statistics.median(times[args.models[0]][f"ort@{x}"]) for x in b}
    for name, (model, graph) in models.items():
        t = times[name]
        speed = [f"{ref[x] / statistics.median(t[f'ort@{x}']):.2f}×" for x in b]
        print(f"| {name} ({graph.exporter}) | {count_params(model) / 1e6:.2f} M | "
              f"{count_macs(model, shape.in_chans, shape.image_size) / 1e6:.1f} | "
              + " | ".join(cell(t[f"eager@{x}"]) for x in b) + " | " + " | ".join(cell(t[f"ort@{x}"]) for x in b)
              + " | " + " | ".join(speed) + " |")  # fmt: skip
    print(f"\nspeed-up: {args.models[0]}'s ONNX Runtime latency / the model's.")


if __name__ == "__main__":
    main()
