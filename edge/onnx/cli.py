"""`lnpt export`: a student file -> a verified ONNX file (+ sidecar JSON, optional .ort)."""
from __future__ import annotations

import argparse
import json
import sys

from lnpt.shared.cli import add_config_options, add_format_option, config_from_args, emit

DESCRIPTION = """\
Export a pruned student to ONNX for on-device runtimes, and verify every file written.

The graph input is `images`: float32 (batch, C, H, W), NORMALISED as
(pixels / 255 - mean) / std with the student's mean/std (the app applies this; the sidecar
JSON beside the file states the values, class names, sparsity and verification results).
Outputs are `features` and `logits` (only `logits` with --logits-only); the batch is dynamic.

Verification of each artifact: onnx.checker, an ONNX Runtime CPU session, and outputs compared
with PyTorch on real images at batch sizes 1, 7 and all samples. Float graphs pass when
max |onnx - torch| <= tolerance * max(1, max |torch|); int8 graphs pass when the top-1 class
agrees with PyTorch on at least export.int8_min_agreement of the samples (max abs and
relative error are reported). Nothing is written when a check fails.

Sparse storage makes files smaller (and their gzip much smaller); ONNX Runtime densifies the
weights on load, so it does not run faster. Only channel-pruned (structured) students run faster.
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="export a student to a verified ONNX file (dense, sparse, int8)",
                            description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", required=True, metavar="FILE", help="student model file (from lnpt prune/train)")
    parser.add_argument("--out", required=True, metavar="FILE.onnx",
                        help="ONNX file to write; the sidecar goes to FILE.onnx.json, --ort writes FILE.ort")
    parser.add_argument("--storage", choices=("dense", "sparse"),
                        help="initializer storage (export.format; default dense): sparse stores weights as "
                             "ONNX sparse_initializer where that is smaller")
    parser.add_argument("--quantize", choices=("none", "int8", "int8-static"),
                        help="int8: dynamic quantization; int8-static: static (QDQ) with calibration images "
                             "(export.quantize; default none). Applied before sparse encoding")
    parser.add_argument("--opset", type=int, help="ONNX opset (export.opset; default 18)")
    parser.add_argument("--logits-only", action="store_true", default=None,
                        help="graph outputs only `logits` (for apps that just classify)")
    parser.add_argument("--ort", action="store_true", default=None,
                        help="also write a verified .ort file for ONNX Runtime Mobile (skipped with a "
                             "message when this onnxruntime has no converter)")
    parser.add_argument("--tolerance", type=float, help="float verification tolerance (export.tolerance; default 1e-4)")
    parser.add_argument("--samples", metavar="DIR",
                        help="folder of real images to verify on (default: Fashion-MNIST test images)")
    parser.add_argument("--verify-samples", type=int, metavar="N", help="images to verify on (default 64)")
    parser.add_argument("--calibration", metavar="DIR",
                        help="folder of unlabeled images for int8-static (default: Fashion-MNIST train pixels)")
    parser.add_argument("--calibration-samples", type=int, metavar="N", help="calibration images (default 128)")
    parser.add_argument("--eval-fashion-mnist", type=int, default=0, metavar="N",
                        help="also report top-1 accuracy of PyTorch and of the artifact on N labeled "
                             "Fashion-MNIST test images (students with Fashion-MNIST classes)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime and torch threads (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out (and its sidecar) if it exists")
    add_config_options(parser)
    add_format_option(parser)
    parser.set_defaults(handler=run_export)


EXPORT_FLAGS = {flag: f"export.{key}" for flag, key in {
    "storage": "format", "quantize": "quantize", "opset": "opset", "logits_only": "logits_only", "ort": "ort",
    "tolerance": "tolerance", "samples": "samples", "verify_samples": "verify_samples",
    "calibration": "calibration", "calibration_samples": "calibration_samples"}.items()}


def run_export(args: argparse.Namespace) -> int:
    import torch

    from lnpt.edge.onnx.pipeline import export

    config = config_from_args(args, EXPORT_FLAGS)
    torch.set_num_threads(args.threads)

    def progress(line: str) -> None:
        print(json.dumps({"event": "stage", "stage": line}) if args.format == "json" else f"export {line}",
              file=sys.stderr, flush=True)

    result = export(args.student, args.out, config=config, overwrite=args.overwrite, progress=progress,
                    eval_fashion_mnist=args.eval_fashion_mnist, threads=args.threads)
    emit(args, result.details, summary_text(result.details))
    return 0


def kb(n: int) -> str:
    return f"{n / 1000:.1f} kB"


def summary_text(r: dict) -> str:
    dense = r["sizes"]["dense"]["bytes"]
    sizes = " | ".join(f"{name} {kb(s['bytes'])} (gzip {kb(s['gzip_bytes'])})"
                       for name, s in r["sizes"].items() if name != "artifact")
    checks = "; ".join(f"{name}: max abs diff {v['max_abs_diff']:.2g}, top-1 agreement {v['top1_agreement']:.3f}"
                       for name, v in r["verification"].items())
    spec = r["input"]
    lines = [
        f"wrote {r['output']} ({r['storage']}, quantize {r['quantize']}, opset {r['opset']}, IR {r['ir_version']}) "
        f"from {r['arch']} student {r['student_version']}",
        f"  input    {spec['name']} float32 {spec['shape']} {spec['layout']} {spec['color']}, normalised with "
        f"mean {spec['normalisation']['mean']} std {spec['normalisation']['std']} (the app applies it)",
        "  outputs  " + ", ".join(f"{name} {shape}" for name, shape in r["outputs"].items()),
        f"  sizes    {sizes}",
        f"           artifact {r['sizes']['artifact']['bytes'] / dense:.3f}x dense, "
        f"its gzip {r['sizes']['artifact']['gzip_bytes'] / dense:.3f}x dense",
        f"  params   {r['params']:,} ({r['params'] / r['full_width_params']:.2f}x the full-width {r['arch']})",
        f"  sparsity student {r['sparsity']['student']:.1%}, exported {r['sparsity']['exported']:.1%}",
        f"  verified {checks}",
    ]
    if r["accuracy"]:
        a = r["accuracy"]
        lines.append(f"  accuracy PyTorch {a['torch']:.3f}, ONNX {a['onnx']:.3f} on {a['samples']} Fashion-MNIST test images")
    if "ort" in r:
        ort = r["ort"]
        lines.append(f"  .ort     {r['ort_file']} ({kb(ort['bytes'])}), verified" if r["ort_file"]
                     else f"  .ort     skipped: {ort['skipped']}")
    lines.append(f"  runtimes {'; '.join(r['runtimes'])}")
    lines.append(f"  sidecar  {r['sidecar']}")
    return "\n".join(lines)
