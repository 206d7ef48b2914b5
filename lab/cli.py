"""`lnpt demo`, `lnpt analyze ...` and `lnpt bench ...`: the commands that run cloud and edge together.

`lnpt.lab` is the one package allowed to import both lnpt.cloud and lnpt.edge:
  lab/demo.py     the whole job end to end on one machine (`lnpt demo`)
  lab/paper/      the paper's experiments (`lnpt analyze learning-gap|grid|objective`)
  lab/bench/      ops benchmarks reporting side-by-side ratios (`lnpt bench serve|prune|train|export|reliability`)
  lab/testing/    the fault harness (proxy, hostile requests, bad certificates) used by tests and `bench reliability`
Each module adds its own parser through `register(actions)`.
"""
from __future__ import annotations

import argparse
import importlib

BENCH_MODULES = ("lnpt.lab.bench.serve", "lnpt.lab.bench.prune", "lnpt.lab.bench.train",
                 "lnpt.lab.bench.export", "lnpt.lab.bench.reliability", "lnpt.lab.bench.device", "lnpt.lab.bench.data")
ANALYSIS_MODULES = ("lnpt.lab.paper.learning_gap", "lnpt.lab.paper.grid", "lnpt.lab.paper.objective_study")


def register(sub: argparse._SubParsersAction) -> None:
    importlib.import_module("lnpt.lab.demo").register(sub)
    analyze = sub.add_parser("analyze", help="the paper's experiments: learning gap analysis, accuracy grid")
    analyses = analyze.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    for name in ANALYSIS_MODULES:
        importlib.import_module(name).register(analyses)
    bench = sub.add_parser("bench", help="benchmarks that report side-by-side ratios (not tests)")
    benchmarks = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name in BENCH_MODULES:
        importlib.import_module(name).register(benchmarks)
    # `lnpt bench grid` was the grid's name before `lnpt analyze grid`; kept as an alias for one release.
    importlib.import_module("lnpt.lab.paper.grid").register(benchmarks, deprecated_alias=True)
