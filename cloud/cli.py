"""Subcommands of `lnpt` provided by lnpt.cloud: `serve` and `teacher train|eval`.

Heavy imports (torch, grpc) stay inside the handlers so `lnpt --help` stays fast.
"""
from __future__ import annotations

import argparse

from lnpt.shared.cli import add_config_options, add_format_option, config_from_args, emit


def register(sub: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the `lnpt` parser."""
    register_serve(sub)
    register_teacher(sub)


def register_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve a teacher's feature and logit targets over gRPC",
        description="Start the guidance server: lnpt.v1.Guidance (GetTeacherInfo, StreamTargets), "
                    "grpc.health.v1 and server reflection on --port, Prometheus /metrics on "
                    "server.metrics_port. TLS is on unless --insecure. SIGTERM/SIGINT drain the server "
                    "(health NOT_SERVING, in-flight batches finish) within server.grace_seconds.")
    p.add_argument("--checkpoint", required=True, metavar="T.pt|T.onnx",
                   help="teacher model file (lnpt teacher train), or an ONNX file run by ONNX Runtime "
                        "(outputs: teacher.onnx_features_output / onnx_logits_output; docs/MODELS.md)")
    p.add_argument("--host", help="address to listen on (server.host, default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, help="gRPC port (server.port, default 50051; 0 = any free port)")
    p.add_argument("--metrics-port", type=int,
                   help="Prometheus port (server.metrics_port, default 9464; 0 = any free port, -1 = off)")
    p.add_argument("--health-port", type=int,
                   help="a second port serving only grpc.health.v1, for probes under a connection flood "
                        "(server.health_port, default -1 = off)")
    p.add_argument("--insecure", action="store_true", default=None, help="plaintext gRPC without TLS (local use only)")
    p.add_argument("--cert", help="PEM server certificate (server.cert)")
    p.add_argument("--key", help="PEM private key of --cert (server.key)")
    p.add_argument("--client-ca", help="PEM CA; clients must present a certificate it signed (mutual TLS)")
    p.add_argument("--tokens-file", help="file with one bearer token per line; every call then needs one")
    p.add_argument("--log-format", choices=("text", "json"), help="server.log_format: text or JSON lines")
    add_config_options(p)
    p.set_defaults(handler=run_serve)


SERVE_FLAGS = {"host": "server.host", "port": "server.port", "metrics_port": "server.metrics_port",
               "health_port": "server.health_port",
               "insecure": "server.insecure", "cert": "server.cert", "key": "server.key",
               "client_ca": "server.client_ca", "tokens_file": "server.tokens_file",
               "log_format": "server.log_format"}
TEACHER_FLAGS = {"model": "teacher.model", "weights": "teacher.weights", "feature_node": "teacher.feature_node", "epochs": "teacher.epochs", "batch_size": "teacher.batch_size",
                 "lr": "teacher.lr", "checkpoint_every": "teacher.checkpoint_every", "device": "teacher.device",
                 "root": "data.root", "data": "data.labeled", "val_data": "data.val",
                 "val_fraction": "data.val_fraction", "workers": "data.workers"}
TEACHER_EVAL_FLAGS = {"root": "data.root", "workers": "data.workers"}


def run_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args, SERVE_FLAGS)
    from lnpt.cloud.logs import route_native_stderr, setup_logging
    from lnpt.cloud.server import serve

    setup_logging(config.server.log_format)
    route_native_stderr()  # gRPC core's own messages become escaped one-line records too
    serve(config, args.checkpoint)
    return 0


def register_teacher(sub: argparse._SubParsersAction) -> None:
    teacher = sub.add_parser("teacher", help="train or evaluate the mature teacher (with labels, in the cloud)")
    actions = teacher.add_subparsers(dest="action", metavar="ACTION", required=True)

    train = actions.add_parser(
        "train", help="train a teacher with labels: Fashion-MNIST, or your own labeled folder or CSV",
        description="Supervised SGD with momentum and a cosine schedule. Also runs under "
                    "`torchrun --standalone --nproc_per_node=N --no-python lnpt teacher train ...` (DistributedDataParallel; "
                    "gloo on CPU, nccl on GPU). Writes a teacher model file atomically. Checkpoints every "
                    "teacher.checkpoint_every steps, per epoch and on Ctrl-C/SIGTERM; --resume continues exactly "
                    "where a run stopped.")
    train.add_argument("--model", help="model spec (teacher.model): a zoo name (resnet20), torchvision:NAME[:WEIGHTS] "
                                       "(torchvision:resnet50:IMAGENET1K_V2) or package.module:factory")
    train.add_argument("--weights", metavar="FILE", help="state dict or checkpoint to start from (teacher.weights)")
    train.add_argument("--feature-node", metavar="NAME",
                       help="module whose output are the features (teacher.feature_node; default: the input "
                            "of the final Linear)")
    train.add_argument("--epochs", type=int, help="teacher.epochs")
    train.add_argument("--batch-size", type=int, help="teacher.batch_size (per process)")
    train.add_argument("--lr", type=float, help="teacher.lr (peak learning rate)")
    train.add_argument("--out", required=True, metavar="T.pt", help="teacher model file to write")
    train.add_argument("--checkpoint", metavar="FILE", help="training checkpoint (default: <out>.ckpt)")
    train.add_argument("--checkpoint-every", type=int, metavar="STEPS",
                       help="checkpoint every N steps besides each epoch (teacher.checkpoint_every; 0 = per epoch only)")
    train.add_argument("--resume", action="store_true", help="continue exactly from --checkpoint")
    train.add_argument("--overwrite", action="store_true",
                       help="start over, replacing an existing --out and --checkpoint (refused otherwise)")
    train.add_argument("--device", help="cpu, cuda or cuda:N (teacher.device; default: cuda when available)")
    train.add_argument("--root", help="Fashion-MNIST cache folder (data.root)")
    add_data_options(train)
    held_out = train.add_mutually_exclusive_group()
    held_out.add_argument("--val-data", metavar="DIR|CSV", help="labeled validation images (data.val)")
    held_out.add_argument("--val-fraction", type=float, metavar="F",
                          help="hold out a seeded, stratified fraction F of --data for validation (data.val_fraction)")
    add_config_options(train)
    add_format_option(train)
    train.set_defaults(handler=run_teacher_train)

    evaluate = actions.add_parser("eval", help="accuracy of a teacher on Fashion-MNIST's test set or your labeled images")
    evaluate.add_argument("--checkpoint", required=True, metavar="T.pt", help="teacher model file")
    evaluate.add_argument("--batch-size", type=int, default=512, help="evaluation batch size")
    evaluate.add_argument("--limit", type=int, default=0, help="first N test images only (0 = all)")
    evaluate.add_argument("--root", help="Fashion-MNIST cache folder (data.root)")
    add_data_options(evaluate, "labeled test images: a folder with one sub-folder per class (the teacher's "
                                "class names) or a .csv of path,label rows (default: Fashion-MNIST's test set)")
    add_config_options(evaluate)
    add_format_option(evaluate)
    evaluate.set_defaults(handler=run_teacher_eval)


def add_data_options(parser: argparse.ArgumentParser, data_help: str = "") -> None:
    parser.add_argument("--data", metavar="DIR|CSV", help=data_help or (
        "labeled training images (data.labeled): a folder with one sub-folder per class (sorted names are "
        "the classes) or a .csv of path,label rows (data.csv_path_column/csv_label_column); "
        "default: Fashion-MNIST"))
    parser.add_argument("--workers", type=int, metavar="N", help="image decoding processes (data.workers)")


def run_teacher_train(args: argparse.Namespace) -> int:
    config = config_from_args(args, TEACHER_FLAGS)
    from lnpt.cloud.logs import setup_logging
    from lnpt.cloud.teacher_training import TeacherTrainingInterrupted, train_teacher

    setup_logging(config.server.log_format)
    try:
        result = train_teacher(config, args.out, json_lines=args.format == "json", checkpoint=args.checkpoint,
                               resume=args.resume, overwrite=args.overwrite)
    except TeacherTrainingInterrupted as exc:
        raise TeacherTrainingInterrupted(f"{exc}:\n  {resume_command()}", exc.step, exc.checkpoint) from None
    if result is None:  # a non-zero rank under torchrun: rank 0 reports
        return 0
    tested = "no validation set" if result["test_accuracy"] is None else \
        f"accuracy {result['test_accuracy']:.4f} on {result['evaluated_on']}"
    resumed = f", resumed from step {result['resumed_from_step']}" if result["resumed_from_step"] else ""
    emit(args, result, f"wrote {result['path']}: {result['arch']} version {result['version']}, "
                       f"{tested} after {result['epochs']} epochs ({result['steps']} steps{resumed}; "
                       f"{result['data']['bad_files']} bad files skipped)")
    return 0


def resume_command() -> str:
    """This very command with --resume (instead of --overwrite), ready to paste into a shell; a
    placeholder when lnpt was called from Python (main([...]) leaves sys.argv to its caller)."""
    import shlex
    import sys

    if sys.argv[1:3] != ["teacher", "train"]:
        return "lnpt teacher train ... --resume (the same options)"
    words = [word for word in sys.argv[1:] if word not in ("--overwrite", "--resume")]
    return shlex.join(["lnpt", *words, "--resume"])


def run_teacher_eval(args: argparse.Namespace) -> int:
    config = config_from_args(args, TEACHER_EVAL_FLAGS)
    from lnpt.cloud.teacher_training import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, batch_size=args.batch_size, limit=args.limit,
                                 root=config.data.root or None, data=args.data, config=config.data)
    emit(args, result, f"{result['arch']} version {result['version']}: accuracy {result['test_accuracy']:.4f} "
                       f"on {result['samples']} images of {result['data']} ({result['bad_files']} bad files skipped)")
    return 0
