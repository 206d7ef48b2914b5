#!/usr/bin/env python3
"""Check an edge job's ONNX export on the host, the way an app would use it (deploy/verify.sh).

    verify_onnx.py WORK [--samples N]

WORK holds student.onnx, its sidecar student.onnx.json and student-trained.pt. The checks: ONNX's
checker accepts the file; an ONNX Runtime CPU session loads it; on N labeled Fashion-MNIST test
images, normalised as the sidecar says, its logits match the PyTorch student it came from (top-1
agreement and max |difference|); it reports both accuracies. Prints one line; exit 1 when a check fails.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from lnpt.edge.student import load_student
from lnpt.shared.data import load_fashion_mnist

MIN_AGREEMENT = 0.99  # float graphs: a handful of near-ties may flip, nothing more
TOLERANCE = 1e-3  # max |onnx - torch| <= TOLERANCE * max(1, max |torch|)


def check(work: Path, samples: int) -> tuple[bool, str]:
    """(passed, one-line report) for the export in `work`."""
    path = work / "student.onnx"
    sidecar = json.loads((work / "student.onnx.json").read_text())
    onnx.checker.check_model(onnx.load(str(path)))  # raises on an invalid graph
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    images, labels = load_fashion_mnist(train=False)
    images, labels = images[:samples], labels[:samples].numpy()
    if list(images.shape[1:]) != sidecar["input"]["shape"][1:]:
        return False, f"the sidecar's input shape {sidecar['input']['shape']} is not Fashion-MNIST's {list(images.shape[1:])}"
    norm = sidecar["input"]["normalisation"]
    mean = torch.tensor(norm["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(norm["std"]).view(1, -1, 1, 1)
    inputs = ((images.float() / 255.0 - mean) / std).contiguous()
    logits_onnx = session.run(["logits"], {session.get_inputs()[0].name: inputs.numpy()})[0]

    model, _ = load_student(work / "student-trained.pt")
    model.eval()
    with torch.inference_mode():
        logits_torch = model(inputs).numpy()
    agreement = float((logits_onnx.argmax(1) == logits_torch.argmax(1)).mean())
    max_diff = float(np.abs(logits_onnx - logits_torch).max())
    bound = TOLERANCE * max(1.0, float(np.abs(logits_torch).max()))
    accuracy_onnx = float((logits_onnx.argmax(1) == labels).mean())
    accuracy_torch = float((logits_torch.argmax(1) == labels).mean())
    passed = agreement >= MIN_AGREEMENT and max_diff <= bound
    report = (f"{'ok' if passed else 'FAILED'}: onnx.checker passed; onnxruntime {onnxruntime.__version__} "
              f"on {len(labels)} Fashion-MNIST test images: top-1 accuracy {accuracy_onnx:.3f} "
              f"(PyTorch student {accuracy_torch:.3f}), top-1 agreement {agreement:.3f}, "
              f"max |onnx - torch| {max_diff:.2e} (bound {bound:.1e}); file {path.stat().st_size} bytes, "
              f"storage {sidecar.get('storage')}")
    return passed, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path, help="the edge job's work folder")
    parser.add_argument("--samples", type=int, default=2000, help="Fashion-MNIST test images (default 2000)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    passed, report = check(args.work, args.samples)
    print(report)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
