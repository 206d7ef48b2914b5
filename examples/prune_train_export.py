"""The whole LNPT job from Python, with the public API only (no `lnpt` command, no output files read back).

1. the cloud trains a teacher with labels and serves it on loopback (a background server);
2. the device writes its unlabeled images to a folder, prunes a fresh LeNet-5 to 90 % sparsity with
   the LNPT score through the server, and trains it label-free against the streamed targets;
3. the device exports a sparse ONNX file (verified in ONNX Runtime) and the student is evaluated on
   the labeled test set (labels are read only there).

    python examples/prune_train_export.py                 # a few minutes on 2 CPU cores
    python examples/prune_train_export.py --quick         # seconds: tiny settings, for the test suite
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from lnpt.cloud import serve, train_teacher
from lnpt.edge import evaluate, export, open_teacher, prune, train
from lnpt.shared import Config, load_fashion_mnist
from lnpt.shared.config import updated
from lnpt.shared.data import write_image_folder


def main(out: Path, quick: bool) -> None:
    torch.set_num_threads(2)
    # --- cloud: a teacher trained with labels, served over gRPC --------------------------------
    config = updated(Config(), "teacher", model="lenet5", epochs=1 if quick else 5,
                     train_samples=2000 if quick else 0, test_samples=500 if quick else 0)
    teacher = train_teacher(config, str(out / "teacher.pt"))
    print(f"teacher: {teacher['arch']} at {teacher['test_accuracy']:.3f} test accuracy")

    # --- device: unlabeled images on disk -------------------------------------------------------
    images, _ = load_fashion_mnist(train=True)  # the labels stay here: the device gets pixels only
    folder = out / "unlabeled"
    write_image_folder(images[: 640 if quick else 20000], folder)

    with serve(out / "teacher.pt", port=0, insecure=True, metrics_port=-1, background=True) as address:
        device = updated(Config(), "client", insecure=True)
        with open_teacher(address, device.client) as source:
            pruned = prune("lenet5", source, folder, sparsity=0.9, out=out / "student.pt")
            print(f"pruned to sparsity {pruned.sparsity:.3f} with the {pruned.report['score']} score")
            trained = train(pruned.student, source, folder, out=out / "student-trained.pt",
                            epochs=1, max_steps=20 if quick else 0, threads=2)
            print(f"trained {trained.steps} steps label-free; waited for targets "
                  f"{trained.target_wait_fraction:.1%} of the time")

    onnx = export(trained.out, out / "student.onnx", storage="sparse")
    print(f"exported {onnx.path} ({onnx.bytes} bytes, max |ONNX - PyTorch| {onnx.max_abs_diff:.1e})")
    result = evaluate(trained.out, limit=1000 if quick else 0)
    print(f"student test accuracy {result.accuracy:.3f} at sparsity {result.sparsity:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for the files (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="tiny settings (seconds), as the test suite runs it")
    args = parser.parse_args()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        main(args.out, args.quick)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp), args.quick)
