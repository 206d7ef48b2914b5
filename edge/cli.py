"""Subcommands of `lnpt` that run on the edge device: prune, train, eval, export and `edge run`.

Each command group lives beside the code it drives and adds itself through `register`; every handler
is parse -> config -> one library call -> print. Heavy imports stay inside the handlers.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from lnpt.shared.cli import add_config_options, add_format_option, config_from_args, emit, json_lines

COMMAND_MODULES = ("lnpt.edge.pruning.cli", "lnpt.edge.training.cli", "lnpt.edge.onnx.cli")

CLIENT_FLAGS = {flag: f"client.{flag}" for flag in (
    "insecure", "ca_cert", "client_cert", "client_key", "token_file", "server_name", "prefetch")}


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """The connection to the teacher ([client] config section), the same on every edge command."""
    group = parser.add_argument_group("connection to the teacher ([client] config section)")
    group.add_argument("--insecure", action="store_true", default=None, help="plaintext gRPC (no TLS); for local tests only")
    group.add_argument("--ca-cert", metavar="PEM", help="CA that signed the server certificate (default: system roots)")
    group.add_argument("--client-cert", metavar="PEM", help="client certificate for mutual TLS")
    group.add_argument("--client-key", metavar="PEM", help="private key of --client-cert")
    group.add_argument("--token-file", metavar="FILE", help="file holding the bearer token")
    group.add_argument("--server-name", help="TLS server name to verify (when connecting by IP)")
    group.add_argument("--prefetch", type=int, metavar="N", help="batches requested ahead of training "
                       "(default 0: sized from round trip and step time)")


def register(sub: argparse._SubParsersAction) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    edge = sub.add_parser("edge", help="an edge device's whole job: prune once, train with resume, export once")
    actions = edge.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = actions.add_parser(
        "run", help="run (or continue) the edge job described by the config file",
        description="Prune once (WORK/student.pt), train with resume from WORK/train.ckpt "
                    "(WORK/student-trained.pt), export once (WORK/student.onnx). Safe to start again after "
                    "any stop: finished stages are kept, an interrupted training run resumes, a finished "
                    "job only verifies its files. Settings: the [job] section and every stage's section.")
    run.add_argument("--work", metavar="DIR", help="job folder (job.work)")
    run.add_argument("--data", metavar="DIR", help="unlabeled images (job.data; default Fashion-MNIST)")
    run.add_argument("--teacher", metavar="ADDRESS|FILE", help="guidance server host:port or teacher file (job.teacher)")
    run.add_argument("--no-export", dest="export", action="store_false", default=None, help="stop after training")
    run.add_argument("--log-jsonl", metavar="FILE", help="append one JSON line per training step/epoch/checkpoint")
    add_client_options(run)
    add_config_options(run)
    add_format_option(run)
    run.set_defaults(handler=run_edge_job_command)


JOB_FLAGS = {"work": "job.work", "data": "job.data", "teacher": "job.teacher", "export": "job.export",
             **CLIENT_FLAGS}


def run_edge_job_command(args: argparse.Namespace) -> int:
    from lnpt.edge.job import run_edge_job

    config = config_from_args(args, JOB_FLAGS)
    with json_lines(args.log_jsonl) as train_log:
        result = run_edge_job(config, progress=sys.stderr.isatty(), train_log=train_log,
                              log=lambda line: print(f"lnpt edge run: {line}", file=sys.stderr, flush=True))
    emit(args, result.to_dict(), "edge job: " + ", ".join(f"{k} {v}" for k, v in result.stages.items())
         + f"; files in {result.work}")
    return 0
