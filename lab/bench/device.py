"""`lnpt bench device --student s.pt`: what makes YOUR model faster on THIS machine (run it on the
Pi or Jetson itself).

Four variants of the student's architecture, each exported with `lnpt export`'s pipeline (so each
file is verified against PyTorch on real images) and timed side by side in ONNX Runtime (CPU
provider, interleaved rounds, median ms; edge.onnx.latency) at each batch size:
- dense: the full-width float graph with dense initializers (the student's own weights unless it
  is channel-pruned, then the untrained full-width network: values do not change the speed);
- sparse: the unstructured zeros stored as sparse initializers (the student's masks, or
  `--sparsity` global magnitude masks when it has none);
- structured: fewer channels (the student itself when channel-pruned, else `--channels` of every
  prunable layer's channels removed by L1 magnitude: no teacher is needed on the device);
- structured_int8: the structured variant, static int8 (uint8 activations, int8 weights, QDQ),
  calibrated on unlabeled images.

JSON keys (`--format json`):
  student, model, input ([C, H, W]), threads, batches, rounds, clock (wall | cpu)
  runtime, onnxruntime_version, cpu {model, machine, cores, flags {avx2, avx512f, avx512_vnni,
      avx_vnni, amx_int8, asimd, asimddp, i8mm, sve: true|false|null (null: not readable here)}}
  variants {dense|sparse|structured|structured_int8: {what, macs, params, bytes, gzip_bytes,
      latency_ms {"1": ms, "8": ms}, max_abs_diff (float) or top1_agreement (int8)}}
  sparse_over_dense_latency_bN, structured_over_dense_latency_bN, structured_int8_over_dense_latency_bN,
  structured_int8_over_structured_latency_bN (one of each per batch size N),
  int8_top1_agreement, notes
Ratios below 1 are faster than dense. The numbers belong to this machine and this runtime only.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path
from typing import Any

from lnpt.shared.cli import add_format_option, emit

VARIANTS = ("dense", "sparse", "structured", "structured_int8")
# CPU features that decide int8 and float speed (x86: /proc/cpuinfo "flags"; ARM: "Features").
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm", "sve")


def register(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser("device", help="latency of your student's dense, sparse, channel-pruned and int8 "
                                               "ONNX variants on this machine (run it on the device)",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", required=True, metavar="FILE", help="a student file (lnpt prune / lnpt train)")
    parser.add_argument("--images", metavar="DIR", default="",
                        help="unlabeled images for verification and int8 calibration (default: Fashion-MNIST)")
    parser.add_argument("--channels", type=float, default=0.5,
                        help="channel ratio removed for the structured variant when the student is not channel-pruned "
                             "(default 0.5)")
    parser.add_argument("--sparsity", type=float, default=0.9,
                        help="unstructured sparsity of the sparse variant when the student has no masks (default 0.9)")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime and torch threads (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=0.3,
                        help="timed seconds per model, batch size and round (default 0.3)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time (default), or the thread's CPU time (with --threads 1: what an idle device "
                             "would see, on a machine shared with other processes)")
    add_format_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from lnpt.lab.paper.experiment import ExperimentError

    try:
        batches = tuple(int(b) for b in args.batches.split(","))
    except ValueError:
        raise ExperimentError(f"--batches {args.batches!r}: give batch sizes like 1,8") from None
    result = device_benchmark(args.student, images=args.images, channels=args.channels, sparsity=args.sparsity,
                              batches=batches, threads=args.threads, rounds=args.rounds, seconds=args.seconds,
                              clock=args.clock)
    emit(args, result, table(result))
    return 0


def cpu_info() -> dict[str, Any]:
    """The CPU's model name and the int8-relevant feature flags, from /proc/cpuinfo (Linux)."""
    import os

    flags: set[str] | None = None
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("flags", "features") and flags is None:
                flags = set(value.split())
            elif key in ("model name", "hardware", "cpu model") and not model:
                model = value.strip()
    except OSError:
        pass
    return {"model": model, "machine": platform.machine(), "cores": os.cpu_count(),
            "flags": {flag: (flag in flags) if flags is not None else None for flag in CPU_FLAGS}}


