"""`lnpt analyze learning-gap`: does the learning gap track accuracy better than weight distances?

Experiment 1 of the method (docs/RESULTS.md). A dense network with the teacher's architecture is
trained from a fresh initialisation (its seed differs from the teacher's); before training (epoch 0)
and after every epoch it logs
- ||theta_t - theta_0||: distance of the weights to their initialisation,
- ||theta_t - theta_T||: distance to the mature teacher's weights (same architecture),
- the learning gap (mse of penultimate features) against the teacher on held-out test images,
- 1 - linear CKA of the same features (an alignment-free gap: independently trained networks order
  their neurons differently, which the mse gap cannot see past),
- test accuracy,
and reports the Spearman rank correlation of each with accuracy over the epochs. Outputs
OUT/learning_gap.json and OUT/learning_gap.png (one panel per quantity).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lnpt.shared.cli import add_format_option, emit

QUANTITIES = ("distance_to_init", "distance_to_teacher", "learning_gap", "learning_gap_normalized", "cka_gap")
LABELS = {"accuracy": "test accuracy", "distance_to_init": "||θ_t − θ_0||",
          "distance_to_teacher": "||θ_t − θ_T||", "learning_gap": "learning gap (mse) vs teacher",
          "learning_gap_normalized": "learning gap (normalized) vs teacher",
          "cka_gap": "1 − linear CKA vs teacher features"}


def register(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser("learning-gap", help="learning gap vs weight distances as predictors of accuracy",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", help="mature teacher file (default: OUT/teacher.pt, trained quickly when "
                                          "missing with --teacher-arch/--teacher-epochs/--teacher-samples)")
    parser.add_argument("--teacher-arch", default="lenet5", help="architecture of a teacher trained here (lenet5)")
    parser.add_argument("--teacher-epochs", type=int, default=3, help="epochs of a teacher trained here (3)")
    parser.add_argument("--teacher-samples", type=int, default=20000,
                        help="training images of a teacher trained here (20000; 0 = all 60k)")
    parser.add_argument("--training", choices=("supervised", "guided"), default="supervised",
                        help="how the dense network learns: cross-entropy on labels (default) or label-free "
                             "learning gap + KD against the teacher")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    parser.add_argument("--train-samples", type=int, default=10000,
                        help="Fashion-MNIST training images (seeded subset; default 10000, 0 = all)")
    parser.add_argument("--test-samples", type=int, default=0,
                        help="held-out test images for accuracy and learning gap (default 0 = all 10000)")
    parser.add_argument("--lr", type=float, help="SGD learning rate (default 0.05 supervised, 0.01 guided)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the network's initialisation and data "
                                                            "order (default 1; teachers trained here use 0)")
    parser.add_argument("--data", help="your labeled training images (class sub-folders or a .csv of path,label) "
                                       "instead of Fashion-MNIST; needs --test-data and --teacher")
    parser.add_argument("--test-data", help="your held-out labeled test images (folder or .csv)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0 = torch's choice)")
    parser.add_argument("--out", default="results/learning-gap", help="output folder (default results/learning-gap)")
    add_format_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from lnpt.lab.paper.experiment import ExperimentError

    if args.threads:
        torch.set_num_threads(args.threads)
    for name in ("epochs", "teacher_epochs"):
        if getattr(args, name) < 1:
            raise ExperimentError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("train_samples", "test_samples", "teacher_samples"):
        if getattr(args, name) < 0:
            raise ExperimentError(f"--{name.replace('_', '-')} must not be negative (0 = all)")
    result = learning_gap_experiment(
        out=Path(args.out), teacher_path=Path(args.teacher) if args.teacher else None,
        teacher_arch=args.teacher_arch, teacher_epochs=args.teacher_epochs, teacher_samples=args.teacher_samples,
        training=args.training, epochs=args.epochs, train_samples=args.train_samples,
        test_samples=args.test_samples, lr=args.lr, seed=args.seed, device=args.device,
        data=Path(args.data) if args.data else None, test_data=Path(args.test_data) if args.test_data else None)
    emit(args, result, report_text(result))
    return 0


def flat_parameters(model) -> "torch.Tensor":  # noqa: F821 - torch is imported lazily
    import torch

    return torch.cat([p.detach().float().flatten().cpu() for _, p in sorted(model.named_parameters())])


def learning_gap_experiment(out: Path, teacher_path: Path | None, *, teacher_arch: str = "lenet5",
                            teacher_epochs: int = 3, teacher_samples: int = 20000, training: str = "supervised",
                            epochs: int = 10, train_samples: int = 10000, test_samples: int = 0,
                            lr: float | None = None, seed: int = 1, device: str = "cpu",
                            data: Path | None = None, test_data: Path | None = None) -> dict[str, Any]:
    import torch

    from lnpt.lab.paper import experiment as ex
    from lnpt.shared.inference import top1
    from lnpt.shared.teacher_model import Teacher
    from lnpt.shared.models import build_model

    out.mkdir(parents=True, exist_ok=True)
    trained = None
    if data is not None and teacher_path is None:
        raise ex.ExperimentError("an analysis on your own data needs --teacher: a teacher trained on it")
    if teacher_path is None:
        teacher_path = out / "teacher.pt"
        trained = ex.ensure_teacher(teacher_path, teacher_arch, teacher_samples, teacher_epochs, device)
    elif not teacher_path.is_file():
        raise ex.ExperimentError(f"teacher file {teacher_path} does not exist; omit --teacher to train one here")
    teacher = Teacher.load(str(teacher_path))
    spec = teacher.input_spec
    train_x, train_y, test_x, test_y = ex.load_split(teacher, train_samples, test_samples, data, test_data)
    teacher_test = ex.teacher_targets(teacher, test_x)
    guidance = ex.teacher_targets(teacher, train_x) if training == "guided" else None

    torch.manual_seed(seed)
    model = build_model(teacher.arch, len(teacher.record.class_names), spec).to(device)
    theta_0 = flat_parameters(model)
    theta_teacher = flat_parameters(teacher.model)
    history: list[dict[str, Any]] = []

    def record(epoch: int, loss: float | None) -> None:
        theta = flat_parameters(model)
        metrics = ex.measure(model, spec, test_x, test_y, teacher_test)
        history.append({"epoch": epoch, "train_loss": loss, "accuracy": metrics["accuracy"],
                        "learning_gap": metrics["learning_gap"], "cka_gap": metrics["cka_gap"],
                        "learning_gap_normalized": metrics["learning_gap_normalized"],
                        "distance_to_init": float((theta - theta_0).norm()),
                        "distance_to_teacher": float((theta - theta_teacher).norm()),
                        "teacher_agreement": metrics["teacher_agreement"]})
        print(f"epoch {epoch}: accuracy {metrics['accuracy']:.4f}, learning gap {metrics['learning_gap']:.4f}, "
              f"|θ−θ0| {history[-1]['distance_to_init']:.3f}, |θ−θT| {history[-1]['distance_to_teacher']:.3f}",
              file=sys.stderr, flush=True)

    record(0, None)
    lr = lr if lr is not None else (0.01 if training == "guided" else 0.05)
    targets = ex.targets_for(training, guidance, train_y)
    ex.train(model, spec, train_x, targets, ex.objective_for(training, model.feature_dim, teacher.feature_dim),
             ex.Recipe(epochs, lr=lr), seed=seed, device=device, on_epoch=record)

    accuracy = [h["accuracy"] for h in history]
    correlation = {q: ex.spearman([h[q] for h in history], accuracy) for q in QUANTITIES}
    result = {
        "teacher": {"path": str(teacher_path), "arch": teacher.arch, "version": teacher.version,
                    "test_accuracy": top1(teacher_test.logits, test_y),
                    "trained_now": trained is not None},
        "settings": {"training": training, "epochs": epochs, "train_samples": len(train_x),
                     "test_samples": len(test_x), "lr": lr, "seed": seed, "device": device,
                     "optimizer": "sgd nesterov momentum 0.9, weight decay 5e-4, cosine, batch 64, no augmentation"},
        "history": history,
        "spearman_with_accuracy": correlation,
        "json": str(out / "learning_gap.json"), "plot": str(out / "learning_gap.png"),
    }
    ex.write_json(out / "learning_gap.json", result)
    plot(history, correlation, result, out / "learning_gap.png")
    return result


def plot(history: list[dict[str, Any]], correlation: dict[str, float], result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lnpt.shared.files import atomic_write

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 1 + len(QUANTITIES), figsize=(4 * (1 + len(QUANTITIES)), 3.8))
    for ax, quantity in zip(axes, ("accuracy", *QUANTITIES)):
        ax.plot(epochs, [h[quantity] for h in history], marker="o")
        title = LABELS[quantity]
        if quantity in correlation:
            title += f"\nSpearman with accuracy: {correlation[quantity]:+.2f}"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    s = result["settings"]
    fig.suptitle(f"{result['teacher']['arch']} trained {s['training']} on {s['train_samples']} Fashion-MNIST images; "
                 f"teacher {100 * result['teacher']['test_accuracy']:.1f} %", fontsize=11)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def report_text(result: dict[str, Any]) -> str:
    lines = []
    if result["teacher"]["trained_now"]:
        lines.append(f"no --teacher given: trained a {result['teacher']['arch']} teacher quickly into "
                     f"{result['teacher']['path']}")
    lines.append(f"teacher {result['teacher']['arch']} test accuracy {result['teacher']['test_accuracy']:.4f}; "
                 f"network trained {result['settings']['training']}")
    lines.append(f"{'epoch':>5} {'accuracy':>9} {'LG (mse)':>9} {'LG (norm)':>9} {'1-CKA':>9} {'|θ−θ0|':>9} "
                 f"{'|θ−θT|':>9}")
    for h in result["history"]:
        lines.append(f"{h['epoch']:>5} {h['accuracy']:>9.4f} {h['learning_gap']:>9.4f} "
                     f"{h['learning_gap_normalized']:>9.4f} {h['cka_gap']:>9.4f} {h['distance_to_init']:>9.3f} "
                     f"{h['distance_to_teacher']:>9.3f}")
    lines.append("Spearman rank correlation with test accuracy:")
    for quantity, value in result["spearman_with_accuracy"].items():
        lines.append(f"  {LABELS[quantity]:<36} {value:+.3f}")
    lines.append(f"wrote {result['json']} and {result['plot']}")
    return "\n".join(lines)
