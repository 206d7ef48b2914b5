"""`lnpt prune`: prune a freshly initialised student before training, guided by the teacher.

Heavy imports (torch, grpc, torchvision) stay inside the handler so `lnpt --help` stays fast.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lnpt.shared.cli import add_config_options, add_format_option, config_from_args, emit, flag_overrides

SCORES = ("lnpt", "snip", "grasp", "synflow", "magnitude", "random")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "prune", help="prune a student before training (LNPT score and baselines)",
        description="Build a student at initialisation, score its weights on unlabeled samples with the "
                    "teacher's targets, and save it with fixed pruning masks (and optional channel pruning). "
                    "Writes the student, a JSON report and a PNG chart of density per layer.",
        epilog="examples:\n  lnpt prune --model resnet20 --sparsity 0.95 --teacher teacher.pt --out student.pt\n"
               "  lnpt prune --model resnet20 --score synflow --sparsity 0.98 --teacher 10.0.0.5:50051 "
               "--out s.pt\n  lnpt prune --score lnpt --sparsity 0.9 --structured 0.5 --data photos/ "
               "--teacher teacher.pt --out s.pt --format json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="student architecture (default: the teacher's)")
    parser.add_argument("--score", choices=SCORES,
                        help="pruning score: lnpt (label-free learning gap, default), snip/grasp (cross-entropy "
                             "on labels unless --objective learning-gap), synflow (data-free), magnitude, random")
    parser.add_argument("--sparsity", type=float,
                        help="fraction of Conv2d/Linear weights to remove, e.g. 0.95 (0 = no masks)")
    parser.add_argument("--structured", type=float, metavar="RATIO",
                        help="first remove this fraction of channels (Torch-Pruning, Taylor importance of the "
                             "same objective); keeps the feature width the teacher expects")
    parser.add_argument("--data", metavar="DIR",
                        help="folder of unlabeled images (any depth; labels never read); default: the "
                             "Fashion-MNIST training images")
    parser.add_argument("--teacher", metavar="ADDRESS|CHECKPOINT",
                        help="an existing teacher file (offline), or the guidance server's host:port "
                             "(default: client.addresses of the config, when the score needs the teacher)")
    parser.add_argument("--insecure", action="store_true", default=None, help="connect to the server without TLS")
    parser.add_argument("--out", required=True, metavar="FILE", help="student file to write")
    parser.add_argument("--scope", choices=("global", "local"), help="global top-k (default) or per-layer top-k")
    parser.add_argument("--samples", type=int, help="unlabeled samples to score with (default 10 x classes)")
    parser.add_argument("--batch-size", type=int, help="samples per forward/backward (default 64)")
    parser.add_argument("--min-layer-density", type=float, metavar="FRACTION",
                        help="every layer keeps at least this fraction of its weights (default 0.01)")
    parser.add_argument("--keep-classifier-dense", action="store_true", default=None, help="never prune the final Linear")
    parser.add_argument("--objective", choices=("auto", "learning-gap", "cross-entropy"),
                        help="objective of snip/grasp and channel pruning (auto: learning gap for lnpt, "
                             "cross-entropy for snip/grasp)")
    parser.add_argument("--synflow-rounds", type=int, help="SynFlow rounds (default 100)")
    parser.add_argument("--synflow-float64", action="store_true", default=None, help="run SynFlow in float64")
    parser.add_argument("--seed", type=int, help="seed of the student's initialisation and the sample choice")
    parser.add_argument("--report", metavar="FILE", help="JSON report path (default: OUT with .prune.json)")
    parser.add_argument("--chart", metavar="FILE", help="PNG chart path (default: OUT with .prune.png)")
    add_config_options(parser)
    add_format_option(parser)
    parser.set_defaults(handler=run_prune)


PRUNE_FLAGS = {**{flag: f"prune.{flag}" for flag in (
    "score", "sparsity", "structured", "scope", "samples", "batch_size", "min_layer_density", "objective",
    "synflow_rounds", "seed", "keep_classifier_dense", "synflow_float64")}, "insecure": "client.insecure"}


def run_prune(args: argparse.Namespace) -> int:
    import torch

    from lnpt.edge.pruning import pipeline
    from lnpt.edge.pruning.masks import PruneError
    from lnpt.edge.pruning.report import format_table, write_chart, write_json
    from lnpt.edge.teachers import open_teacher
    from lnpt.edge.student import save_student
    from lnpt.shared.zoo import MODEL_NAMES, build_model

    config = config_from_args(args, flag_overrides(args, PRUNE_FLAGS))
    cfg = config.prune
    progress = sys.stderr.isatty()
    objective_kind = pipeline.resolve_objective(cfg.score, cfg.objective, cfg.structured > 0)
    needs_teacher = args.teacher is not None or objective_kind == "learning-gap"
    teacher = open_teacher(args.teacher, config.client) if needs_teacher else None  # None: client.addresses
    try:
        spec, num_classes, class_names = student_shape(teacher, config.data)
        arch = args.model or (teacher.info.teacher_id if teacher else None)
        if arch not in MODEL_NAMES:
            raise PruneError(f"--model {arch!r}: choose one of {', '.join(MODEL_NAMES)}"
                             if arch else "--model is needed when no teacher is given")
        torch.manual_seed(cfg.seed)
        model = build_model(arch, num_classes, spec)
        objective = pipeline.build_objective(objective_kind, config.objective, model.feature_dim,
                                             teacher.info.feature_dim if teacher else None)
        batches = []
        if objective is not None:
            images, labels = load_samples(args.data, spec, cfg.samples or 10 * num_classes, cfg.seed,
                                          config.data.root, with_labels=objective_kind == "cross-entropy")
            batches = pipeline.make_batches(images, spec, cfg.batch_size,
                                            teacher if objective.needs_teacher else None, labels, progress)
        report = pipeline.prune_student(model, batches, cfg, objective, spec, progress)
    finally:
        if teacher is not None:
            teacher.close()
    report.update(model=arch, objective=objective_kind, teacher=teacher.where if teacher else None,
                  teacher_version=teacher.version if teacher else "", data=args.data or "fashion-mnist")
    out = Path(args.out)
    save_student(out, model, input_spec=spec, class_names=class_names,
                 teacher_version=report["teacher_version"], structured=cfg.structured > 0,
                 extra={"prune": {k: v for k, v in report.items() if k != "weights_per_layer"}})
    report_path = Path(args.report) if args.report else out.with_suffix(".prune.json")
    chart_path = Path(args.chart) if args.chart else out.with_suffix(".prune.png")
    report.update(student=str(out), report=str(report_path), chart=str(chart_path))
    write_json(report, report_path)
    write_chart(report, chart_path)
    emit(args, report, f"{format_table(report)}\nwrote {out}, {report_path}, {chart_path}")
    return 0


def student_shape(teacher, data_config):
    """Input spec, classes and class names: the teacher's; without one, Fashion-MNIST's classes
    and normalisation, shaped by [data]."""
    from lnpt.shared.data import FASHION_MNIST_CLASSES, FASHION_MNIST_SPEC
    from lnpt.shared.zoo import InputSpec

    if teacher is not None:
        return teacher.input_spec, teacher.info.num_classes, teacher.class_names
    channels = data_config.channels
    spec = InputSpec(channels, data_config.size, FASHION_MNIST_SPEC.mean * channels,
                     FASHION_MNIST_SPEC.std * channels)
    return spec, len(FASHION_MNIST_CLASSES), list(FASHION_MNIST_CLASSES)


def load_samples(folder, spec, wanted: int, seed: int, data_root: str, with_labels: bool):
    """`wanted` random uint8 images (and labels only when asked, for the supervised baselines)."""
    import torch

    from lnpt.edge.pruning.masks import PruneError
    from lnpt.edge.pruning.pipeline import pick_samples
    from lnpt.shared.data import UnlabeledImageFolder, load_fashion_mnist

    if folder:
        if with_labels:
            raise PruneError(f"cross-entropy needs labels, and {folder} is read without labels; use "
                             "--objective learning-gap, or the default Fashion-MNIST data")
        dataset = UnlabeledImageFolder(folder, spec)
        return torch.stack([dataset[int(i)] for i in pick_samples(len(dataset), wanted, seed)]), None
    images, labels = load_fashion_mnist(train=True, root=data_root or None)
    chosen = pick_samples(len(images), wanted, seed)
    return images[chosen], (labels[chosen] if with_labels else None)