def make_variants(student: Path, channels: float, sparsity: float, folder: Path) -> dict[str, tuple[Path, str]]:
    """Student files for the dense, sparse and structured variants, and what each one is."""
    import torch
    from torch.nn.utils import prune

    from lnpt.edge.pruning.structured import prune_channels
    from lnpt.edge.student import load_student, make_permanent, prunable_modules, save_student
    from lnpt.edge.student import sparsity as zeros_fraction

    model, record = load_student(student)
    structured = bool(record.extra.get("structured"))
    save = dict(input_spec=record.input_spec, class_names=record.class_names, preprocess=record.preprocess)

    def write(name: str, net, what: str, narrowed: bool = False) -> None:
        save_student(folder / f"{name}.pt", net, structured=narrowed, **save)
        files[name] = (folder / f"{name}.pt", what)

    files: dict[str, tuple[Path, str]] = {}
    dense = record.architecture().eval() if structured else load_student(student)[0]
    write("dense", dense, "the full-width architecture, untrained (the student is channel-pruned)" if structured
          else "the student at full width, dense initializers")
    if zeros_fraction(model) > 0 and not structured:
        write("sparse", model, f"the student's own zeros ({zeros_fraction(model):.1%}) as sparse initializers")
    else:
        masked = load_student(student)[0] if not structured else record.architecture()
        prune.global_unstructured([(m, "weight") for m in prunable_modules(masked).values()],
                                  pruning_method=prune.L1Unstructured, amount=sparsity)
        write("sparse", masked, f"{sparsity:.0%} global magnitude zeros on the full-width model, sparse initializers")
    if structured:
        write("structured", model, "the student itself (channel-pruned)", narrowed=True)
    else:
        narrow = make_permanent(load_student(student)[0])  # Torch-Pruning narrows plain weights, zeros kept
        prune_channels(narrow, channels, None, [], torch.zeros(1, *record.input_spec.shape), importance="magnitude")
        write("structured", narrow, f"{channels:.0%} of every prunable layer's channels removed (L1 magnitude)",
              narrowed=True)
    return files


def device_benchmark(student: str | Path, *, images: str = "", channels: float = 0.5, sparsity: float = 0.9,
                     batches: tuple[int, ...] = (1, 8), threads: int = 1, rounds: int = 3, seconds: float = 0.3,
                     clock: str = "wall", verify_samples: int = 32, calibration_samples: int = 128) -> dict[str, Any]:
    """Export the four variants of `student`, time them side by side at each batch size and return
    the figures, their ratios to dense, the runtime version and the CPU's flags (keys: see the module)."""
    import onnxruntime
    import torch

    from lnpt.edge.onnx.latency import LatencySettings, side_by_side
    from lnpt.edge.onnx.pipeline import ExportOptions, export_student
    from lnpt.edge.pruning.structured import count_macs_and_params
    from lnpt.edge.student import load_student, make_permanent
    from lnpt.lab.paper.experiment import ExperimentError

    if not 0 < channels < 1 or not 0 < sparsity < 1:
        raise ExperimentError(f"--channels {channels} and --sparsity {sparsity} must lie strictly between 0 and 1")
    if not batches or min(batches) < 1 or rounds < 1:
        raise ExperimentError(f"batch sizes {batches} and rounds {rounds} must be at least 1")
    torch.set_num_threads(threads)
    common = dict(threads=threads, verify_samples=verify_samples, samples=images, calibration=images,
                  calibration_samples=calibration_samples)
    options = {"dense": {}, "sparse": {"storage": "sparse"}, "structured": {},
               "structured_int8": {"quantize": "int8-static"}}
    with tempfile.TemporaryDirectory(prefix="lnpt-bench-device-") as tmp:
        folder = Path(tmp)
        files = make_variants(Path(student), channels, sparsity, folder)
        files["structured_int8"] = (files["structured"][0], "the structured variant, static int8 (U8S8 QDQ), "
                                                            "calibrated on unlabeled images")
        variants, onnx_files = {}, {}
        for name in VARIANTS:
            path, what = files[name]
            exported = export_student(path, folder / f"{name}.onnx", ExportOptions(**common, **options[name]))
            model, record = load_student(path)
            macs, params = count_macs_and_params(make_permanent(model).eval(), torch.zeros(1, *record.input_spec.shape))
            check = exported["verification"][list(exported["verification"])[-1]]
            variants[name] = {"what": what, "macs": macs, "params": params,
                              "bytes": exported["sizes"]["artifact"]["bytes"],
                              "gzip_bytes": exported["sizes"]["artifact"]["gzip_bytes"], "latency_ms": {}}
            variants[name].update({"top1_agreement": check["top1_agreement"]} if name.endswith("int8")
                                  else {"max_abs_diff": check["max_abs_diff"]})
            onnx_files[name] = Path(exported["output"])
        shape = tuple(exported["input"]["shape"][1:])
        for batch in batches:
            settings = LatencySettings(threads=threads, batch=batch, seconds=seconds, clock=clock)
            timed = side_by_side(onnx_files, shape, settings, rounds=rounds)
            for name in VARIANTS:
                variants[name]["latency_ms"][str(batch)] = timed[name]["median_ms"]
    record = load_student(student)[1]
    result: dict[str, Any] = {
        "student": str(student), "model": record.arch, "input": list(record.input_spec.shape), "threads": threads,
        "batches": list(batches), "rounds": rounds, "clock": clock,
        "runtime": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider",
        "onnxruntime_version": onnxruntime.__version__, "cpu": cpu_info(), "variants": variants,
    }
    for batch in map(str, batches):
        ms = {name: variants[name]["latency_ms"][batch] for name in VARIANTS}
        for name in ("sparse", "structured", "structured_int8"):
            result[f"{name}_over_dense_latency_b{batch}"] = ms[name] / ms["dense"]
        result[f"structured_int8_over_structured_latency_b{batch}"] = ms["structured_int8"] / ms["structured"]
    result["int8_top1_agreement"] = variants["structured_int8"]["top1_agreement"]
    result["notes"] = notes(result)
    return result


