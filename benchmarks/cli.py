"""Subcommands of `lnpt` provided by lnpt.benchmarks (none yet)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the `lnpt` parser."""
