"""`lnpt train` (label-free guided training) and `lnpt eval` (accuracy, sparsity, agreement)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from lnpt.shared.cli import add_config_options, add_format_option, config_from_args, emit, flag_overrides

TEACHER_HELP = ("teacher to learn from: HOST:PORT of a guidance server (several, comma-separated, are "
                "balanced round-robin by gRPC), or a teacher model file for offline runs "
                "(default: client.addresses)")


def add_client_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection to the teacher ([client] config section)")
    group.add_argument("--insecure", action="store_true", default=None, help="plaintext gRPC (no TLS); for local tests only")
    group.add_argument("--ca-cert", metavar="PEM", help="CA that signed the server certificate (default: system roots)")
    group.add_argument("--client-cert", metavar="PEM", help="client certificate for mutual TLS")
    group.add_argument("--client-key", metavar="PEM", help="private key of --client-cert")
    group.add_argument("--token-file", metavar="FILE", help="file holding the bearer token")
    group.add_argument("--server-name", help="TLS server name to verify (when connecting by IP)")
    group.add_argument("--prefetch", type=int, metavar="N", help="batches requested ahead of training (default 4)")


CLIENT_FLAGS = {flag: f"client.{flag}" for flag in (
    "insecure", "ca_cert", "client_cert", "client_key", "token_file", "server_name", "prefetch")}
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
    import torch

    from lnpt.edge.student import load_student, save_student
    from lnpt.edge.teachers import open_teacher
    from lnpt.edge.training.checkpoints import load_checkpoint
    from lnpt.edge.training.image_source import ImageSource
    from lnpt.edge.training.target_cache import TargetCache
    from lnpt.edge.training.trainer import GuidedTrainer, sample_keys

    config = config_from_args(args, flag_overrides(args, TRAIN_FLAGS))
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    model, record = load_student(args.student)
    out = Path(args.out or Path(args.student).with_name(Path(args.student).stem + "-trained.pt"))
    checkpoint = Path(args.checkpoint or str(out) + ".ckpt")
    images = ImageSource.open(args.data, record.input_spec, config.data.root or None)

    # The teacher version this run must use: the checkpoint's when resuming (unless --force).
    resume_version = load_checkpoint(checkpoint)["teacher_version"] if args.resume else ""
    known_version = resume_version or record.extra.get("teacher_version", "")
    cache = keys = source = None
    version, teacher_dim = known_version, None
    if config.train.target_cache and known_version:
        cache = TargetCache(config.train.target_cache, known_version)
        keys = sample_keys(images)
        if all(k in cache.rows for k in keys):  # everything cached: train offline, never dial the teacher
            teacher_dim = cache.feature_dim
        else:
            cache = None
    if teacher_dim is None:
        source = open_teacher(args.teacher, config.client, "" if args.force else resume_version)
        version = source.version
        teacher_dim = source.info.feature_dim
        source.check_student(record.input_spec.shape, model.num_classes, model.feature_dim,
                             projector=teacher_dim != model.feature_dim)
        if config.train.target_cache and cache is None:
            cache = TargetCache(config.train.target_cache, version)
    log_file = open(args.log_jsonl, "a") if args.log_jsonl else None

    def log(event: dict) -> None:
        if log_file:
            log_file.write(json.dumps(event, default=str) + "\n")
            log_file.flush()

    try:
        trainer = GuidedTrainer(model, record.input_spec, images, source, train=config.train,
                                objective=config.objective, teacher_version=version, teacher_dim=teacher_dim,
                                student_version=record.version, checkpoint_path=checkpoint, cache=cache,
                                cache_keys=keys,
                                log=log, progress=not args.no_progress)
        if args.resume:
            trainer.resume(force=args.force)
        result = trainer.run()
    finally:
        if log_file:
            log_file.close()
        if source is not None:
            source.close()
    carried = {k: v for k, v in record.extra.items() if k not in ("masks", "teacher_version", "structured")}
    saved = save_student(out, model, input_spec=record.input_spec, class_names=record.class_names,
                         teacher_version=version, structured=bool(record.extra.get("structured")),
                         extra={**carried, "training": {"steps": result.steps, "final_loss": result.final_loss,
                                                        "data": images.name}})
    summary = {**result.to_dict(), "out": str(out), "checkpoint": str(checkpoint), "student_version": saved.version}
    emit(args, summary, f"trained {result.steps}/{result.total_steps} steps in {result.seconds:.1f}s "
                        f"(waited {result.target_wait_seconds:.1f}s for targets), final loss "
                        f"{result.final_loss:.4f}; saved {out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from lnpt.edge.student import load_student
    from lnpt.edge.teachers import open_teacher
    from lnpt.edge.evaluation import evaluate, labeled_folder
    from lnpt.shared.data import load_fashion_mnist

    config = config_from_args(args, flag_overrides(args, CLIENT_FLAGS))
    model, record = load_student(args.student)
    if args.data:
        images, labels = labeled_folder(args.data, record.input_spec, record.class_names)
    else:
        images, labels = load_fashion_mnist(train=False, root=config.data.root or None)
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    teacher = open_teacher(args.teacher, config.client) if args.teacher else None
    try:
        result = evaluate(model, record.input_spec, images, labels, teacher, gap_kind=config.objective.gap)
    finally:
        if teacher is not None:
            teacher.close()
    result = {"student": args.student, "data": args.data or "fashion-mnist:test", **result}
    lines = [f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in result.items()]
    emit(args, result, "\n".join(lines))
    return 0
