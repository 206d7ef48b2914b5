"""`lnpt bench prune`: what the label-free LNPT score costs next to supervised SNIP, and SynFlow's rounds.

All three prune the same freshly initialised student on the same real Fashion-MNIST samples, side by
side and interleaved, repeated; medians are reported as ratios to SNIP with labels:
- lnpt_over_snip: LNPT including fetching the teacher's targets (a local teacher file: one teacher
  forward per batch), then one forward/backward of the learning gap + KD, then the masks;
- lnpt_score_only_over_snip: the same without the targets (what the device pays when the cloud
  computes them);
- lnpt_progressive_over_snip: the LNPT sensitivity recomputed over rounds (10 by default);
- synflow_over_snip: SynFlow's iterative rounds (100 by default), data-free.
"""
from __future__ import annotations

import argparse
import statistics
import time

from lnpt.shared.cli import add_format_option, emit


def register(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser("prune", help="LNPT score vs SNIP with labels vs SynFlow's rounds (ratios)",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20", help="student architecture (default resnet20)")
    parser.add_argument("--teacher-model", help="teacher architecture, untrained (default: same as --model); "
                                                "training does not change its cost")
    parser.add_argument("--samples", type=int, default=100, help="scoring samples (default 100 = 10 x classes)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per forward/backward (default 64)")
    parser.add_argument("--sparsity", type=float, default=0.95, help="target sparsity (default 0.95)")
    parser.add_argument("--synflow-rounds", type=int, default=100, help="SynFlow rounds (default 100)")
    parser.add_argument("--progressive-rounds", type=int, default=10, help="lnpt-progressive rounds (default 10)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions of each (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    add_format_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    result = prune_benchmark(args.model, args.teacher_model or args.model, samples=args.samples,
                             batch_size=args.batch_size, sparsity=args.sparsity, synflow_rounds=args.synflow_rounds,
                             progressive_rounds=args.progressive_rounds,
                             repeats=args.repeats, threads=args.threads)
    emit(args, result, format_result(result))
    return 0


def prune_benchmark(model: str, teacher_model: str, *, samples: int = 100, batch_size: int = 64,
                    sparsity: float = 0.95, synflow_rounds: int = 100, progressive_rounds: int = 10,
                    repeats: int = 5, threads: int = 1) -> dict:
    """Median seconds of each way to prune `model`, interleaved over `repeats`, and their ratios to SNIP."""
    import tempfile
    from pathlib import Path

    import torch

    from lnpt.edge.pruning.masks import prune_loop
    from lnpt.edge.pruning.pipeline import make_batches, pick_samples
    from lnpt.edge.pruning.scorers import LNPT, SNIP, ProgressiveLNPT, SynFlow
    from lnpt.edge.teachers import LocalTeacher
    from lnpt.shared.model_file import save_model
    from lnpt.shared.data import FASHION_MNIST_CLASSES, FASHION_MNIST_SPEC, load_fashion_mnist
    from lnpt.shared.objectives import CrossEntropy, guided_objective
    from lnpt.shared.models import build_model

    torch.set_num_threads(threads)
    spec = FASHION_MNIST_SPEC
    images, labels = load_fashion_mnist(train=True)
    chosen = pick_samples(len(images), samples, seed=0)
    images, labels = images[chosen], labels[chosen]
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(1)
        teacher_path = Path(folder) / "teacher.pt"
        save_model(teacher_path, build_model(teacher_model, 10, spec), kind="teacher",
                   input_spec=spec, class_names=list(FASHION_MNIST_CLASSES))
        teacher = LocalTeacher.load(teacher_path)

    def student():
        torch.manual_seed(0)
        return build_model(model, 10, spec)

    objective = guided_objective(student_dim=student().feature_dim, teacher_dim=teacher.feature_dim)
    labelled = make_batches(images, spec, batch_size, labels=labels)
    guided = make_batches(images, spec, batch_size, teacher)

    def snip():
        prune_loop(student(), SNIP(CrossEntropy()), labelled, sparsity)

    def lnpt():
        batches = make_batches(images, spec, batch_size, teacher)
        prune_loop(student(), LNPT(objective), batches, sparsity)

    def lnpt_score_only():
        prune_loop(student(), LNPT(objective), guided, sparsity)

    def lnpt_progressive():
        batches = make_batches(images, spec, batch_size, teacher)
        prune_loop(student(), ProgressiveLNPT(objective), batches, sparsity, rounds=progressive_rounds)

    def synflow():
        prune_loop(student(), SynFlow(spec.shape), [], sparsity, rounds=synflow_rounds,
                   min_layer_density=0.0)

    runs = {"snip": snip, "lnpt": lnpt, "lnpt_score_only": lnpt_score_only, "lnpt_progressive": lnpt_progressive,
            "synflow": synflow}
    for fn in runs.values():  # warm-up: allocator, lazy imports
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):  # interleaved, so drifts in machine load hit all alike
        for name, fn in runs.items():
            started = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    result = {
        "lnpt_over_snip": median["lnpt"] / median["snip"],
        "lnpt_score_only_over_snip": median["lnpt_score_only"] / median["snip"],
        "lnpt_progressive_over_snip": median["lnpt_progressive"] / median["snip"],
        "synflow_over_snip": median["synflow"] / median["snip"],
        "median_seconds": median,
        "model": model, "teacher_model": teacher_model, "samples": len(images),
        "batch_size": batch_size, "sparsity": sparsity, "synflow_rounds": synflow_rounds,
        "progressive_rounds": progressive_rounds,
        "repeats": repeats, "threads": threads, "target_lnpt_over_snip": 1.3,
    }
    return result


def format_result(result: dict) -> str:
    median = result["median_seconds"]
    synflow = f"SynFlow, {result['synflow_rounds']} rounds"
    progressive = f"LNPT progressive, {result['progressive_rounds']} rounds"
    return "\n".join([
        f"pruning {result['model']} to {result['sparsity']:.0%} with {result['samples']} Fashion-MNIST samples "
        f"(batch {result['batch_size']}, {result['threads']} thread(s), median of {result['repeats']})",
        f"{'SNIP with labels':<36} {median['snip']:8.3f} s   1.00x",
        f"{'LNPT incl. teacher targets':<36} {median['lnpt']:8.3f} s   {result['lnpt_over_snip']:.2f}x  (target <= 1.3x)",
        f"{'LNPT, targets already fetched':<36} {median['lnpt_score_only']:8.3f} s   "
        f"{result['lnpt_score_only_over_snip']:.2f}x",
        f"{progressive:<36} {median['lnpt_progressive']:8.3f} s   {result['lnpt_progressive_over_snip']:.2f}x",
        f"{synflow:<36} {median['synflow']:8.3f} s   "
        f"{result['synflow_over_snip']:.2f}x",
    ])
