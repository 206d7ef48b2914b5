"""`lnpt train` (label-free guided training) and `lnpt eval` (accuracy, sparsity, agreement):
parse -> config -> one call of `lnpt.edge.train` / `lnpt.edge.evaluate` -> print."""
from __future__ import annotations

import argparse

from lnpt.edge.cli import CLIENT_FLAGS, add_client_options
from lnpt.shared.cli import add_config_options, add_format_option, config_from_args, emit, json_lines

TEACHER_HELP = ("teacher to learn from: HOST:PORT of a guidance server (several, comma-separated, are "
                "balanced round-robin by gRPC), or a teacher model file for offline runs "
                "(default: client.addresses)")

TRAIN_FLAGS = {**CLIENT_FLAGS, **{flag: f"train.{flag}" for flag in (
    "epochs", "batch_size", "lr", "max_steps", "checkpoint_every", "seed", "threads", "optimizer", "device",
    "augment", "target_cache")}}


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train", help="train a student on unlabeled images with targets streamed from the teacher",
        description="Label-free guided training: minimise the learning gap (penultimate features) plus "
                    "logit distillation against the teacher, on images whose labels are never read. "
                    "Masks stay fixed. Checkpoints let --resume continue exactly where a run stopped.")
    train.add_argument("--student", required=True, help="student model file (e.g. from `lnpt prune`)")
    train.add_argument("--data", help="folder of images (any depth; sub-folder names are ignored, never used "
                                      "as labels); default: Fashion-MNIST training images without labels")
    train.add_argument("--teacher", help=TEACHER_HELP)
    train.add_argument("--out", help="trained student file (default: <student>-trained.pt)")
    train.add_argument("--checkpoint", help="training checkpoint file (default: <out>.ckpt)")
    train.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    train.add_argument("--overwrite", action="store_true",
                       help="start over, replacing an existing --out and --checkpoint (refused otherwise)")
    train.add_argument("--force", action="store_true",
                       help="resume even if the checkpoint was made with another teacher version")
    train.add_argument("--epochs", type=int, help="passes over the data (train.epochs)")
    train.add_argument("--batch-size", type=int, help="images per step (train.batch_size)")
    train.add_argument("--lr", type=float, help="learning rate (train.lr)")
    train.add_argument("--optimizer", choices=("sgd", "adam"), help="train.optimizer")
    train.add_argument("--max-steps", type=int, help="stop after this many steps in all (train.max_steps)")
    train.add_argument("--checkpoint-every", type=int, metavar="STEPS",
                       help="checkpoint every N steps besides each epoch (train.checkpoint_every; 0 = per epoch only)")
    train.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                       help="train on the pixels as they are")
    train.add_argument("--target-cache", metavar="DIR",
                       help="cache targets of un-augmented samples in DIR so later epochs/runs need no network; "
                            "turns augmentation off (cached targets exist only for the original pixels)")
    train.add_argument("--seed", type=int, help="seed of the sample order and augmentation (train.seed)")
    train.add_argument("--threads", type=int, help="torch threads (train.threads; 0 = torch default)")
    train.add_argument("--device", help="train on cpu (default) or cuda / cuda:N, e.g. a Jetson's GPU (train.device)")
    train.add_argument("--log-jsonl", metavar="FILE", help="append one JSON line per step/epoch/checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_client_options(train)
    add_config_options(train)
    add_format_option(train)
    train.set_defaults(handler=run_train)

    ev = sub.add_parser(
        "eval", help="accuracy, sparsity and teacher agreement of a student",
        description="Evaluate a student. Labels are read here (and only here): the Fashion-MNIST test set "
                    "by default, or --data DIR with one sub-folder per class.")
    ev.add_argument("--student", required=True, help="student model file")
    ev.add_argument("--data", help="test folder with class sub-folders (default: Fashion-MNIST test set)")
    ev.add_argument("--teacher", help="teacher model file or HOST:PORT, to report agreement and learning gap")
    ev.add_argument("--limit", type=int, default=0, help="first N test images only (0 = all)")
    add_client_options(ev)
    add_config_options(ev)
    add_format_option(ev)
    ev.set_defaults(handler=run_eval)


def run_train(args: argparse.Namespace) -> int:
    from lnpt.edge.training.train import train

    config = config_from_args(args, TRAIN_FLAGS)
    with json_lines(args.log_jsonl) as log:
        result = train(args.student, args.teacher, args.data, config=config, out=args.out, checkpoint=args.checkpoint,
                       resume=args.resume, overwrite=args.overwrite, force=args.force, log=log,
                       progress=not args.no_progress)
    notes = "".join(f"\nnote: {note}" for note in result.notes)
    emit(args, result.to_dict(), f"trained {result.steps}/{result.total_steps} steps in {result.seconds:.1f}s "
                                 f"(waited {result.target_wait_seconds:.1f}s for targets, {result.target_wait_fraction:.1%}), final loss "
                                 f"{result.final_loss:.4f}; saved {result.out}{notes}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from lnpt.edge.evaluation import evaluate

    config = config_from_args(args, CLIENT_FLAGS)
    result = evaluate(args.student, args.data, teacher=args.teacher, config=config, limit=args.limit).to_dict()
    emit(args, result, "\n".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in result.items()))
    return 0
