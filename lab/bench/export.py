"""`lnpt bench export`: what sparse storage, gzip and channel pruning buy an on-device ONNX model.

One untrained student (default a CIFAR-stem ResNet-18 at 32x32 RGB; weights' values do not change
sizes or speed) is pruned two ways and exported with `lnpt export`'s pipeline, so every file is
verified against PyTorch on real images:
- 90% unstructured (global magnitude, torch.nn.utils.prune): dense storage, sparse storage, and
  int8 + sparse;
- 50% of channels (Torch-Pruning, magnitude): a narrower dense graph.
Reported as ratios to the unpruned dense export, measured side by side in one run: file sizes and
their gzip (what an app bundle ships), ONNX Runtime latency at batch 1 and 32 (1 thread,
interleaved rounds, medians), and the largest output error against PyTorch.
Unstructured sparsity shrinks files; ONNX Runtime densifies sparse initializers, so it does not run
faster. Only the channel-pruned model is faster.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from lnpt.shared.cli import add_format_option, emit

CIFAR_SPEC = dict(channels=3, size=32, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
TARGETS = {  # at 90% unstructured sparsity and 50% channels (the acceptance targets)
    "sparse_over_dense_size": 0.35,
    "sparse_gzip_over_dense_size": 0.15,
    "structured_over_dense_latency_b32": 0.4,
}


def register(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser("export", help="ONNX file sizes and ONNX Runtime latency: sparse, gzip, "
                                               "int8, channel-pruned vs dense (ratios)",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18", help="student architecture (default resnet18, 32x32 RGB)")
    parser.add_argument("--sparsity", type=float, default=0.9, help="unstructured sparsity (default 0.9)")
    parser.add_argument("--channels", type=float, default=0.5, help="channel ratio removed (default 0.5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="timed seconds per model, batch size and round (default 1.0)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime and torch threads (default 1)")
    parser.add_argument("--out", metavar="DIR", help="keep the exported files here (default: a temporary folder)")
    add_format_option(parser)
    parser.set_defaults(handler=run)


def make_students(arch: str, sparsity: float, channels: float, folder: Path) -> dict[str, Path]:
    """Unpruned, unstructured-pruned and channel-pruned students of one seeded initialisation."""
    import torch
    import torch_pruning as tp
    from torch.nn.utils import prune

    from lnpt.edge.student import prunable_modules, save_student
    from lnpt.shared.zoo import InputSpec, build_model

    spec = InputSpec(**CIFAR_SPEC)
    names = [f"class_{i}" for i in range(10)]
    paths = {}

    def fresh():
        torch.manual_seed(0)
        return build_model(arch, 10, spec).eval()

    paths["dense"] = folder / "dense.pt"
    save_student(paths["dense"], fresh(), input_spec=spec, class_names=names)
    model = fresh()
    prune.global_unstructured([(m, "weight") for m in prunable_modules(model).values()],
                              pruning_method=prune.L1Unstructured, amount=sparsity)
    paths["unstructured"] = folder / "unstructured.pt"
    save_student(paths["unstructured"], model, input_spec=spec, class_names=names)
    model = fresh()
    tp.pruner.MetaPruner(model, torch.zeros(1, *spec.shape), importance=tp.importance.MagnitudeImportance(p=1),
                         pruning_ratio=channels, ignored_layers=[model.head]).step()
    paths["structured"] = folder / "structured.pt"
    save_student(paths["structured"], model, input_spec=spec, class_names=names, structured=True)
    return paths


def latencies(files: dict[str, Path], shape: tuple, batch_sizes: tuple, rounds: int, seconds: float,
              threads: int) -> dict[str, dict[int, float]]:
    """Median seconds per run for each model and batch size, models interleaved within each round."""
    import numpy as np

    from lnpt.edge.onnx.verify import session

    sessions = {name: session(path, threads) for name, path in files.items()}
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, *shape), dtype=np.float32) for b in batch_sizes}
    samples: dict[str, dict[int, list[float]]] = {n: {b: [] for b in batch_sizes} for n in files}
    for _ in range(rounds):
        for batch in batch_sizes:
            for name, sess in sessions.items():
                feed = {"images": inputs[batch]}
                sess.run(None, feed)  # warm-up
                start, runs = time.perf_counter(), 0
                while True:
                    t0 = time.perf_counter()
                    sess.run(None, feed)
                    samples[name][batch].append(time.perf_counter() - t0)
                    runs += 1
                    if time.perf_counter() - start >= seconds and runs >= 3:
                        break
    return {n: {b: statistics.median(v) for b, v in per.items()} for n, per in samples.items()}


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from lnpt.edge.onnx.pipeline import ExportOptions, export_student

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="lnpt-bench-export-") as tmp:
        folder = Path(args.out or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        students = make_students(args.model, args.sparsity, args.channels, folder)
        jobs = {  # artifact -> (student, options)
            "dense": ("dense", {}),
            "unstructured_dense": ("unstructured", {}),
            "sparse": ("unstructured", {"storage": "sparse"}),
            "int8_sparse": ("unstructured", {"storage": "sparse", "quantize": "int8"}),
            "structured": ("structured", {}),
        }
        results = {}
        for name, (student, options) in tqdm(jobs.items(), desc="export", unit="file", leave=False):
            results[name] = export_student(students[student], folder / f"{name}.onnx",
                                           ExportOptions(threads=args.threads, verify_samples=32, **options))
        timed = {n: Path(results[n]["output"]) for n in ("dense", "sparse", "structured")}
        shape = tuple(results["dense"]["input"]["shape"][1:])
        latency = latencies(timed, shape, (1, 32), args.rounds, args.seconds, args.threads)
    summary = summarise(args, results, latency)
    emit(args, summary, table(summary))
    return 0


def summarise(args, results: dict, latency: dict) -> dict:
    import onnxruntime

    dense = results["dense"]["sizes"]["dense"]["bytes"]

    def size(name: str, gz: bool = False) -> float:
        return results[name]["sizes"]["artifact"]["gzip_bytes" if gz else "bytes"] / dense

    summary = {
        "model": args.model, "sparsity": args.sparsity, "channels_removed": args.channels, "threads": args.threads,
        "dense_bytes": dense,
        "sparse_over_dense_size": size("sparse"),
        "sparse_gzip_over_dense_size": size("sparse", gz=True),
        "dense_gzip_over_dense_size": size("dense", gz=True),
        "unstructured_dense_gzip_over_dense_size": size("unstructured_dense", gz=True),
        "int8_sparse_over_dense_size": size("int8_sparse"),
        "int8_sparse_gzip_over_dense_size": size("int8_sparse", gz=True),
        "structured_over_dense_size": size("structured"),
        "structured_params_over_dense": results["structured"]["params"] / results["dense"]["params"],
        "sparse_over_dense_latency_b1": latency["sparse"][1] / latency["dense"][1],
        "sparse_over_dense_latency_b32": latency["sparse"][32] / latency["dense"][32],
        "structured_over_dense_latency_b1": latency["structured"][1] / latency["dense"][1],
        "structured_over_dense_latency_b32": latency["structured"][32] / latency["dense"][32],
        "max_abs_diff": max(results[n]["max_abs_diff"] for n in ("dense", "unstructured_dense", "sparse", "structured")),
        "int8_top1_agreement": results["int8_sparse"]["verification"]["sparse"]["top1_agreement"],
        "int8_logits_relative_error": results["int8_sparse"]["verification"]["sparse"]["logits_relative_error"],
        "exported_sparsity": results["sparse"]["sparsity"]["exported"],
        "runtime": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider",
        "targets": TARGETS,
    }
    summary["targets_met"] = {key: summary[key] <= bound for key, bound in TARGETS.items()}
    return summary


def table(s: dict) -> str:
    def mark(key: str) -> str:
        return f"  (target <= {TARGETS[key]}: {'met' if s['targets_met'][key] else 'NOT met'})" if key in TARGETS else ""

    rows = [
        ("sparse / dense file", "sparse_over_dense_size"),
        ("gzip(sparse) / dense file", "sparse_gzip_over_dense_size"),
        ("gzip(dense, unpruned) / dense file", "dense_gzip_over_dense_size"),
        ("gzip(dense, 90% zeros) / dense file", "unstructured_dense_gzip_over_dense_size"),
        ("int8+sparse / dense file", "int8_sparse_over_dense_size"),
        ("gzip(int8+sparse) / dense file", "int8_sparse_gzip_over_dense_size"),
        ("channel-pruned / dense file", "structured_over_dense_size"),
        ("sparse / dense latency, batch 1", "sparse_over_dense_latency_b1"),
        ("sparse / dense latency, batch 32", "sparse_over_dense_latency_b32"),
        ("channel-pruned / dense latency, batch 1", "structured_over_dense_latency_b1"),
        ("channel-pruned / dense latency, batch 32", "structured_over_dense_latency_b32"),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"lnpt bench export: {s['model']} 32x32 RGB, {s['sparsity']:.0%} unstructured / "
             f"{s['channels_removed']:.0%} channels, {s['runtime']}, {s['threads']} thread(s); "
             f"dense file {s['dense_bytes'] / 1e6:.1f} MB"]
    lines += [f"  {label:<{width}}  {s[key]:.3f}x{mark(key)}" for label, key in rows]
    lines.append(f"  {'max abs diff vs PyTorch (float files)':<{width}}  {s['max_abs_diff']:.2g}")
    lines.append(f"  {'int8 top-1 agreement / rel. error':<{width}}  {s['int8_top1_agreement']:.3f} / "
                 f"{s['int8_logits_relative_error']:.3f}")
    lines.append("  Unstructured sparsity shrinks files but does not speed up ONNX Runtime (it densifies "
                 "sparse initializers); only channel pruning runs faster.")
    return "\n".join(lines)
