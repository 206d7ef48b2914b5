"""Subcommands of `lnpt` that run on the edge device: prune, train, eval, export.

Each command group lives beside the code it drives and adds itself through `register`.
"""
from __future__ import annotations

import argparse
import importlib

COMMAND_MODULES = ("lnpt.edge.pruning.cli", "lnpt.edge.training.cli", "lnpt.edge.onnx.cli")


def register(sub: argparse._SubParsersAction) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
