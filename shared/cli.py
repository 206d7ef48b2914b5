"""The `lnpt` command: one entry point; each side adds its own subcommands.

Command groups are found by module name so that this module imports neither side: a module in
COMMAND_MODULES defines `register(subparsers)` and keeps heavy imports inside its handlers, so
`lnpt --help` stays fast and an edge install without the cloud extras still works.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from typing import Any, Callable, Iterator, Mapping, Sequence

from lnpt.shared import __version__
from lnpt.shared.errors import LnptError

COMMAND_MODULES = ("lnpt.cloud.cli", "lnpt.edge.cli", "lnpt.lab.cli")


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` and repeatable `--set section.key=value`, shared by every command."""
    parser.add_argument("--config", metavar="FILE", help="TOML config file; every key is listed in docs/CONFIG.md")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value, e.g. --set prune.sparsity=0.95 (repeatable)")


def add_format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="text for people (default) or one JSON object on stdout for machines")


def config_from_args(args: argparse.Namespace, flags: Mapping[str, str] | None = None):
    """The validated Config of a command: the file (`--config`), then `--set` overrides, then the
    command's flags in `flags` (attribute -> `section.key`) that the user gave.

    Flags mapping to config keys default to None, so only what the user typed overrides the file;
    a bad flag value is reported under the flag's own name (`--epochs 0: ...`).
    """
    from lnpt.shared.config import load_config, updated

    config = load_config(getattr(args, "config", None), getattr(args, "overrides", []))
    for attr, key in (flags or {}).items():
        value = getattr(args, attr, None)
        if value is not None:
            section, name = key.split(".")
            config = updated(config, section, source=f"--{attr.replace('_', '-')}", **{name: value})
    return config


@contextlib.contextmanager
def json_lines(path: str | None) -> Iterator[Callable[[dict], None] | None]:
    """A callable appending one JSON line per event to `path` (flushed), or None without a path."""
    if not path:
        yield None
        return
    with open(path, "a") as f:
        def write(event: dict) -> None:
            f.write(json.dumps(event, default=str) + "\n")
            f.flush()

        yield write


def emit(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    """Print `text` for people, or `result` as one JSON object with --format json."""
    if getattr(args, "format", "text") == "json":
        print(json.dumps(result, default=str))
    else:
        print(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lnpt",
        description="Label-free network pruning and training: a cloud teacher guides edge devices "
                    "that prune, train and export small networks on unlabeled data.",
    )
    parser.add_argument("--version", action="version", version=f"lnpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    register_data(sub)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # e.g. an edge install without the cloud extras
            sub.add_parser(name.split(".")[1], help=f"(unavailable: {exc})")
            continue
        module.register(sub)
    return parser


def register_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="prepare Fashion-MNIST or ELPV, or write Fashion-MNIST as an image folder")
    actions = data.add_subparsers(dest="action", metavar="ACTION", required=True)
    prepare = actions.add_parser(
        "prepare", help="make a data set available from local files",
        description="fashion-mnist (default): the four IDX files from the Debian package or a download. "
                    "elpv: the ELPV solar-cell images (PyPI elpv-dataset, installed with `pip install --no-deps` "
                    "when missing; licence CC BY-NC-SA 4.0, never redistributed) split, seeded and stratified, "
                    "into a labeled cloud set, an unlabeled edge set and a held-out test set.")
    prepare.add_argument("dataset", nargs="?", choices=("fashion-mnist", "elpv"), default="fashion-mnist")
    prepare.add_argument("--root", help="cache folder (default: $LNPT_DATA or ~/.cache/lnpt)")
    prepare.add_argument("--out", help="elpv: folder for the split (default: <root>/elpv)")
    prepare.add_argument("--seed", type=int, default=0, help="elpv: seed of the split")
    prepare.add_argument("--fractions", default="0.4,0.4,0.2", metavar="CLOUD,EDGE,TEST",
                         help="elpv: shares of the labeled cloud, unlabeled edge and test sets")
    prepare.add_argument("--limit", type=int, default=0, help="elpv: a stratified subset of N images (0 = all)")
    add_format_option(prepare)
    prepare.set_defaults(handler=run_data_prepare)
    folder = actions.add_parser("write-folder", help="write Fashion-MNIST images as PNG files")
    folder.add_argument("--split", choices=("train", "test"), default="train")
    folder.add_argument("--out", required=True, help="folder to write")
    folder.add_argument("--limit", type=int, default=0, help="first N images only (0 = all)")
    folder.add_argument("--class-folders", action="store_true",
                        help="one sub-folder per class (training still never reads them)")
    folder.add_argument("--root", help="Fashion-MNIST cache folder")
    folder.set_defaults(handler=run_data_write_folder)


def run_data_prepare(args: argparse.Namespace) -> int:
    from lnpt.shared.data import data_root, prepare_fashion_mnist

    if args.dataset == "fashion-mnist":
        root = prepare_fashion_mnist(args.root)
        emit(args, {"dataset": "fashion-mnist", "root": str(root)}, f"Fashion-MNIST ready in {root}")
        return 0
    from lnpt.shared.elpv import prepare_elpv

    try:
        fractions = tuple(float(f) for f in args.fractions.split(","))
    except ValueError:
        fractions = ()
    out = args.out or str(data_root(args.root) / "elpv")
    record = prepare_elpv(out, seed=args.seed, fractions=fractions, limit=args.limit)
    counts = ", ".join(f"{name} {sum(per_class.values())}" for name, per_class in record["counts"].items())
    emit(args, {"dataset": "elpv", "out": out, **record},
         f"ELPV split in {out}: {counts} images (seed {record['seed']}; licence {record['licence']})")
    return 0


def run_data_write_folder(args: argparse.Namespace) -> int:
    from lnpt.shared.data import FASHION_MNIST_CLASSES, load_fashion_mnist, write_image_folder

    images, labels = load_fashion_mnist(args.split == "train", args.root)
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    labels_arg = labels.tolist() if args.class_folders else None
    write_image_folder(images, args.out, labels_arg, FASHION_MNIST_CLASSES, progress=True)
    print(f"wrote {len(images)} images to {args.out}")
    return 0


def remember_parsers(parser: argparse.ArgumentParser) -> None:
    """Give every (sub)command's namespace its own parser, so its errors show its own usage."""
    parser.set_defaults(command_parser=parser)
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        for child in action.choices.values():
            remember_parsers(child)


def main(argv: Sequence[str] | None = None) -> int:
    # gRPC core prints INFO lines to stderr (an idle connection's GOAWAY, seen by forked data workers);
    # read once when grpc is first imported, so set before any command module loads. GRPC_VERBOSITY wins.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    parser = build_parser()
    remember_parsers(parser)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would blame the top-level parser and print its usage
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.handler(args) or 0)
    except LnptError as exc:
        print(f"lnpt {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"lnpt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
