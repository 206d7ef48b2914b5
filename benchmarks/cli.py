"""`lnpt bench ...`, `lnpt demo` and `lnpt analyze ...`: benchmarks and evaluation runs.

This package is the one place allowed to import both lnpt.cloud and lnpt.edge. Each benchmark is
a module with `register(actions)` adding its `lnpt bench NAME` parser.
"""
from __future__ import annotations

import argparse
import importlib

BENCH_MODULES = ("lnpt.benchmarks.serve", "lnpt.benchmarks.prune", "lnpt.benchmarks.train",
                 "lnpt.benchmarks.export", "lnpt.benchmarks.reliability",
                 "lnpt.benchmarks.grid")
COMMAND_MODULES = ("lnpt.benchmarks.demo", "lnpt.benchmarks.analyze")


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks that report side-by-side ratios (not tests)")
    actions = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name in BENCH_MODULES:
        importlib.import_module(name).register(actions)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)

