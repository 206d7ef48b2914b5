"""Subcommands of `lnpt` that run on the edge device: prune, train, eval, export.

Each command group lives beside the code it drives and adds itself through `register`.
"""
from __future__ import annotations

import argparse

from lnpt.shared.cli import optional_module

COMMAND_MODULES = ("lnpt.edge.pruning.cli", "lnpt.edge.training.cli", "lnpt.edge.export.cli")


def register(sub: argparse._SubParsersAction) -> None:
    for name in COMMAND_MODULES:
        if (module := optional_module(name)) is not None:
            module.register(sub)
