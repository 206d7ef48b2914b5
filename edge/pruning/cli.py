"""`lnpt prune`: parse -> config -> `lnpt.edge.prune` -> print. Heavy imports stay in the handler."""
from __future__ import annotations

import argparse
import sys

from lnpt.edge.cli import CLIENT_FLAGS, add_client_options
from lnpt.shared.cli import add_config_options, add_format_option, config_from_args, emit


class ListScores(argparse.Action):
    """`--list-scores`: print the registered scores with their facts and exit."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from lnpt.edge.pruning.scorers import SCORERS

        for name, cls in SCORERS.items():
            needs = {"learning-gap": "teacher targets", "cross-entropy": "labels", None: "no data"}[cls.objective]
            print(f"{name:<10} {cls.summary} (needs {needs}{', iterative' if cls.iterative else ''})")
        parser.exit()


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "prune", help="prune a student before training (LNPT score and baselines)",
        description="Build a student at initialisation, score its weights on unlabeled samples with the "
                    "teacher's targets, and save it with fixed pruning masks (and optional channel pruning). "
                    "Writes the student, a JSON report (.prune.json) and a PNG chart of density per layer "
                    "(.prune.png) beside it.",
        epilog="examples:\n  lnpt prune --model resnet20 --sparsity 0.95 --teacher teacher.pt --out student.pt\n"
               "  lnpt prune --model resnet20 --score synflow --sparsity 0.98 --teacher 10.0.0.5:50051 "
               "--out s.pt\n  lnpt prune --score lnpt --sparsity 0.9 --structured 0.5 --data photos/ "
               "--teacher teacher.pt --out s.pt --format json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="student model spec: a zoo name, torchvision:NAME[:WEIGHTS] or "
                                        "package.module:factory (model.spec; default: the teacher's architecture)")
    parser.add_argument("--num-classes", type=int, help="student classes (model.num_classes; default: the teacher's)")
    parser.add_argument("--input-size", metavar="N|HxW",
                        help="student input size, e.g. 96 or 96x128 (model.input_size; default: the teacher's; "
                             "the teacher resizes to its own)")
    parser.add_argument("--channels", type=int, choices=(1, 3), help="student input channels (model.channels)")
    parser.add_argument("--weights", metavar="FILE", help="state dict or checkpoint to start from (model.weights)")
    parser.add_argument("--feature-node", metavar="NAME",
                        help="module whose output are the features (model.feature_node; default: the input of "
                             "the final Linear)")
    parser.add_argument("--score", help="pruning score (prune.score, default lnpt); --list-scores shows them all")
    parser.add_argument("--list-scores", action=ListScores, help="list the registered pruning scores and exit")
    parser.add_argument("--sparsity", type=float,
                        help="fraction of Conv2d/Linear weights to remove, e.g. 0.95 (0 = no masks)")
    parser.add_argument("--structured", type=float, metavar="RATIO",
                        help="first remove this fraction of channels (Torch-Pruning, Taylor importance of the "
                             "same objective); keeps the feature width the teacher expects")
    parser.add_argument("--target-latency-ms", type=float, metavar="MS",
                        help="instead of a fixed RATIO, remove channels step by step until the exported ONNX model's "
                             "median latency in ONNX Runtime on this machine is at most MS (prune.target_latency_ms)")
    parser.add_argument("--target-macs", type=int, metavar="N",
                        help="... until one image costs at most N multiply-accumulates (prune.target_macs)")
    parser.add_argument("--target-params", type=int, metavar="N",
                        help="... until the model has at most N parameters (prune.target_params)")
    parser.add_argument("--threads", type=int,
                        help="ONNX Runtime threads the latency target is measured with (prune.latency_threads, default 1)")
    parser.add_argument("--batch", type=int,
                        help="batch size the latency target is measured at (prune.latency_batch, default 1)")
    parser.add_argument("--data", metavar="DIR",
                        help="folder of unlabeled images (any depth; labels never read); default: the "
                             "Fashion-MNIST training images")
    parser.add_argument("--teacher", metavar="ADDRESS|FILE",
                        help="an existing teacher file (offline), or the guidance server's host:port "
                             "(default: client.addresses of the config, when the score needs the teacher)")
    parser.add_argument("--out", required=True, metavar="FILE", help="student file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
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
    add_client_options(parser)
    add_config_options(parser)
    add_format_option(parser)
    parser.set_defaults(handler=run_prune)


PRUNE_FLAGS = {**{flag: f"prune.{flag}" for flag in (
    "score", "sparsity", "structured", "scope", "samples", "batch_size", "min_layer_density", "objective",
    "synflow_rounds", "seed", "keep_classifier_dense", "synflow_float64", "target_latency_ms", "target_macs",
    "target_params")}, "threads": "prune.latency_threads", "batch": "prune.latency_batch", **CLIENT_FLAGS,
    **{flag: f"model.{flag}" for flag in ("num_classes", "input_size", "channels", "weights", "feature_node")}}


def run_prune(args: argparse.Namespace) -> int:
    from lnpt.edge.pruning.prune import prune
    from lnpt.edge.pruning.report import format_table

    config = config_from_args(args, PRUNE_FLAGS)
    result = prune(args.model, args.teacher, args.data, config=config, out=args.out, overwrite=args.overwrite,
                   progress=sys.stderr.isatty())
    written = ", ".join(str(p) for p in (result.path, result.report_path, result.chart_path) if p)
    emit(args, result.report, "\n".join([format_table(result.report), *(f"note: {n}" for n in result.notes),
                                         f"wrote {written}"]))
    return 0