def notes(result: dict[str, Any]) -> list[str]:
    """Plain readings of the measured ratios (no promises beyond them)."""
    lines = []
    for batch in map(str, result["batches"]):
        int8 = result[f"structured_int8_over_structured_latency_b{batch}"]
        if int8 >= 1:
            lines.append(f"batch {batch}: int8 is {int8:.2f}x the float channel-pruned latency here, i.e. not "
                         "faster; keep the float file on this CPU")
        if result[f"sparse_over_dense_latency_b{batch}"] > 0.9:
            lines.append(f"batch {batch}: sparse initializers do not speed up ONNX Runtime (it densifies them): "
                         "a size tool only")
    flags = result["cpu"]["flags"]
    if flags["asimd"] and flags["asimddp"] is False:
        lines.append("ARM CPU without the dot-product extension (asimddp): int8 kernels gain little over float")
    if flags["avx2"] and flags["avx512_vnni"] is False and flags["avx_vnni"] is False:
        lines.append("x86 CPU without VNNI: int8 convolutions use slower multiply-add sequences")
    return lines


def table(r: dict[str, Any]) -> str:
    flags = ", ".join(f for f, on in r["cpu"]["flags"].items() if on) or "none of " + ", ".join(CPU_FLAGS)
    lines = [f"lnpt bench device: {r['model']} {'x'.join(map(str, r['input']))}, {r['runtime']}, "
             f"{r['threads']} thread(s); CPU {r['cpu']['model'] or r['cpu']['machine']} ({flags})"]
    head = "".join(f"  b{b} ms  vs dense" for b in r["batches"])
    lines.append(f"  {'variant':<16}{'MACs':>14}{'bytes':>12}{head}")
    dense = r["variants"]["dense"]["latency_ms"]
    for name, v in r["variants"].items():
        ms = v["latency_ms"]
        cells = "".join(f"{ms[str(b)]:>8.3f}{ms[str(b)] / dense[str(b)]:>9.2f}x" for b in r["batches"])
        lines.append(f"  {name:<16}{v['macs']:>14,}{v['bytes']:>12,}{cells}")
    lines.append(f"  int8 top-1 agreement with PyTorch: {r['int8_top1_agreement']:.3f}")
    lines += [f"  note: {n}" for n in r["notes"]]
    return "\n".join(lines)
